"""Suite ``evojax_mnist``: EvoJAX's MNIST PGPE configuration, reproduced with evoens.

PGPE, population 64, batch 1024, center lr 0.006 (Adam), std lr 0.089, init std 0.039, on the
EvoJAX ConvNet (11,274 parameters) over real MNIST from the data directory. EvoJAX reports test
accuracy 0.9369 / 0.9632 / 0.9681 / 0.9743 at generations 500 / 1000 / 1500 / 2000 and about
45.7 ms per generation on its GPU (RobertTLange/evojax-benchmarks, log/PGPE/mnist). ``--quick``
runs 200 generations. It is an ordinary ``evoens run`` (the installed plugins, through entry
points): the suite only sets the config and reads the metrics back. Runs as a script:
``python -m evoens_benchmarks.evojax_mnist [--quick] [--out DIR] [--device cpu|cuda]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from evoens.bench import BenchResult, cells
from evoens.config import config_from_dict
from evoens.manager import create_plugin_manager

EVOJAX = {500: 0.9369, 1000: 0.9632, 1500: 0.9681, 2000: 0.9743}
EVOJAX_MS_PER_GEN = 45.7


def config(generations: int, device: torch.device, data_dir: str | None) -> dict[str, Any]:
    return {
        "seed": 42,
        "generations": generations,
        "device": device.type,
        "eval_every": 100 if generations <= 200 else 500,
        "reporters": ["jsonl"],
        "data": {"name": "mnist", "batch_size": 1024, "val_fraction": 0.1, "data_dir": data_dir},
        "model": {"name": "convnet", "activation": "relu"},
        "trainer": {
            "name": "evolution",
            "searcher": "pgpe",
            "popsize": 64,
            "searcher_options": {
                "center_learning_rate": 0.006,
                "stdev_learning_rate": 0.089,
                "stdev_init": 0.039,
                "optimizer": "adam",
            },
        },
    }


def suite(quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
    from evoens.engine import execute

    generations = 200 if quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        for run in cells([config(generations, device, None)], lambda c: f"PGPE P=64, {c['generations']} generations"):
            summary = execute(config_from_dict(run), tmp, create_plugin_manager())
        metrics = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates = [m["generations_per_second"] for m in metrics[1:]]
    ms = 1e3 / (sum(rates) / len(rates))
    rows = [
        {
            "generation": m["generation"] + 1,
            "test_accuracy": m["test_accuracy"],
            "evojax_test_accuracy": EVOJAX.get(m["generation"] + 1),
        }
        for m in metrics
        if "test_accuracy" in m
    ]
    rows.append({"generation": "ms/generation", "test_accuracy": ms, "evojax_test_accuracy": EVOJAX_MS_PER_GEN})
    notes = [
        f"Final test accuracy {summary['test_accuracy']:.4f} ({summary['selected']} parameters) after "
        f"{generations} generations; {ms:.1f} ms per generation on {env['device_name']} "
        f"vs EvoJAX's {EVOJAX_MS_PER_GEN} ms on its GPU. EvoJAX's accuracy at 2000: 0.9743."
    ]
    return BenchResult(
        "evojax_mnist: PGPE on MNIST, EvoJAX's configuration",
        ["generation", "test_accuracy", "evojax_test_accuracy"],
        rows,
        notes,
    )


if __name__ == "__main__":
    from evoens_benchmarks import main

    sys.exit(main("evojax_mnist", sys.argv[1:]))
