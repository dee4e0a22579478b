"""Suite ``binary_mnist``: binarized networks on MNIST, trained by gradient (STE) and by evolution.

(a) Gradient: the ``binary_mlp`` (784-256-256-10, ±1 hidden activations, binary 256x256 middle
layer, full-precision first and last layers) and a small ``binary_cnn`` trained with Adam, one
run per STE (clipped, identity, approxsign, swishsign, steep) plus a full-precision baseline of the
same architecture (no binarization, tanh). (b) Evolution: PGPE and SNES over the latent real
weights of a smaller binarized MLP; the forward binarizes them. Every run is an ordinary
``evoens run`` (the suite only writes configs and reads ``metrics.jsonl`` back). Reference points:
Hubara et al. (NeurIPS 2016) report 0.96% MNIST test error for a 3x4096 BNN MLP after 1000
epochs. Runs as a script: ``python -m evoens_benchmarks.binary_mnist [--quick] [--out DIR]``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evoens.bench import BenchResult, cells, torch_threads
from evoens.config import config_from_dict
from evoens.manager import create_plugin_manager

STE_NAMES = ("clipped", "identity", "approxsign", "swishsign", "steep")
FP = "full-precision"


@dataclass(frozen=True)
class Sizes:
    """How much the suite runs; ``FULL`` fits ~12 minutes on 2 contended CPU cores."""

    dataset: str = "mnist"
    mlp_hidden: tuple[int, ...] = (256, 256)
    mlp_epochs: float = 2.0
    cnn_channels: tuple[int, ...] = (16, 32, 32)
    cnn_epochs: float = 1.0
    batch_size: int = 100
    lr: float = 1e-3
    evo_hidden: tuple[int, ...] = (32, 32)
    evo_generations: int = 400
    evo_popsize: int = 64
    evo_batch: int = 1024
    stes: tuple[str, ...] = STE_NAMES
    cnn_stes: tuple[str, ...] = STE_NAMES
    searchers: tuple[str, ...] = ("pgpe", "snes")
    evals: int = 4  # test-accuracy points per run
    threads: int | None = 1  # torch intra-op threads during the runs (None: leave as is)


FULL = Sizes()
QUICK = Sizes(mlp_epochs=0.25, cnn_epochs=0.1, evo_generations=40, stes=("clipped", "swishsign"), cnn_stes=("clipped",))
SEARCHER_OPTIONS: dict[str, dict[str, Any]] = {
    "pgpe": {"center_learning_rate": 0.01, "stdev_learning_rate": 0.1, "stdev_init": 0.05, "optimizer": "adam"},
    "snes": {"stdev_init": 0.05},
}


def _steps(epochs: float, train_size: int, batch: int) -> int:
    return max(1, round(epochs * train_size / batch))


def model_table(kind: str, sizes: Sizes, method: str) -> dict[str, Any]:
    """``[model]`` of one run: ``method`` is an STE name or ``FP`` (same layers, no binarization)."""
    options: dict[str, Any] = {"norm": "layer"}
    if method == FP:
        options.update(binary_weights=False, binary_activations=False)
    else:
        options["ste"] = method
    if kind == "binary_cnn":
        return {"name": kind, "options": {**options, "channels": list(sizes.cnn_channels)}}
    hidden = list(sizes.evo_hidden if method in SEARCHER_OPTIONS else sizes.mlp_hidden)
    if method in SEARCHER_OPTIONS:
        options["ste"] = "clipped"  # the forward is all that matters to a searcher
    return {"name": kind, "hidden": hidden, "options": options}


def run_config(
    kind: str, method: str, sizes: Sizes, generations: int, device: torch.device, data_dir: str | None
) -> dict[str, Any]:
    """The run config (as a dict) of one table row."""
    evolution = method in SEARCHER_OPTIONS
    trainer: dict[str, Any] = (
        {
            "name": "evolution",
            "searcher": method,
            "popsize": sizes.evo_popsize,
            "searcher_options": SEARCHER_OPTIONS[method],
        }
        if evolution
        else {"name": "gradient", "popsize": 1, "optimizer": "adam", "lr": sizes.lr}
    )
    return {
        "seed": 0,
        "generations": generations,
        "device": device.type,
        "eval_every": max(1, generations // sizes.evals),
        "reporters": ["jsonl"],
        "data": {
            "name": sizes.dataset,
            "batch_size": sizes.evo_batch if evolution else sizes.batch_size,
            "val_fraction": 0.1,
            "data_dir": data_dir,
        },
        "model": model_table(kind, sizes, method),
        "trainer": trainer,
    }


def _execute(config: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one config with the installed plugins (the binary plugin required); return the summary
    and the ``metrics.jsonl`` lines."""
    from evoens.engine import execute

    pm = create_plugin_manager(require=["binary"])
    with tempfile.TemporaryDirectory() as tmp:
        summary = execute(config_from_dict(config), tmp, pm)
        metrics = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics


