"""The ``morph`` suite in quick mode with tiny sizes: the shape of its output and its key claims."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from evoens_benchmarks import morph
from evoens_benchmarks.morph_train import TrainSizes

from evoens.datasets.base import DataSplits, Split


def _fake_mnist() -> DataSplits:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (300,), generator=g)
    x = torch.rand(300, 1, 28, 28, generator=g) * 0.3
    x[torch.arange(300), 0, y * 2, :] = 1.0  # a learnable stripe per class
    split = Split(x, y)
    return DataSplits(
        "fake-mnist", split, split.subset(torch.arange(50)), split.subset(torch.arange(100)), 10, (1, 28, 28)
    )


def test_quick_suite_rows_notes_and_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        morph, "ne_part", lambda quick, device: ([{"part": "ne", "method": "NE best", "test_acc": 0.5}], ["- ne"])
    )
    sizes = TrainSizes(steps=20, batch=16, eval_every=10, test_size=100)
    result = morph.suite(True, torch.device("cpu"), {}, sizes=sizes, data=_fake_mnist())
    parts = [r["part"] for r in result.rows]
    assert parts.count("a") == 4 * 7 and parts.count("b") == 10 and parts.count("ne") == 1
    assert {"method", "test_acc"} <= set(result.columns) and result.columns[:3] == ["part", "arch", "transform"]
    for row in (r for r in result.rows if r["part"] == "a"):
        modes = row["exact_modes"].split("+")
        if "eval" in modes:
            assert row["max_abs_diff_eval"] <= 1e-5, row
        if "train" in modes:
            assert row["max_abs_diff_train"] <= 1e-5, row
        if row["transform"] == "random_pad_widen":
            assert row["max_abs_diff_eval"] > 1e-3
        assert row["params_after"] > row["params_before"] and row["flops_after"] > row["flops_before"]
    grown = {r["transform"]: r for r in result.rows if r["part"] == "b"}
    for name in ("r2r_widen", "net2net_widen", "r2r_deepen"):  # exact: no accuracy lost at the transform
        assert grown[name]["acc_after_transform"] == grown[name]["acc_at_mid"]
    assert grown["wide from scratch"]["wall_ratio"] == pytest.approx(1.0, abs=0.2)
    assert any("What was run" in n for n in result.notes) and result.notes[-1] == "- ne"
    result.plot(tmp_path / "morph.png")
    assert (tmp_path / "morph.png").stat().st_size > 1000
