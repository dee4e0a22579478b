"""NE rows of the ``morph`` benchmark: base network vs NE best vs co-evolved ensembles on real MNIST.

M. Painter, "Deep Neuroevolution with Shared Parameters: Ensembling a Better Solution" (cs231n
report, Stanford 2018), Table 1 (CIFAR-10 test accuracy: base 0.70, NE best 0.74, co-evolution best
0.72, co-evolution ensemble 0.75).

:func:`ne_rows` trains one base network (``N_i`` steps), then runs Algorithm 1 from it three ways:
``select_best`` with shared weights ("NE"), ``select_diverse`` with shared weights ("co-evolution",
whose K selected models form the ensembles) and ``select_best`` with copied weights. A second copy
of the base keeps training alone for the same total number of optimiser steps, so the NE rows can be
read against equal training as well as against the report's base.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from evoens_morph.ensemble import HierarchicalEnsemble, mean_probability, train_head
from evoens_morph.flops import count_flops
from evoens_morph.genome import describe
from evoens_morph.ne import MutationConfig, NEConfig, NEResult, joint_train, neuroevolve, num_params, train_base
from evoens_morph.select import select_best, select_diverse, species, species_logits
from torch import Tensor, nn

from evoens.bench import cells, torch_threads
from evoens.datasets import load_dataset

REFERENCE = {"base": 0.70, "NE best": 0.74, "co-evolution best": 0.72, "co-evolution ensemble": 0.75}


@dataclass(frozen=True)
class Sizes:
    ne: NEConfig
    n_val: int  # validation examples used for selection
    n_test: int  # test examples scored (10000 = the whole MNIST test set)
    head_steps: int
    copy_run: bool  # also run NE with weight inheritance by copy


def sizes(quick: bool, tiny: bool = False) -> Sizes:
    """Full: ~3-5 min on 2 shared CPU cores; quick: < 30 s; tiny: a few seconds (tests)."""
    if tiny:
        ne = NEConfig(initial_steps=20, steps_per_iteration=10, select_k=2, population=3, iterations=1, widths=(4, 8))
        return Sizes(ne, n_val=200, n_test=200, head_steps=10, copy_run=False)
    if quick:
        ne = NEConfig(initial_steps=150, steps_per_iteration=60, select_k=2, population=4, iterations=2)
        return Sizes(ne, n_val=500, n_test=2000, head_steps=100, copy_run=False)
    ne = NEConfig(initial_steps=2000, steps_per_iteration=800, select_k=3, population=6, iterations=4)
    return Sizes(ne, n_val=2000, n_test=10000, head_steps=1000, copy_run=True)


def _mnist(device: torch.device, data_dir: str | Path | None) -> tuple[tuple[Tensor, Tensor], ...]:
    data = load_dataset("mnist", data_dir=data_dir, seed=0, val_fraction=0.1, download=False)

    def prep(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return F.avg_pool2d(x, 2).to(device), y.to(device)  # (N, 1, 14, 14): a quarter of the compute

    return prep(data.train.x, data.train.y), prep(data.val.x, data.val.y), prep(data.test.x, data.test.y)


def _accuracy(probs_or_logits: Tensor, y: Tensor) -> float:
    return float((probs_or_logits.argmax(-1) == y).float().mean())


def _unique_params(models: Sequence[nn.Module]) -> int:
    """Parameters of a set of models, each shared tensor counted once."""
    seen: dict[int, int] = {}
    for m in models:
        seen.update({id(p): p.numel() for p in m.parameters()})
    return sum(seen.values())


def _row(model: str, acc: float, val: float, params: int, flops: int, wall: float, steps: int, arch: str) -> dict:
    return {
        "part": "ne", "model": model, "test_accuracy": round(acc, 4), "val_accuracy": round(val, 4),
        "params": params, "flops": flops, "wall_s": round(wall, 1), "steps": steps, "architecture": arch,
    }  # fmt: skip


def _member_rows(label: str, result: NEResult, wall: float, test: tuple[Tensor, Tensor], shape: tuple) -> list[dict]:
    best = result.selected[0]
    logits = species_logits([best.model], test[0])[0]  # (N, C)
    arch = describe(result.bank, best.genome)
    flops = count_flops(best.model, shape)
    return [_row(label, _accuracy(logits, test[1]), best.val_accuracy, num_params(best.model), flops, wall,
                 result.steps, arch)]  # fmt: skip


def _ensemble_rows(
    label: str, result: NEResult, wall: float, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
    shape: tuple, head_steps: int, seed: int, hierarchical: bool,
) -> list[dict]:  # fmt: skip
    members = [ind.model for ind in result.selected]
    logits = species_logits(members, test[0])  # (K, N, C), one batched forward per species
    flops = sum(count_flops(m, shape) for m in members)
    params = _unique_params(members)
    k = len(members)
    arch = f"K={k}, {len(species(members))} species"
    rows = [_row(f"{label} ensemble, mean prob (K={k})", _accuracy(mean_probability(logits), test[1]), float("nan"),
                 params, flops, wall, result.steps, arch)]  # fmt: skip
    if hierarchical:
        start = time.perf_counter()
        ens = HierarchicalEnsemble(members, num_classes=logits.shape[-1]).to(test[0].device)
        n = min(len(train[1]), 20000)  # the head sees frozen members' logits of this many training images
        train_head(ens, train[0][:n], train[1][:n], steps=head_steps, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            acc = _accuracy(ens.head(ens.features(test[0])), test[1])
        head_flops = sum(2 * m.in_features * m.out_features for m in ens.head if isinstance(m, nn.Linear))
        head_params = sum(p.numel() for p in ens.head.parameters())
        name = f"{label} ensemble, hierarchical head (K={k})"
        wall += time.perf_counter() - start
        rows.append(_row(name, acc, float("nan"), params + head_params, flops + head_flops, wall,
                         result.steps + head_steps, arch))  # fmt: skip
    return rows


def ne_rows(
    quick: bool, device: torch.device, *, data_dir: str | Path | None = None, tiny: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """The NE part of the ``morph`` suite: table rows (``part="ne"``) and notes.

    ``data_dir`` holds ``mnist/`` (default: ``$EVOENS_DATA_DIR``); ``tiny`` shrinks everything for tests."""
    sz = sizes(quick, tiny)
    with torch_threads(1 if device.type == "cpu" else None):  # small convs: ~10x faster on one thread
        return _run(sz, device, data_dir)


def _run(sz: Sizes, device: torch.device, data_dir: str | Path | None) -> tuple[list[dict[str, Any]], list[str]]:
    train, val, test = _mnist(device, data_dir)
    val = (val[0][: sz.n_val], val[1][: sz.n_val])
    test = (test[0][: sz.n_test], test[1][: sz.n_test])
    shape, cfg = tuple(train[0].shape[1:]), sz.ne
    rows: list[dict[str, Any]] = []

    start = time.perf_counter()
    bank, base = train_base(train, cfg)
    base_wall = time.perf_counter() - start
    total = cfg.initial_steps + cfg.iterations * cfg.steps_per_iteration
    base_logits = species_logits([base.model], test[0])[0]
    base_val = _accuracy(species_logits([base.model], val[0])[0], val[1])
    base_params, base_flops = num_params(base.model), count_flops(base.model, shape)
    rows.append(_row(f"base ({cfg.initial_steps} steps)", _accuracy(base_logits, test[1]), base_val, base_params,
                     base_flops, base_wall, cfg.initial_steps, describe(bank, base.genome)))  # fmt: skip

    start = time.perf_counter()
    _, longer = copy.deepcopy((bank, base))
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    idx_gen = torch.Generator().manual_seed(cfg.seed + 3)

    def batch() -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(train[1]), (cfg.batch_size,), generator=idx_gen).to(device)
        return train[0][idx], train[1][idx]

    joint_train([longer], total - cfg.initial_steps, batch, gen)
    acc = _accuracy(species_logits([longer.model], test[0])[0], test[1])
    val_acc = _accuracy(species_logits([longer.model], val[0])[0], val[1])
    rows.append(_row(f"base ({total} steps, = NE's optimiser steps)", acc, val_acc, base_params, base_flops,
                     base_wall + time.perf_counter() - start, total, describe(bank, base.genome)))  # fmt: skip

    runs = [("NE best", select_best, True), ("co-evolution best", select_diverse, True)]
    if sz.copy_run:
        runs.append(("NE best, copy inheritance", select_best, False))
    results = {}
    for label, select, share in cells(runs, lambda run: run[0]):
        start = time.perf_counter()
        run_cfg = replace(cfg, mutation=MutationConfig(share_weights=share))
        result = neuroevolve(train, val, run_cfg, select=select, start=(bank, base))
        wall = base_wall + time.perf_counter() - start
        results[label] = result
        rows += _member_rows(label, result, wall, test, shape)
        if select is select_diverse:
            rows += _ensemble_rows("co-evolution", result, wall, train, test, shape, sz.head_steps, cfg.seed, True)
        elif share:
            rows += _ensemble_rows("NE top-K", result, wall, train, test, shape, sz.head_steps, cfg.seed, False)
    return rows, _notes(sz, rows, results)


def _notes(sz: Sizes, rows: list[dict[str, Any]], results: dict[str, NEResult]) -> list[str]:
    cfg = sz.ne
    by = {r["model"]: r for r in rows}
    ours = {
        "base": rows[0]["test_accuracy"],
        "NE best": by.get("NE best", {}).get("test_accuracy"),
        "co-evolution best": by.get("co-evolution best", {}).get("test_accuracy"),
        "co-evolution ensemble": max(
            (r["test_accuracy"] for r in rows if r["model"].startswith("co-evolution ensemble")), default=None
        ),
    }
    ref = "; ".join(f"{k} {v:.2f} (here {ours[k]})" for k, v in REFERENCE.items())
    equal = rows[1]["test_accuracy"]
    gaps = ", ".join(
        f"{k} {100 * (v - equal):+.2f}" for k, v in ours.items() if k != "base" and v is not None
    )  # percentage points
    se = 100 * (equal * (1 - equal) / sz.n_test) ** 0.5  # binomial standard error of one accuracy, points
    steps = cfg.initial_steps + cfg.iterations * cfg.steps_per_iteration
    adam = "Adam (AMSGrad)" if cfg.amsgrad else "Adam"
    return [
        "## NE (block-level R2R neuroevolution with weight sharing)",
        "",
        f"- Run: MNIST 2x2-average-pooled to 14x14, base = residual layers widths {cfg.widths} (one 3x3 R2R block "
        f"each) + 2x2 max-pools + Linear-64-ReLU-Linear; {adam} lr {cfg.lr}, wd {cfg.weight_decay}, batch "
        f"{cfg.batch_size}; N_i={cfg.initial_steps}, N_j={cfg.steps_per_iteration}, K={cfg.select_k}, "
        f"M={cfg.population}, {cfg.iterations} iterations ({steps} optimiser steps in all, each on one model); "
        f"p(deepen)=0.5, kernels {{1: .3, 3: .35, 5: .35}}; selection on {sz.n_val} validation images, test "
        f"accuracy on {sz.n_test} MNIST test images; hierarchical head: Adam 1e-3, {sz.head_steps} steps on "
        "frozen members' logits of 20k training images. CPU runs use one intra-op thread.",
        f"- Reference (report Table 1, CIFAR-10 test accuracy): {ref}.",
        f"- Second base row: the base trained for all {steps} optimiser steps of the NE run.",
        f"- Gaps to that equal-steps base ({equal}), in points: {gaps}; one seed; binomial s.e. of one accuracy "
        f"on {sz.n_test} test images: {se:.2f} points.",
        "- Ensemble params count each shared tensor once; FLOPs per sample (Conv2d + Linear), summed over members.",
        "- Final populations: "
        + "; ".join(
            f"{k}: {len(r.selected)} selected over {len(species([i.model for i in r.selected]))} species, "
            f"val acc {', '.join(f'{i.val_accuracy:.3f}' for i in r.selected)}"
            for k, r in results.items()
        )
        + ".",  # fmt: skip
    ]
