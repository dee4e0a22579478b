"""The binary_mnist suite at tiny sizes on digits: one row per run, every run an ordinary
``evoens run`` with the installed plugins."""

from __future__ import annotations

from pathlib import Path

import torch
from evoens_benchmarks.binary_mnist import FP, Sizes, run_sizes


def test_suite_tiny_on_digits_has_one_row_per_run(tmp_path: Path) -> None:
    sizes = Sizes(
        dataset="digits",
        mlp_hidden=(16, 16),
        mlp_epochs=1,
        cnn_channels=(4, 4),
        cnn_epochs=1,
        batch_size=128,
        lr=0.01,
        evo_hidden=(8, 8),
        evo_generations=3,
        evo_popsize=8,
        evo_batch=128,
        stes=("clipped", "identity"),
        cnn_stes=("clipped",),
        searchers=("pgpe",),
        evals=1,
    )
    result = run_sizes(sizes, torch.device("cpu"))
    methods = [(r["model"], r["method"]) for r in result.rows]
    assert methods == [
        ("binary_mlp", "clipped"),
        ("binary_mlp", "identity"),
        ("binary_mlp", FP),
        ("binary_cnn", "clipped"),
        ("binary_cnn", FP),
        ("binary_mlp", "pgpe"),
    ]
    for row in result.rows:
        assert set(row) == set(result.columns) and 0.0 <= row["test_accuracy"] <= 1.0
    fp = next(r for r in result.rows if r["model"] == "binary_mlp" and r["method"] == FP)
    assert fp["step_time_vs_fp_mlp"] == 1.0 and fp["binary_weights"] == 0
    assert all(r["binary_weights"] > 0 for r in result.rows if r["method"] != FP)
    result.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
