"""The NE rows of the morph benchmark in tiny mode: shape of the output and consistency of the rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from evoens_benchmarks.morph_ne import REFERENCE, ne_rows, sizes

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="real MNIST not found beside the checkout")
def test_ne_rows_tiny_mode_shape() -> None:
    threads = torch.get_num_threads()
    rows, notes = ne_rows(True, torch.device("cpu"), data_dir=DATA, tiny=True)
    assert torch.get_num_threads() == threads  # the one-thread setting is undone
    cfg = sizes(True, tiny=True).ne
    total = cfg.initial_steps + cfg.iterations * cfg.steps_per_iteration
    models = [r["model"] for r in rows]
    assert models[0] == f"base ({cfg.initial_steps} steps)" and models[1].startswith(f"base ({total} steps")
    assert {"NE best", "co-evolution best"} <= set(models)
    assert any(m.startswith("co-evolution ensemble, hierarchical head") for m in models)
    assert any(m.startswith("co-evolution ensemble, mean prob") for m in models)
    for r in rows:
        assert r["part"] == "ne" and {"model", "test_accuracy", "params", "flops", "wall_s"} <= set(r)
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["params"] > 0 and r["flops"] > 0
        assert math.isnan(r["val_accuracy"]) or 0.0 <= r["val_accuracy"] <= 1.0
    by = {r["model"]: r for r in rows}
    assert by["NE best"]["params"] >= by[models[0]]["params"]  # children only grow
    text = "\n".join(notes)
    for value in REFERENCE.values():
        assert f"{value:.2f}" in text
    assert "MNIST" in text and "CIFAR-10" in text
