"""Suite ``hypernet``: vq-ensemble (seed 000, spec hypernet.md) reproduced on MNIST, plus code search
and the speed of a meta-step.

(mnist) the seed's CNN (60,106 parameters): the Adam baseline (lr 1e-3, a fresh Adam at 1e-4 after
a third of the steps), the dropout-0.25 baseline, vq-ensemble (T = 40, K = 4, H = 512, B = 4, inner
SGD lr 1e-2, Adam 1e-4 on the refiner, E = 16 members with probabilities averaged) and the bias-only
ablation; train/test accuracy (ensemble and member mean) and the output variance beside the README's.
(search) on the trained generator: E = 16 uniform codes vs the best 16 of a CEM search over codes
vs Caruana selection from the search's pool; ensemble test accuracy. (speed) one meta-step, evoens
vs the original's per-member deep-copy loop at equal math, B = 4 and 64; the output layer's products
as a share of the sgemm peak; a decode's peak memory with and without checkpointing.

Default mode: the seed's hyper-parameters with fewer steps (a 164.5 M-parameter refiner takes seconds
a step on 2 CPU cores); ``EVOENS_HYPERNET_FULL=1`` runs the seed's lengths (30,000 baseline steps,
6,300 meta-steps; ``--full`` as a script). ``EVOENS_HYPERNET_PARTS`` picks parts (``mnist,search,speed,
memory``). Quick mode: digits, tiny sizes. MNIST is read from ``$EVOENS_DATA_DIR/mnist`` (digits when
absent). As a script: ``python -m evoens_benchmarks.hypernet [--quick] [--full] [--out DIR] [--device cpu|cuda]``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from evoens_ensemble.metrics import EnsembleMetrics
from evoens_hypernet.meta import MetaTerms, plain_evaluate
from evoens_hypernet.models import vq_cnn
from evoens_hypernet.refiner import VQRefiner
from evoens_hypernet.search import cem_codes, member_logits, select_ensemble
from evoens_hypernet.space import WeightSpace
from evoens_hypernet.trainer import HypernetTrainer
from torch import Tensor, nn

from evoens.bench import BenchResult, cells, part
from evoens.datasets import Batcher
from evoens.datasets.base import DataSplits, Split
from evoens_benchmarks import hypernet_speed as speed
from evoens_benchmarks.ensemble import load_data

FULL = os.environ.get("EVOENS_HYPERNET_FULL", "") not in ("", "0")
#: the parts to run, e.g. EVOENS_HYPERNET_PARTS=speed (search needs mnist's trained generator)
PARTS = tuple(p for p in os.environ.get("EVOENS_HYPERNET_PARTS", "mnist,search,speed,memory").split(",") if p)
COLUMNS = ["part", "item", "steps", "train_acc", "test_acc", "test_single", "output_var", "seed", "value", "ratio",
           "verdict"]  # fmt: skip
#: the README's numbers (README@01236cd; spec hypernet.md 1.7)
SEED = {
    "baseline": "train 100.00 / test 98.76",
    "dropout": "train 99.81 / test 99.04",
    "vq_mlp": "train 99.92 (single 99.88) / test 98.82 (single 98.76), var 0.1346",
    "vq_bias": "train 87.95 (single 79.92) / test 87.71 (single 80.45), var 0.4451",
}


@dataclass(frozen=True)
class Sizes:
    base_steps: int = 3000  # seed 30,000
    base_reset: int = 1000  # seed 10,000: a fresh Adam at lr / 10
    vq_steps: int = 100  # seed ~6,300
    bias_long: int = 600  # the ablation again, longer (it is cheap)
    stages: int = 40
    options: int = 4
    hidden: int = 512
    meta_batch: int = 4
    inner_batch: int = 128
    inner_lr: float = 1e-2
    meta_lr: float = 1e-4
    base_lr: float = 1e-3
    ensemble: int = 16
    train_eval: int = 10_000  # train examples the accuracies are measured on (seed: all 60,000)
    search_iterations: int = 8
    search_popsize: int = 32
    search_examples: int = 2000
    speed_batches: tuple[int, ...] = (4, 64)
    speed_repeats: int = 1


FULL_SIZES = Sizes(base_steps=30_000, base_reset=10_000, vq_steps=6300, bias_long=6300, train_eval=60_000)
QUICK = Sizes(base_steps=60, base_reset=20, vq_steps=8, bias_long=16, stages=4, hidden=32, ensemble=4,
              train_eval=500, search_iterations=2, search_popsize=8, search_examples=200, speed_batches=(4,),
              speed_repeats=1)  # fmt: skip


def _log(message: str) -> None:
    print(f"[hypernet] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def module_accuracy(model: nn.Module, split: Split, limit: int | None = None) -> float:
    model.eval()
    x, y = split.x[:limit], split.y[:limit]
    hits = sum(int((model(x[s : s + 2000]).argmax(-1) == y[s : s + 2000]).sum()) for s in range(0, len(y), 2000))
    model.train()
    return hits / len(y)


@torch.no_grad()
def ensemble_accuracy(r: VQRefiner, codes: Tensor, split: Split, limit: int | None = None) -> tuple[float, float]:
    """(ensemble accuracy with probabilities averaged, mean member accuracy) of ``codes``' members."""
    metrics = EnsembleMetrics("mean_prob")  # the ensemble plugin's, as the run summary's
    metrics.update(member_logits(r, codes, split.x[:limit]), split.y[:limit])  # (E, n, C)
    out = metrics.compute()
    return float(out["accuracy"]), float(out["member_accuracy"].mean())