def _count(config: dict[str, Any], input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(binary weights, all parameters) of the config's model."""
    from evoens_binary.layers import BinaryConv2d, BinaryLinear
    from evoens_binary.models import binary_cnn_model, binary_mlp_model

    cfg = config_from_dict(config).model
    build = binary_cnn_model if cfg.name == "binary_cnn" else binary_mlp_model
    model = build(input_shape, 10, cfg)
    binary = sum(m.weight.numel() for m in model.modules() if isinstance(m, (BinaryLinear, BinaryConv2d)))
    return binary, sum(p.numel() for p in model.parameters())


def _plan(sizes: Sizes) -> list[tuple[str, str, str, float]]:
    """(model kind, trainer, method, epochs or generations) per row."""
    rows = [("binary_mlp", "gradient", m, sizes.mlp_epochs) for m in (*sizes.stes, FP)]
    rows += [("binary_cnn", "gradient", m, sizes.cnn_epochs) for m in (*sizes.cnn_stes, FP) if sizes.cnn_epochs > 0]
    rows += [("binary_mlp", "evolution", s, sizes.evo_generations) for s in sizes.searchers]
    return rows


def run_sizes(sizes: Sizes, device: torch.device, data_dir: str | None = None) -> BenchResult:
    """Every run of ``sizes``; the table, notes and plot (torch threads restored afterwards)."""
    with torch_threads(sizes.threads):
        return _run_sizes(sizes, device, data_dir)


def _run_sizes(sizes: Sizes, device: torch.device, data_dir: str | None) -> BenchResult:
    from evoens.datasets import load_dataset

    data = load_dataset(sizes.dataset, data_dir=data_dir, seed=0, val_fraction=0.1, test_fraction=0.2)
    train_size, input_shape = len(data.train.y), tuple(data.input_shape)
    rows, curves = [], {}
    for kind, trainer, method, amount in cells(_plan(sizes), lambda r: f"{r[0].removeprefix('binary_')} {r[2]}"):
        gens = int(amount) if trainer == "evolution" else _steps(amount, train_size, sizes.batch_size)
        config = run_config(kind, method, sizes, gens, device, data_dir)
        summary, metrics = _execute(config)
        binary, total = _count(config, input_shape)
        seconds = statistics.median(1.0 / m["generations_per_second"] for m in metrics[1:] or metrics)
        label = f"{kind.removeprefix('binary_')} {method}"
        curves[label] = [(m["generation"] + 1, m["test_accuracy"]) for m in metrics if "test_accuracy" in m]
        rows.append(
            {
                "model": kind,
                "trainer": trainer,
                "method": method,
                "hidden/channels": "-".join(map(str, config["model"].get("hidden") or sizes.cnn_channels)),
                "binary_weights": binary,
                "params": total,
                "steps": gens,
                "epochs": round(gens * config["data"]["batch_size"] / train_size, 2),
                "test_accuracy": summary["test_accuracy"],
                "_seconds_per_step": seconds,
            }
        )
    base = next((r["_seconds_per_step"] for r in rows if r["model"] == "binary_mlp" and r["method"] == FP), None)
    for r in rows:
        seconds = r.pop("_seconds_per_step")
        r["step_time_vs_fp_mlp"] = seconds / base if base else None
    columns = [*rows[0].keys()]
    return BenchResult(
        f"binary_mnist: binarized nets on {sizes.dataset}, STE gradient vs evolution",
        columns,
        rows,
        notes(sizes, rows),
        plot=lambda path: _plot(rows, curves, path),
    )


def _ranked(rows: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    found = [r for r in rows if r["model"] == model and r["trainer"] == "gradient" and r["method"] != FP]
    return sorted(found, key=lambda r: -r["test_accuracy"])


def _row(rows: list[dict[str, Any]], model: str, method: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["model"] == model and r["method"] == method), None)


def notes(sizes: Sizes, rows: list[dict[str, Any]]) -> list[str]:
    """One line per fact: what ran, then every figure read from ``rows``."""
    evo = ", ".join(f"{name}: {opts}" for name, opts in SEARCHER_OPTIONS.items() if name in sizes.searchers)
    lines = [
        f"- Setup: {sizes.dataset}, seed 0, 10% of the training split held out for validation, official test "
        f"split. Gradient rows: one network each, Adam lr {sizes.lr}, batch {sizes.batch_size}; binary_mlp hidden "
        f"{'-'.join(map(str, sizes.mlp_hidden))}, binary_cnn channels {'-'.join(map(str, sizes.cnn_channels))}; "
        "full-precision rows: the same layers with tanh and real weights.",
        f"- Evolution rows: population {sizes.evo_popsize}, batch {sizes.evo_batch}, {sizes.evo_generations} "
        f"generations over the latent weights of a {'-'.join(map(str, sizes.evo_hidden))} binarized MLP ({evo}); "
        "reported: the candidate with the best validation accuracy.",
        f"- Torch intra-op threads: {sizes.threads or torch.get_num_threads()}. step_time_vs_fp_mlp = median "
        "seconds per step (gradient) or per generation (evolution) / the full-precision MLP's.",
    ]
    fp_mlp, fp_cnn = _row(rows, "binary_mlp", FP), _row(rows, "binary_cnn", FP)
    for model, fp in (("binary_mlp", fp_mlp), ("binary_cnn", fp_cnn)):
        ranked = _ranked(rows, model)
        if not ranked or fp is None:
            continue
        order = " > ".join(f"{r['method']} {r['test_accuracy']:.4f}" for r in ranked)
        gap = 100 * (ranked[0]["test_accuracy"] - fp["test_accuracy"])
        spread = 100 * (ranked[0]["test_accuracy"] - ranked[-1]["test_accuracy"])
        slow = statistics.median(r["step_time_vs_fp_mlp"] / fp["step_time_vs_fp_mlp"] for r in ranked)
        lines.append(
            f"- {model}, gradient, {ranked[0]['epochs']} epochs: {order}; full precision {fp['test_accuracy']:.4f}; "
            f"best STE minus full precision {gap:+.2f} points; spread between STEs {spread:.2f} points; a binarized "
            f"step costs {slow:.2f}x a full-precision step (binarization simulated in float32)."
        )
    for name in sizes.searchers:
        r = _row(rows, "binary_mlp", name)
        if r is not None:
            lines.append(
                f"- {name}: {r['params']} latent weights ({r['binary_weights']} binary), population/D "
                f"{sizes.evo_popsize / r['params']:.4f}, test accuracy {r['test_accuracy']:.4f} after {r['steps']} "
                f"generations ({r['epochs']} epochs of images), one generation = {r['step_time_vs_fp_mlp']:.1f} "
                "full-precision MLP steps."
            )
    lines.append(
        "- Reference points, not measured here: Hubara et al. (NeurIPS 2016) 0.96% MNIST test error, 3x4096 BNN "
        "MLP, 1000 epochs; EvoJAX PGPE, full-precision 11k-parameter ConvNet, population 64: 0.9369 at generation 500."
    )
    return lines


def _plot(rows: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    color = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    style = {"mlp": "-", "cnn": "--"}
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['model'].removeprefix('binary_')} {r['method']}" for r in rows]
    bars.barh(labels, [r["test_accuracy"] for r in rows], color=[color[r["method"]] for r in rows])
    low = min(r["test_accuracy"] for r in rows)
    bars.set_xlim(max(0.0, low - 0.1), 1.0)
    bars.set_xlabel("test accuracy")
    bars.invert_yaxis()
    for label, pts in curves.items():
        model, method = label.split(" ", 1)
        total = max(p[0] for p in pts)
        xs, ys = [p[0] / total for p in pts], [p[1] for p in pts]
        lines.plot(xs, ys, style[model], marker="o", color=color[method], label=label)
    lines.set_xlabel("fraction of the run (steps, or generations for pgpe/snes)")
    lines.set_ylabel("test accuracy")
    lines.legend(fontsize=7, ncol=2)
    fig.suptitle("binarized nets on MNIST: each STE by gradient (mlp solid, cnn dashed) vs PGPE/SNES")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def suite(quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
    """``evoens bench binary_mnist``; the data directory is ``env['data_dir']`` or $EVOENS_DATA_DIR."""
    return run_sizes(QUICK if quick else FULL, device, env.get("data_dir"))


if __name__ == "__main__":
    from evoens_benchmarks import main

    sys.exit(main("binary_mnist", sys.argv[1:]))
