"""The ``sizing`` suite in quick mode (digits, no files): its parts, claims, verdicts and plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from evoens_benchmarks import sizing
from evoens_benchmarks.hooks import SUITES

from evoens.bench import markdown

VERDICTS = {"met", "not met", "partly met", "inconclusive"}


@pytest.mark.slow
def test_quick_suite_rows_verdicts_and_plot(tmp_path: Path) -> None:
    assert "sizing" in SUITES
    result = sizing.suite(True, torch.device("cpu"), {})  # ~1 min on the shared 2-core machine
    assert result.columns == sizing.COLUMNS
    assert {r["part"] for r in result.rows} == {"a", "b", "b-pca", "c", "d", "speed"}
    claims = [r for r in result.rows if r.get("verdict") is not None]
    assert all(r["verdict"] in VERDICTS and r["claim"] for r in claims)
    table = [r for r in result.rows if r["part"] == "a" and r.get("lam") is not None]
    assert [r["lam"] for r in table] == list(sizing.QUICK.lams_a)
    assert all(0 <= r["acc"] <= 1 and 0 <= r["size"] <= sizing.QUICK.start_a for r in table)
    assert table[-1]["size"] == sizing.QUICK.start_a  # lambda = 0 keeps every unit
    widths = [r["width"] for r in result.rows if r["part"] == "b" and r.get("shapiro_w") is not None]
    assert widths == list(sizing.QUICK.widths_b)
    pca = {(r["item"], r["width"]): r["err_quarter"] for r in result.rows if r["part"] == "b-pca" and r.get("width")}
    for w in sizing.QUICK.pca_widths:  # the principal axes explain more with N/4 components
        assert pca[("PCA principal basis", w)] < pca[("PCA journal basis", w)]
    assert sum(r["part"] == "d" and r.get("width") is not None for r in result.rows) == 2
    speed = [r for r in result.rows if r["part"] == "speed"]
    assert len(speed) == 5 and all(r["ms"] > 0 for r in speed)
    text = markdown(result, {}, "evoens bench sizing --quick")
    assert "## What was run" in text and "FashionMNIST" in text
    result.plot(tmp_path / "sizing.png")
    assert (tmp_path / "sizing.png").stat().st_size > 1000