# ---------------------------------------------------------------- (mnist)


def train_baseline(data: DataSplits, s: Sizes, dropout: float) -> tuple[nn.Module, float]:
    """The seed's baseline: Adam lr 1e-3, a new Adam(lr 1e-4) at ``base_reset``, ``base_steps`` steps."""
    torch.manual_seed(0)
    model = vq_cnn(tuple(data.train.x.shape[1:]), data.num_classes, dropout=dropout)
    batches = Batcher(data.train, s.inner_batch, seed=0, drop_last=True)
    opt = torch.optim.Adam(model.parameters(), lr=s.base_lr)
    start = time.perf_counter()
    for step in range(s.base_steps):
        if step == s.base_reset:
            opt = torch.optim.Adam(model.parameters(), lr=s.base_lr / 10)  # moments reset, as the seed
        x, y = batches.next()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, time.perf_counter() - start


def train_generator(data: DataSplits, s: Sizes, refiner: str, steps: int) -> tuple[HypernetTrainer, float]:
    """vq-ensemble's meta-training: ``steps`` meta-steps of B members, each on its own batch."""
    torch.manual_seed(0)
    space = WeightSpace(vq_cnn(tuple(data.train.x.shape[1:]), data.num_classes))
    r = VQRefiner(space, stages=s.stages, options=s.options, hidden=s.hidden, refiner=refiner)
    opt = torch.optim.Adam(r.parameters(), lr=s.meta_lr)
    batches = Batcher(data.train, s.inner_batch, seed=0, drop_last=True)
    trainer = HypernetTrainer(r, opt, batches, MetaTerms("pull", s.inner_lr), meta_batch=s.meta_batch,
                              ensemble=s.ensemble, seed=0)  # fmt: skip
    evaluate, start = plain_evaluate(), time.perf_counter()
    for step in range(steps):
        stats = trainer.step(step, evaluate)
        if step % max(1, steps // 10) == 0:
            _log(f"{refiner} step {step}/{steps}: meta {float(stats['meta_loss']):.4g} "
                 f"inner {float(stats['inner_loss']):.4g} ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return trainer, time.perf_counter() - start


def part_mnist(data: DataSplits, s: Sizes) -> tuple[list[dict[str, Any]], dict[str, VQRefiner]]:
    rows, found = [], {}
    for name, dropout in cells((("baseline", 0.0), ("dropout", 0.25)), lambda run: f"{run[0]}, {s.base_steps} steps"):
        model, seconds = train_baseline(data, s, dropout)
        tr, te = module_accuracy(model, data.train, s.train_eval), module_accuracy(model, data.test)
        found[name] = te
        rows.append({"part": "mnist", "item": name, "steps": s.base_steps, "train_acc": tr, "test_acc": te,
                     "seed": SEED[name], "value": seconds})  # fmt: skip
        _log(f"{name}: test {te:.4f} ({seconds:.0f} s)")
    generators = {}
    runs = (("vq_mlp", "mlp", s.vq_steps), ("vq_bias", "bias", s.vq_steps), ("vq_bias_long", "bias", s.bias_long))
    for name, refiner, steps in cells(runs, lambda run: f"{run[0]}, {run[2]} meta-steps"):
        trainer, seconds = train_generator(data, s, refiner, steps)
        r, codes = trainer.generator, trainer.judge_codes
        tr_e, tr_s = ensemble_accuracy(r, codes, data.train, s.train_eval)
        te_e, te_s = ensemble_accuracy(r, codes, data.test)
        var = float(r.diversity(4, torch.Generator().manual_seed(1)))
        found[name] = {"ensemble": te_e, "single": te_s, "var": var}
        generators[name] = r
        rows.append({"part": "mnist", "item": name, "steps": steps, "train_acc": tr_e, "test_acc": te_e,
                     "test_single": te_s, "output_var": var, "seed": SEED[name.removesuffix("_long")],
                     "value": seconds})  # fmt: skip
        _log(f"{name}: test {te_e:.4f} single {te_s:.4f} var {var:.4g} ({seconds:.0f} s)")
    rows += verdicts(found)
    return rows, generators


def verdicts(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed's three qualitative results, judged on this run's numbers."""
    mlp, bias = f["vq_mlp"], f["vq_bias_long"]
    gain_mlp, gain_bias = mlp["ensemble"] - mlp["single"], bias["ensemble"] - bias["single"]
    return [
        {"part": "mnist", "item": "(a) ensemble gain, mlp refiner (pt)", "value": 100 * gain_mlp,
         "seed": "+0.06 test", "verdict": "reproduced" if 0 <= gain_mlp < 0.01 else "not reproduced"},
        {"part": "mnist", "item": "(b) ensemble gain, bias-only (pt)", "value": 100 * gain_bias,
         "seed": "+7.26 test", "verdict": "reproduced" if gain_bias > max(0.02, 2 * gain_mlp) else "not reproduced"},
        {"part": "mnist", "item": "(c) output variance bias / mlp", "ratio": bias["var"] / max(mlp["var"], 1e-12),
         "seed": "0.4451 / 0.1346 = 3.31", "verdict": "reproduced" if bias["var"] > mlp["var"] else "not reproduced"},
        {"part": "mnist", "item": "dropout vs vq-ensemble (test, pt)", "value": 100 * (f["dropout"] - mlp["ensemble"]),
         "seed": "+0.22 (dropout wins)",
         "verdict": "reproduced" if f["dropout"] > mlp["ensemble"] else "not reproduced"},
    ]  # fmt: skip


# ---------------------------------------------------------------- (search)


def part_search(data: DataSplits, r: VQRefiner, s: Sizes) -> list[dict[str, Any]]:
    judge = data.val if len(data.val.y) else data.train
    val = (judge.x[: s.search_examples], judge.y[: s.search_examples])
    rng = torch.Generator().manual_seed(5)
    uniform = r.sample_codes(s.ensemble, rng)
    found = cem_codes(r, val, iterations=s.search_iterations, popsize=s.search_popsize, rng=rng)
    best = found.codes[found.fitness.topk(s.ensemble).indices]
    picked = select_ensemble(r, found.codes, val, s.ensemble)
    rows = []
    base = None
    for item, codes in (("uniform codes", uniform), ("CEM: best 16 members", best), ("CEM pool + Caruana", picked)):
        acc, single = ensemble_accuracy(r, codes, data.test)
        base = acc if base is None else base
        rows.append({"part": "search", "item": item, "test_acc": acc, "test_single": single,
                     "value": acc - base, "seed": "uniform only (the original)"})  # fmt: skip
    return rows


# ---------------------------------------------------------------- (speed)


def part_speed(s: Sizes, device: torch.device) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = vq_cnn((1, 28, 28))
    r = VQRefiner(WeightSpace(model), stages=s.stages, options=s.options, hidden=s.hidden)
    rows = []
    for row in speed.speed_rows(r, model, list(s.speed_batches), s.inner_batch, device, s.speed_repeats):
        target = 3 if row["B"] <= 4 else 10
        rows.append({"part": "speed", "item": f"meta-step B={row['B']}: original loop / evoens",
                     "value": row["evoens_s"], "ratio": row["ratio"], "seed": f">= {target}x (issue)",
                     "verdict": "met" if row["ratio"] >= target else "not met"})  # fmt: skip
        _log(f"speed B={row['B']}: evoens {row['evoens_s']:.2f} s, original {row['original_s']:.2f} s")
    for row in speed.out_layer_efficiency(r, list(s.speed_batches), device):
        for key, label in (("forward", "stage forward block"), ("weight_grad", "deferred weight gradient")):
            share = row[f"{key}_share"]
            rows.append({"part": "speed", "item": f"out layer {label} B={row['B']}: GFLOP/s, share of sgemm",
                         "value": row[f"{key}_gflops"], "ratio": share, "seed": ">= 0.60 (issue)",
                         "verdict": "met" if share >= 0.6 else "not met"})  # fmt: skip
    return rows


def part_memory(s: Sizes) -> list[dict[str, Any]]:
    rows = []
    for B in cells(s.speed_batches, lambda B: f"decode memory B={B}"):
        plain = speed.decode_memory(B, False, s.stages, s.hidden)
        ckpt = speed.decode_memory(B, True, s.stages, s.hidden)
        rows.append({"part": "memory", "item": f"decode+backward memory B={B}: MiB checkpointed (plain)",
                     "value": ckpt["extra_mib"], "ratio": ckpt["extra_mib"] / max(plain["extra_mib"], 1e-9),
                     "seed": f"plain {plain['extra_mib']:.0f} MiB"})  # fmt: skip
    return rows


def suite(quick: bool, device: torch.device, env: dict[str, Any], *, sizes: Sizes | None = None) -> BenchResult:
    """The ``hypernet`` suite; ``sizes`` is an internal knob for tests."""
    start = time.perf_counter()
    s = sizes or (QUICK if quick else FULL_SIZES if FULL else Sizes())
    unknown = set(PARTS) - {"mnist", "search", "speed", "memory"}
    if unknown or ("search" in PARTS and "mnist" not in PARTS):
        raise ValueError(f"EVOENS_HYPERNET_PARTS={','.join(PARTS)}: parts are mnist, search (needs mnist), speed, "
                         "memory")  # fmt: skip
    data, source = load_data(quick)
    if not quick and not FULL:
        source += "; default mode: the seed's hyper-parameters, fewer steps (EVOENS_HYPERNET_FULL=1: the seed's)"
    timings: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    if "mnist" in PARTS:
        t = time.perf_counter()
        with part("mnist"):
            found, generators = part_mnist(data, s)
        rows, timings["mnist"] = rows + found, time.perf_counter() - t
        if "search" in PARTS:
            t = time.perf_counter()
            with part("search"):
                found = part_search(data, generators["vq_mlp"], s)
            rows, timings["search"] = rows + found, time.perf_counter() - t
    if "speed" in PARTS:
        t = time.perf_counter()
        with part("speed"):
            found = part_speed(s, device)
        rows, timings["speed"] = rows + found, time.perf_counter() - t
    if "memory" in PARTS:
        t = time.perf_counter()
        with part("memory"):
            found = part_memory(s)
        rows, timings["memory"] = rows + found, time.perf_counter() - t
    notes = [
        f"- data: {source}; train {len(data.train)}, val {len(data.val)}, test {len(data.test)}; "
        f"accuracies on {min(s.train_eval, len(data.train))} train examples and the whole test split.",
        f"- sizes: {s}; parts: {', '.join(PARTS)}.",
        "- wall seconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f"; suite {time.perf_counter() - start:.0f} s.",
    ]
    return BenchResult(title="hypernet: vq-ensemble on MNIST, code search, meta-step speed", columns=COLUMNS,
                       rows=rows, notes=notes)  # fmt: skip


if __name__ == "__main__":
    from evoens_benchmarks import main

    if "--full" in sys.argv:  # the seed's lengths; read when evoens bench imports the suite module
        sys.argv.remove("--full")
        os.environ["EVOENS_HYPERNET_FULL"] = "1"
    sys.exit(main("hypernet", sys.argv[1:]))
