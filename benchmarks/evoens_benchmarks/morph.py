"""Suite ``morph``: function preservation of every transform, and growing a net mid-training.

(a) For every transform × architecture (MLP, CNN, small ResNet with zero-pad and projection skips,
two-path concat net): max |Δ| of the outputs on a probe batch in train and eval mode, parameters
and FLOPs before/after, plus a chained widen→deepen→widen row. (b) MNIST: widen / deepen a small
CNN at the midpoint of training vs the big architecture from scratch at equal wall time
(:mod:`evoens_benchmarks.morph_train`). (c) the architecture-neuroevolution rows of
:func:`evoens_benchmarks.morph_ne.ne_rows`. Reference numbers (R2R paper Table 2, cs231n report) are
CIFAR-10 and are quoted in the notes for context only. Runs as a script:
``python -m evoens_benchmarks.morph [--quick] [--out DIR] [--device cpu|cuda]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from evoens_morph import families
from evoens_morph.mutations import OPERATORS, MorphOptions

from evoens.bench import BenchResult, part, torch_threads
from evoens_benchmarks.morph_ne import ne_rows
from evoens_benchmarks.morph_train import Curve, TrainSizes, training_curves

WIDEN_SITE = {"mlp": "1", "cnn": "4", "resnet": "3.conv2", "concat": "3.branches.0.0"}
NET2NET_SITE = {"resnet": "3.conv1"}  # Net2WiderNet cannot widen a skip volume: block-internal site
DEEPEN_POINT = {"mlp": "3", "cnn": "6", "resnet": "4", "concat": "6"}
COLUMNS = [
    "part", "arch", "transform", "site", "max_abs_diff_eval", "max_abs_diff_train", "exact_modes",
    "params_before", "params_after", "flops_before", "flops_after",
    "acc_at_mid", "acc_after_transform", "final_test_acc", "steps", "wall_ratio", "acc_equal_flops", "flop_steps",
]  # fmt: skip


def _row(arch: str, name: str, site: str, report: Any) -> dict[str, Any]:
    return {
        "part": "a", "arch": arch, "transform": name, "site": site,
        "max_abs_diff_eval": report.max_abs_diff, "max_abs_diff_train": report.max_abs_diff_train,
        "exact_modes": "+".join(report.exact_modes) or "none",
        "params_before": report.params_before, "params_after": report.params_after,
        "flops_before": report.flops_before, "flops_after": report.flops_after,
    }  # fmt: skip


def preservation_rows(input_shape: tuple[int, ...], device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for arch, build in families.FAMILIES.items():
        torch.manual_seed(0)
        model = build(input_shape).to(device)
        probe = torch.randn(32, *input_shape, generator=torch.Generator().manual_seed(1)).to(device)
        for name, op in OPERATORS.items():
            site = DEEPEN_POINT[arch] if name.endswith("deepen") else WIDEN_SITE[arch]
            if name == "net2net_widen":
                site = NET2NET_SITE.get(arch, site)
            _, report = op(model, site, MorphOptions(amount=4, probe=probe), torch.Generator().manual_seed(2))
            rows.append(_row(arch, name, site, report))
        rows.append(_chain_row(arch, model, probe))
    return rows


def _chain_row(arch: str, model: torch.nn.Module, probe: torch.Tensor) -> dict[str, Any]:
    """r2r widen -> r2r deepen -> r2r widen (same volume), compared with the ORIGINAL model."""
    gen = torch.Generator().manual_seed(3)
    opts = MorphOptions(amount=4, probe=probe)
    site = WIDEN_SITE[arch]
    cur, first = OPERATORS["r2r_widen"](model, site, opts, gen)
    cur, _ = OPERATORS["r2r_deepen"](cur, DEEPEN_POINT[arch], opts, gen)
    cur, last = OPERATORS["r2r_widen"](cur, site, opts, gen)
    diffs = {}
    for mode in ("eval", "train"):
        a, b = model.train(mode == "train"), cur.train(mode == "train")
        with torch.no_grad():
            diffs[mode] = float((a(probe) - b(probe)).abs().max())
    model.eval()
    row = _row(arch, "r2r widen->deepen->widen", site, last)
    row.update(
        max_abs_diff_eval=diffs["eval"], max_abs_diff_train=diffs["train"],
        params_before=first.params_before, flops_before=first.flops_before,
    )  # fmt: skip
    return row


def _curve_rows(curves: list[Curve]) -> list[dict[str, Any]]:
    ref = next(c for c in curves if c.name == "r2r_widen").extra["wall"]
    rows = []
    for c in curves:
        e = c.extra
        rows.append(
            {
                "part": "b", "arch": "mnist-cnn", "transform": c.name,
                "max_abs_diff_eval": e.get("max_abs_diff_eval"), "max_abs_diff_train": e.get("max_abs_diff_train"),
                "acc_at_mid": e.get("acc_at_mid"), "acc_after_transform": e.get("acc_after_transform"),
                "final_test_acc": e["final_test_acc"], "steps": e.get("steps", c.points[-1][1]),
                "wall_ratio": e["wall"] / ref, "acc_equal_flops": e.get("acc_equal_flops"),
                "flop_steps": e.get("flop_steps"),
            }
        )  # fmt: skip
    return rows


def ne_part(quick: bool, device: torch.device) -> tuple[list[dict[str, Any]], list[str]]:
    """Part (c): the rows and notes of :func:`evoens_benchmarks.morph_ne.ne_rows`."""
    rows, notes = ne_rows(quick, device)
    return [{"part": "c", **r} for r in rows], list(notes)


def _plot(curves: list[Curve], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for c in curves:
        ax = axes[1] if "deep" in c.name else axes[0]
        if c.name.startswith("teacher"):
            for a in axes:
                a.plot(*zip(*[(t, acc) for t, _, acc in c.points]), color="gray", ls=":", label=c.name)
            continue
        (line,) = ax.plot(*zip(*[(t, acc) for t, _, acc in c.points]), marker=".", ms=3, label=c.name)
        if "transform_at" in c.extra:  # where the transform happened
            ax.axvline(c.extra["transform_at"], color=line.get_color(), lw=0.6, ls="--")
    for ax, title in zip(axes, ("widen x2 at the midpoint", "deepen at the midpoint")):
        ax.set(title=title, xlabel="training time (s; CPU: thread time of the training thread)", ylim=(0.8, 1.0))
        ax.legend(fontsize=7)
    axes[0].set_ylabel("MNIST test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _load_mnist(data_dir: str | None) -> Any:
    from evoens.datasets.base import resolve_data_dir
    from evoens.datasets.mnist import load_mnist

    return load_mnist(resolve_data_dir(data_dir), seed=0, val_fraction=0.0, download=False)


def suite(
    quick: bool, device: torch.device, env: dict[str, Any], *, sizes: TrainSizes | None = None,
    data: Any = None, with_ne: bool = True,
) -> BenchResult:  # fmt: skip
    """The ``morph`` suite; ``sizes``/``data``/``with_ne`` are internal knobs for tests."""
    start = time.perf_counter()
    with torch_threads(1 if device.type == "cpu" else None):  # tiny layers: one thread is far faster
        with part("a preservation"):
            rows = preservation_rows((1, 12, 12) if quick else (1, 28, 28), device)
        sizes = sizes or (TrainSizes(steps=200, eval_every=50, test_size=1000) if quick else TrainSizes())
        with part("b grow mid-training"):
            curves = training_curves(data if data is not None else _load_mnist(None), sizes, device)
        rows += _curve_rows(curves)
        with part("c neuroevolution"):
            ne_rows, ne_notes = ne_part(quick, device) if with_ne else ([], ["- (c) NE rows: skipped (with_ne=False)."])
        rows += ne_rows
    columns = COLUMNS + [k for r in rows for k in r if k not in COLUMNS]
    columns = list(dict.fromkeys(columns))
    return BenchResult(
        title="morph: function-preserving transforms (R2R, Net2Net, NetMorph, random pad) and NE",
        columns=columns,
        rows=rows,
        notes=notes(rows, curves, sizes, quick, time.perf_counter() - start) + ne_notes,
        plot=lambda path: _plot(curves, path),
    )


def notes(rows: list[dict[str, Any]], curves: list[Curve], sizes: TrainSizes, quick: bool, seconds: float) -> list[str]:
    """One line per fact: what ran, then every figure read from ``rows`` and ``curves``."""
    a = [r for r in rows if r["part"] == "a"]
    exact = [r for r in a if r["exact_modes"] != "none"]
    worst = max(
        max(r["max_abs_diff_eval"], r["max_abs_diff_train"] if "train" in r["exact_modes"] else 0) for r in exact
    )
    pad = min(r["max_abs_diff_eval"] for r in a if r["transform"] == "random_pad_widen")
    by = {c.name: c.extra for c in curves}
    half = sizes.steps // 2
    lines = [
        "## What was run",
        "",
        f"- (a) {len(a)} rows: inputs {'1x12x12' if quick else '1x28x28'}, probe batch 32 of N(0,1), +4 channels per"
        " producer slice (deepen: one block, 3x3 kernels, hidden = channels); BN layers fresh.",
        f"- (a) worst exact-mode max|Δ| over the exact rows: {worst:.2g} (tolerance 1e-5); smallest random-pad"
        f" max|Δ|: {pad:.2g}.",
        f"- (b) MNIST (60k train, first {sizes.test_size} test images), CNN conv3x3 {sizes.channels[0]}->"
        f"{sizes.channels[1]} channels + FC 32, Adam lr {sizes.lr}, batch {sizes.batch}, {sizes.steps} steps,"
        f" transform at step {half}; widen: both conv volumes x2; deepen: one block after each conv stage;"
        " optimizer state carried over (lr kept, except 'lr/5').",
        "- (b) 'from scratch': the grown architecture re-initialised, trained for the training time of the R2R run"
        " and read again at equal training FLOPs (acc_equal_flops, flop_steps); training time: CPU time of the"
        " training thread on a CPU, wall time on a GPU, evaluation excluded; wall_ratio = training time / that of"
        " r2r_widen. One seed.",
    ]
    for name in ("r2r_widen", "net2net_widen", "netmorph_widen", "random_pad_widen", "wide from scratch",
                 "r2r_deepen", "net2net_deepen", "deep from scratch"):  # fmt: skip
        e = by.get(name)
        if e:
            after = e.get("acc_after_transform")
            lines.append(
                f"  - {name}: final test acc (mean of the last 3 evaluations) {e['final_test_acc']:.4f}"
                + (f" (mid {e['acc_at_mid']:.4f} -> right after transform {after:.4f})" if after is not None else "")
            )
    for grown, scratch in (("r2r_widen", "wide from scratch"), ("r2r_deepen", "deep from scratch")):
        if grown in by and scratch in by:
            gap = 100 * (by[grown]["final_test_acc"] - by[scratch]["final_test_acc"])
            gap_f = 100 * (by[grown]["final_test_acc"] - by[scratch]["acc_equal_flops"])
            lines.append(
                f"  - measured: {grown} - {scratch} = {gap:+.2f} points at equal training time ({by[scratch]['steps']}"
                f" big steps vs {half} small + {sizes.steps - half} big), {gap_f:+.2f} points at equal training FLOPs"
                f" ({by[scratch]['flop_steps']} big steps)"
            )
    if "r2r_widen" in by:
        acc = by["r2r_widen"]["final_test_acc"]
        se = 100 * (acc * (1 - acc) / sizes.test_size) ** 0.5
        lines.append(f"- (b) binomial s.e. of one accuracy on {sizes.test_size} test images: {se:.2f} points.")
    lines += [
        "- Reference, CIFAR-10 (R2R paper Table 2): from scratch 69.9%, R2WiderR 69.9, Net2WiderNet 69.6, NetMorph"
        " 69.8, random pad 70.2, R2DeeperR 72.1, Net2DeeperNet 70.5; cs231n report: widen at update 4500 of 6000,"
        " 136 s vs +44 s from scratch, ~0.70.",
        f"- Suite wall time {seconds:.0f} s.",
    ]
    return lines


if __name__ == "__main__":
    from evoens_benchmarks import main

    sys.exit(main("morph", sys.argv[1:]))
