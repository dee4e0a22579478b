"""Suite ``binary_estimators``: STE / NES / CDG / guided gradient estimates on binarized toy MLPs.

Reference: seed 002 (the 2021-04-30 "NES applied to a naive MLP" quick check) and its protocol as
reconstructed in shared/specs/binary.md §1.7; Kim et al., "BinaryDuo", ICLR 2020 (CDG yardstick).

For each dim d: a student and an independently initialised teacher, both ``d -> d -> d -> 1``
bias-free MLPs with ±1 (sign) hidden units and a linear output; x ~ N(0, I_d); loss = MSE to the
teacher. On every (init, batch) point all estimators see the same batch and weights; each
gradient is normalised per tensor; reported: the per-layer cosine to CDG, the in-sample loss
decrease ``L(w) - L(w - lr g_hat)`` over an lr grid (all estimators x lrs as one population), the
best lr per (d, estimator). A second part trains for a few steps with STE, NES and the STE -> NES
handover (:mod:`evoens_benchmarks.binary_handover`); the markdown is built by
:mod:`evoens_benchmarks.binary_estimators_report`. Runs as a script:
``python -m evoens_benchmarks.binary_estimators [--quick] [--out DIR] [--device cpu|cuda]``.

Estimators are labelled by their ``grad_estimator`` provider name, ``-P`` appended for P loss
evaluations (``nes-500``, ``nes_cv-500``); results written before the providers' snake_case rename
spell them ``nes-cv-500``, ``nes-guided-500``, ``ste-nes``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from evoens_binary.analysis import best_lr, cosine_per_tensor, loss_decrease
from evoens_binary.cdg import CdgConfig, cdg
from evoens_binary.estimators import GradEstimator, SteGradient
from evoens_binary.hybrid import ControlVariateNes, GuidedNesGradient
from evoens_binary.layers import sign_mlp
from evoens_binary.nes import NesConfig, nes_nested
from evoens_binary.objective import ModelObjective
from torch import nn

from evoens.bench import BenchResult, cells, part, torch_threads
from evoens_benchmarks.binary_estimators_report import notes_for, plot_curves
from evoens_benchmarks.binary_handover import HandoverBench, run_handover

STE_SET: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("ste:clipped", "clipped", {}),  # "vanilla" (BinaryNet hardtanh STE)
    ("ste:steep", "steep", {"k": 2.0}),
    ("ste:swishsign", "swishsign", {"beta": 5.0}),
    ("ste:approxsign", "approxsign", {}),  # "polynomial" (Bi-Real)
    ("ste:identity", "identity", {}),
)
LRS: tuple[float, ...] = (1e-4, 1e-3, 3e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of one run. NES popsizes whose popsize * D exceeds ``nes_max_cost`` are skipped."""

    dims: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    num_init: int = 3
    num_batch: int = 1
    batch: int = 8192
    eps: float = 0.1
    sigma: float = 0.1
    nes_popsizes: tuple[int, ...] = (500, 5000, 50000)
    nes_max_cost: float = 1.1e8
    guided_popsize: int = 500
    cv_popsizes: tuple[int, ...] = (500, 5000)
    lrs: tuple[float, ...] = LRS
    seed: int = 0
    threads: int | None = 1  # torch threads during the run (None: leave as is); see the notes
    handover: HandoverBench = field(default_factory=HandoverBench)


QUICK = ToyConfig(
    dims=(2, 8), num_init=2, batch=1024, nes_popsizes=(500, 5000), lrs=(1e-2, 0.1, 0.5),
    handover=HandoverBench(dims=(8,), num_init=1, steps=20, popsize=200),
)  # fmt: skip


