"""Suite ``throughput``: population forwards per strategy vs the per-member loop and EvoTorch.

For each model (MLP 40-100-10, MLP 784-64-10, the EvoJAX MNIST ConvNet), population size P and
batch size, it times one no-grad forward of the whole population with every strategy of
:mod:`evoens.strategies` (and ``auto``) and EvoTorch's stock ``SupervisedNE`` evaluation (one
network filled and run per solution), and reports samples/s, GFLOP/s, the speed-up over the loop
and the fraction of the sgemm peak measured in the same run. Runs as a script:
``python -m evoens_benchmarks.throughput [--quick] [--out DIR] [--device cpu|cuda]``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evoens.bench import BenchResult, cells, time_call
from evoens.models import convnet, mlp
from evoens.population import STRATEGIES, Population

MODELS: dict[str, tuple[tuple[int, ...], Any]] = {
    "mlp-40-100-10": ((40,), lambda: mlp((40,), 10, [100], "tanh")),
    "mlp-784-64-10": ((784,), lambda: mlp((784,), 10, [64], "tanh")),
    "convnet-evojax": ((1, 28, 28), lambda: convnet((1, 28, 28), 10)),
}
STOCK = "evotorch-SupervisedNE"
SLOW_SKIP_S = 20.0  # a strategy whose extrapolated time exceeds this is skipped for larger P


def flops_per_sample(template: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Multiply-adds x 2 of Linear and Conv2d layers for one sample."""
    total = 0.0

    def count(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2.0 * module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += 2.0 * per_out * out[0].numel()

    handles = [m.register_forward_hook(count) for m in template.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        template(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return total


def stock_supervised_ne(template: nn.Module, x: torch.Tensor, values: torch.Tensor) -> Any:
    """A callable evaluating ``values`` (P, D) the way EvoTorch's SupervisedNE does."""
    from evotorch.neuroevolution import SupervisedNE

    y = torch.zeros(len(x), dtype=torch.long)
    problem = SupervisedNE(
        torch.utils.data.TensorDataset(x.cpu(), y),
        template,
        nn.CrossEntropyLoss(),
        minibatch_size=len(x),
        common_minibatch=True,
        device=x.device,
    )
    batch = problem.generate_batch(len(values))
    batch.set_values(values)
    return lambda: problem.evaluate(batch)


def _grid(quick: bool) -> list[tuple[str, int, int]]:
    if quick:
        return [(m, p, b) for m in ("mlp-40-100-10", "mlp-784-64-10") for p in (16, 256) for b in (32, 256)] + [
            ("convnet-evojax", 16, 32)
        ]
    return [(m, p, b) for m in MODELS for b in (32, 256, 1024) for p in (16, 64, 256, 1024)]


def _measure_cell(model: str, P: int, batch: int, device: torch.device, skip: dict[str, float]) -> list[dict]:
    shape, build = MODELS[model]
    template = build().eval().to(device)
    pop = Population.from_module(template, P, generator=torch.Generator().manual_seed(0)).to(device)
    x = torch.randn(batch, *shape, device=device)
    flops = flops_per_sample(template, shape) * batch * P
    runners: dict[str, Any] = {
        n: (lambda n=n: pop(x, strategy=n)) for n, s in STRATEGIES.items() if s.supports(template)
    }
    runners["auto"] = lambda: pop(x)
    runners[STOCK] = stock_supervised_ne(template, x, pop.flat)
    rows = []
    with torch.no_grad():
        for name, fn in runners.items():
            key = f"{model}/{batch}/{name}"
            if skip.get(key, 0.0) * P > SLOW_SKIP_S:
                rows.append(
                    {
                        "model": model,
                        "P": P,
                        "batch": batch,
                        "strategy": name,
                        "ms": None,
                        "note": f"skipped: ~{skip[key] * P:.0f} s per forward",
                    }
                )
                continue
            seconds = time_call(fn, device, repeats=5)
            skip[key] = seconds / P
            rows.append(
                {
                    "model": model,
                    "P": P,
                    "batch": batch,
                    "strategy": name,
                    "ms": seconds * 1e3,
                    "samples_per_s": P * batch / seconds,
                    "gflops": flops / seconds / 1e9,
                    "note": f"chose {pop.last_strategy}" if name == "auto" else "",
                }
            )
    return rows


def _ratios(rows: list[dict], peak: float) -> None:
    by_cell: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_cell.setdefault((row["model"], row["P"], row["batch"]), {})[row["strategy"]] = row
    for cell in by_cell.values():
        loop = cell.get("loop", {}).get("ms")
        for row in cell.values():
            if row.get("ms"):
                row["x_loop"] = loop / row["ms"] if loop else None
                row["pct_peak"] = 100 * row["gflops"] / peak


def _cells(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    cells: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row.get("ms"):
            cells.setdefault((row["model"], row["P"], row["batch"]), {})[row["strategy"]] = row
    return cells


def _label(cell: tuple) -> str:
    return f"{cell[0]} P={cell[1]} batch={cell[2]}"


def _verdicts(cells: dict[tuple, dict[str, dict]]) -> list[str]:
    """The issue's four targets on this run: met or missed, by how much, and the measured reason."""
    out = ["## Verdict on the targets", ""]
    ratio = {
        c: v["auto"]["ms"] / min(r["ms"] for k, r in v.items() if k != STOCK) for c, v in cells.items() if "auto" in v
    }
    slow = [f"{_label(c)} ({r:.2f}x, {cells[c]['auto']['note']})" for c, r in sorted(ratio.items()) if r > 1.1]
    missed = f"; missed: {', '.join(slow)}" if slow else ""
    out.append(f"- auto within 10% of the best strategy: {len(ratio) - len(slow)} of {len(ratio)} cells{missed}")
    small = cells.get(("mlp-40-100-10", 256, 32), {}).get("auto", {})
    if small.get("x_loop"):
        verdict = "met" if small["x_loop"] >= 10 else "missed"
        out.append(f"- >= 10x the loop, MLP 40-100-10 at P=256, batch 32: {small['x_loop']:.1f}x ({verdict})")
    wide = {
        c: v["auto"]["pct_peak"] for c, v in cells.items() if c[0] == "mlp-784-64-10" and c[2] >= 256 and "auto" in v
    }
    if wide:
        low = [f"{_label(c)} ({p:.0f}%)" for c, p in sorted(wide.items()) if p < 60]
        below = f"; below: {', '.join(low)}" if low else ""
        span = f"{min(wide.values()):.0f}-{max(wide.values()):.0f}%"
        out.append(
            f"- >= 60% of sgemm peak, MLP 784-64-10 at batch >= 256: "
            f"{len(wide) - len(low)} of {len(wide)} cells, {span}{below}"
        )
    return out + _stock_verdict(cells)


def _stock_verdict(cells: dict[tuple, dict[str, dict]]) -> list[str]:
    mlps = {c: v for c, v in cells.items() if c[0].startswith("mlp") and "auto" in v and STOCK in v}
    missed = {c: v for c, v in mlps.items() if v[STOCK]["ms"] / v["auto"]["ms"] < 5}
    line = f"- >= 5x EvoTorch SupervisedNE in every MLP cell: {len(mlps) - len(missed)} of {len(mlps)} cells"
    if not missed:
        return [line + " (met)"]
    need = [5 * v[STOCK]["pct_peak"] for v in missed.values()]
    ours = [v["auto"]["pct_peak"] for v in missed.values()]
    gains = [v[STOCK]["ms"] / v["auto"]["ms"] for v in missed.values()]
    batches = ", ".join(map(str, sorted({c[2] for c in missed})))
    return [
        f"{line}; missed in {len(missed)} (batch {batches}): {min(gains):.1f}-{max(gains):.1f}x; 5x needs "
        f"{min(need):.0f}-{max(need):.0f}% of sgemm peak there, the batched forward reaches {min(ours):.0f}-"
        f"{max(ours):.0f}%"
    ]


def _targets(rows: list[dict]) -> list[str]:
    cells = _cells(rows)
    notes, agreed = [*_verdicts(cells), "", "## Per cell", ""], 0
    for (model, P, batch), cell in sorted(cells.items()):
        ours = {k: v for k, v in cell.items() if k != STOCK}
        best = min(ours.values(), key=lambda r: r["ms"])
        auto = cell.get("auto")
        stock = cell.get(STOCK)
        parts = [
            f"auto ({auto['note']}) {auto['ms'] / best['ms']:.2f}x the best ({best['strategy']})" if auto else "no auto"
        ]
        if auto and stock:
            parts.append(f"{stock['ms'] / auto['ms']:.1f}x EvoTorch SupervisedNE")
        if auto and auto.get("x_loop"):
            parts.append(f"{auto['x_loop']:.1f}x loop, {auto['pct_peak']:.0f}% of sgemm peak")
        notes.append(f"- {model} P={P} batch={batch}: " + "; ".join(parts))
        agreed += bool(auto) and best["strategy"] in ("auto", auto["note"].removeprefix("chose "))
    timed = sum(1 for cell in cells.values() if "auto" in cell)
    notes += ["", f"auto chose the fastest strategy in {agreed} of {timed} cells (one timing of each, first call)."]
    return notes


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for model in MODELS:
        for batch in (32, 256, 1024):
            pts = [
                (r["P"], r["x_loop"])
                for r in rows
                if r["model"] == model and r["batch"] == batch and r["strategy"] == "auto" and r.get("x_loop")
            ]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{model} b={batch}")
    ax.set(xscale="log", yscale="log", xlabel="population size P", ylabel="auto speed-up over the loop")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def suite(quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
    rows: list[dict] = []
    skip: dict[str, float] = {}
    for model, P, batch in cells(_grid(quick), lambda cell: f"{cell[0]} P={cell[1]} batch={cell[2]}"):
        rows += _measure_cell(model, P, batch, device, skip)
    _ratios(rows, env["sgemm_gflops"])
    return BenchResult(
        title="throughput: one forward of a whole population",
        columns=["model", "P", "batch", "strategy", "ms", "samples_per_s", "gflops", "pct_peak", "x_loop", "note"],
        rows=rows,
        notes=_targets(rows),
        plot=lambda path: _plot(rows, path),
    )


if __name__ == "__main__":
    from evoens_benchmarks import main

    sys.exit(main("throughput", sys.argv[1:]))
