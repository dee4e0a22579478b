"""The training part of ``binary_estimators``: does the STE -> NES handover help over a short run?

Reference: seed 002's discussion item "switch from STE to NES when STE training reaches a local
minimum" and the 2021-05 pre-training protocol (STE steps on (16000, d) batches until the loss
plateaus); shared/specs/binary.md §1.7.

Each method takes ``steps`` per-tensor normalised descent steps ``w <- w - lr_t g_hat`` on fresh
batches of the toy teacher-student task, ``lr_t`` decaying linearly to 0 (so a plateau is not just
a too-large step); the final loss is measured on one held-out batch. Methods: ``ste:clipped`` all
the way, ``nes-P`` all the way, ``ste_nes`` (STE until its minibatch loss has not improved for
``patience`` steps, then STE-guided NES with P evaluations) and ``ste_nes-plain`` (the same with
plain NES after the handover). Pure torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from evoens_binary.analysis import normalize
from evoens_binary.estimators import GradEstimator, SteGradient
from evoens_binary.hybrid import HandoverConfig, SteThenNes
from evoens_binary.layers import sign_mlp
from evoens_binary.nes import NesConfig, NesGradient
from evoens_binary.objective import ModelObjective
from torch import nn

from evoens.bench import cells


@dataclass(frozen=True)
class HandoverBench:
    dims: tuple[int, ...] = (8, 16)
    num_init: int = 3
    steps: int = 120
    batch: int = 1024
    eval_batch: int = 8192
    lr: float = 0.05
    popsize: int = 500
    patience: int = 5
    sigma: float = 0.1


def _methods(cfg: HandoverBench, seed: int) -> dict[str, GradEstimator]:
    nes_cfg = NesConfig(popsize=cfg.popsize, sigma=cfg.sigma, seed=seed, chunk=250)
    return {
        "ste:clipped": SteGradient(ste="clipped"),
        f"nes-{cfg.popsize}": NesGradient(replace(nes_cfg, seed=seed + 1)),  # fresh draws each step: seed+1, +2, ...
        "ste_nes": SteThenNes(HandoverConfig(ste="clipped", nes=nes_cfg, patience=cfg.patience)),
        "ste_nes-plain": SteThenNes(HandoverConfig(ste="clipped", nes=nes_cfg, patience=cfg.patience, guided=False)),
    }


def _train(student: nn.Module, teacher: nn.Module, est: GradEstimator, cfg: HandoverBench, seed: int) -> float:
    dim, device = student[0].in_features, student[0].weight.device
    gen = torch.Generator().manual_seed(seed)
    est.reset()
    for t in range(cfg.steps):
        lr = cfg.lr * (1 - t / cfg.steps)  # linear decay
        x = torch.randn(cfg.batch, dim, generator=gen).to(device)  # (B, d), a fresh batch per step
        with torch.no_grad():
            obj = ModelObjective(student, (x, teacher(x)), strategy="bmm")
        step = normalize(est.estimate(obj))
        with torch.no_grad():
            for name, p in student.named_parameters():
                p.sub_(lr * step[name])
    return _heldout(student, teacher, cfg)


def _heldout(student: nn.Module, teacher: nn.Module, cfg: HandoverBench) -> float:
    gen = torch.Generator().manual_seed(12345)
    x = torch.randn(cfg.eval_batch, student[0].in_features, generator=gen).to(student[0].weight.device)
    with torch.no_grad():
        return float((student(x) - teacher(x)).pow(2).mean())


def run_handover(cfg: HandoverBench, seed: int = 0, device: torch.device = torch.device("cpu")) -> list[dict[str, Any]]:
    """Mean final held-out loss per (dim, method); rows of section ``train``."""
    rows = []
    for dim in cells(cfg.dims, lambda d: f"d={d}, {cfg.num_init} inits, {cfg.steps} steps"):
        finals: dict[str, list[float]] = {}
        switches: dict[str, list[int]] = {}
        for init in range(cfg.num_init):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1000 + 17 * dim + init)
                student0, teacher = sign_mlp([dim, dim, dim, 1]).to(device), sign_mlp([dim, dim, dim, 1]).to(device)
            for name, est in _methods(cfg, seed + init).items():
                student = sign_mlp([dim, dim, dim, 1]).to(device)
                student.load_state_dict(student0.state_dict())
                finals.setdefault(name, []).append(_train(student, teacher, est, cfg, seed + 31 * init))
                if isinstance(est, SteThenNes):
                    switches.setdefault(name, []).append(cfg.steps if est.switched_at is None else est.switched_at)
            finals.setdefault("init", []).append(_heldout(student0, teacher, cfg))
        for name, vals in finals.items():
            row = {"section": "train", "dim": dim, "estimator": f"train:{name}", "steps": cfg.steps,
                   "final_loss": sum(vals) / len(vals)}  # fmt: skip
            if name in switches:
                row["switch_steps"] = switches[name]
            rows.append(row)
    return rows


def handover_notes(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    steps = rows[0]["steps"]
    lines = [
        f"## STE -> NES handover: held-out loss after {steps} normalised steps (mean over inits)",
        "",
        "| d | " + " | ".join(n.removeprefix("train:") for n in names) + " | handover steps (per init) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for dim in dict.fromkeys(r["dim"] for r in rows):
        cells = {r["estimator"]: r for r in rows if r["dim"] == dim}
        sw = cells.get("train:ste_nes", {}).get("switch_steps", [])
        vals = [f"{cells[n]['final_loss']:.4f}" if n in cells else "–" for n in names]
        lines.append(f"| {dim} | " + " | ".join(vals) + f" | {' '.join(map(str, sw))} |")
    return lines