def toy_pair(dim: int, seed: int) -> tuple[nn.Module, nn.Module]:
    """(student, teacher): independently initialised sign MLPs ``d -> d -> d -> 1`` (PyTorch init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return sign_mlp([dim, dim, dim, 1]), sign_mlp([dim, dim, dim, 1])


def _estimators(cfg: ToyConfig, params: int) -> dict[str, GradEstimator]:
    out: dict[str, GradEstimator] = {name: SteGradient(ste=s, params=p) for name, s, p in STE_SET}
    nes_cfg = NesConfig(popsize=cfg.guided_popsize, sigma=cfg.sigma, seed=cfg.seed + 1, chunk=250)
    out[f"nes_guided-{cfg.guided_popsize}"] = GuidedNesGradient(nes=nes_cfg, guides=("clipped",))
    out[f"nes_guided4-{cfg.guided_popsize}"] = GuidedNesGradient(
        nes=nes_cfg, guides=("clipped", "steep", "swishsign", "approxsign")
    )
    for p in cfg.cv_popsizes:
        if p * params <= cfg.nes_max_cost:
            cv = NesConfig(popsize=p, sigma=cfg.sigma, seed=cfg.seed + 3, chunk=250)
            out[f"nes_cv-{p}"] = ControlVariateNes(nes=cv, ste="clipped")
    return out


def _point(cfg: ToyConfig, dim: int, init: int, batch: int, device: torch.device) -> dict[str, Any]:
    """Every estimator on one (init, batch): cosines to CDG and the loss-decrease curves."""
    student, teacher = (m.to(device) for m in toy_pair(dim, cfg.seed * 1000 + 100 * dim + init))
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1000 * dim + 10 * init + batch)
    x = torch.randn(cfg.batch, dim, generator=gen).to(device)  # (B, d), the same draws on any device
    with torch.no_grad():
        y = teacher(x)  # (B, 1)
    obj = ModelObjective(student, (x, y), strategy="bmm")  # fastest here; skips auto's timing runs
    D = obj.dim
    t0 = time.perf_counter()
    grads = {"cdg": obj.unflatten(cdg(obj, CdgConfig(eps=cfg.eps)))}
    cost = {"cdg": 2 * D}
    sizes = tuple(p for p in cfg.nes_popsizes if p * D <= cfg.nes_max_cost)
    if sizes:
        nes_cfg = NesConfig(popsize=2, sigma=cfg.sigma, seed=cfg.seed + 2, chunk=250)
        for p, g in zip(sizes, nes_nested(obj, nes_cfg, sizes)):
            grads[f"nes-{p}"], cost[f"nes-{p}"] = obj.unflatten(g), p
    for name, est in _estimators(cfg, D).items():
        grads[name] = est.estimate(obj)
        cost[name] = est.config.nes.popsize if isinstance(est, (GuidedNesGradient, ControlVariateNes)) else 0
    names = list(grads)
    dec = loss_decrease(obj, [grads[n] for n in names], cfg.lrs)  # (E, L)
    raw = loss_decrease(obj, [grads[n] for n in names], [0.1], mode="none")[:, 0]  # (E,) unnormalised steps
    cos = {n: cosine_per_tensor(grads[n], grads["cdg"]) for n in names}
    loss0 = float(obj.loss(obj.x0))
    return {"names": names, "dec": dec, "raw": raw, "cos": cos, "loss0": loss0, "cost": cost, "D": D,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def _aggregate(points: list[dict[str, Any]], cfg: ToyConfig, dim: int) -> list[dict[str, Any]]:
    names = points[0]["names"]
    dec = torch.stack([p["dec"] for p in points]).mean(0)  # (E, L)
    raw = torch.stack([p["raw"] for p in points]).mean(0)  # (E,)
    loss0 = sum(p["loss0"] for p in points) / len(points)
    i01 = min(range(len(cfg.lrs)), key=lambda i: abs(cfg.lrs[i] - 0.1))
    rows = []
    for e, name in enumerate(names):
        layers = list(points[0]["cos"][name])
        cos = [sum(p["cos"][name][layer] for p in points) / len(points) for layer in layers]
        lr, top = best_lr(cfg.lrs, dec[e])
        rows.append({
            "section": "estimate", "dim": dim, "estimator": name, "params": points[0]["D"],
            "evals": points[0]["cost"][name], "loss0": loss0, "dec@0.1": float(dec[e, i01]),
            **{f"cos_W{k + 1}": c for k, c in enumerate(cos)},
            "best_lr": lr, "best_dec": top, "raw@0.1": float(raw[e]),
            "curve": [float(v) for v in dec[e]],
        })  # fmt: skip
    return rows


def run_estimates(cfg: ToyConfig, device: torch.device = torch.device("cpu")) -> list[dict[str, Any]]:
    grid = [(dim, i, b) for dim in cfg.dims for i in range(cfg.num_init) for b in range(cfg.num_batch)]
    points: dict[int, list[dict[str, Any]]] = {}
    for dim, i, b in cells(grid, lambda p: f"d={p[0]} init {p[1]}" + (f" batch {p[2]}" if cfg.num_batch > 1 else "")):
        points.setdefault(dim, []).append(_point(cfg, dim, i, b, device))
    return [row for dim in cfg.dims for row in _aggregate(points[dim], cfg, dim)]


def suite(quick: bool, device: torch.device, env: dict[str, Any], config: ToyConfig | None = None) -> BenchResult:
    """Run the suite (``config`` overrides the quick/full sizes, for tests)."""
    cfg = config or (QUICK if quick else ToyConfig())
    with torch_threads(cfg.threads or None):  # measured ~9x faster per member under load 8
        t0 = time.perf_counter()
        with part("estimates"):
            rows = run_estimates(cfg, device)
        t_est = time.perf_counter() - t0
        with part("handover training"):
            train_rows = run_handover(cfg.handover, cfg.seed, device)
    notes = notes_for(cfg, rows, train_rows, t_est, time.perf_counter() - t0 - t_est)
    columns = ["dim", "estimator", "params", "evals", "loss0", "dec@0.1", "cos_W1", "cos_W2", "cos_W3",
               "best_lr", "best_dec", "raw@0.1"]  # fmt: skip
    return BenchResult("binary_estimators: gradient estimators on binarized toy MLPs", columns,
                       rows + train_rows, notes, plot_curves(rows, cfg.lrs))  # fmt: skip


if __name__ == "__main__":
    from evoens_benchmarks import main

    sys.exit(main("binary_estimators", sys.argv[1:]))
