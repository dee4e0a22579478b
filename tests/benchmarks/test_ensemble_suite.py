"""The ``ensemble`` suite in quick mode (digits, no files): its rows, claims, verdicts and plot."""

from __future__ import annotations

from pathlib import Path

import torch
from evoens_benchmarks import ensemble
from evoens_benchmarks.hooks import SUITES

from evoens.bench import markdown

VERDICTS = {"met", "not met", "partly met", "inconclusive"}


def test_quick_suite_rows_verdicts_and_plot(tmp_path: Path) -> None:
    assert "ensemble" in SUITES
    result = ensemble.suite(True, torch.device("cpu"), {"sgemm_gflops": 1.0})  # ~3 s on an idle core
    assert result.columns == ensemble.COLUMNS
    parts = [r["part"] for r in result.rows]
    assert set(parts) == {"a", "b", "c", "d", "speed"}
    claims = [r for r in result.rows if r.get("verdict") is not None]
    assert all(r["verdict"] in VERDICTS and r["claim"] for r in claims)
    assert {r["part"] for r in claims} == {"a", "b", "c", "d", "speed"}
    # (a): three runs (single, sum, mean) at every checkpoint, accuracies in [0, 1]
    curve = [r for r in result.rows if r["part"] == "a" and r.get("step") and "train_acc" in r and not r.get("claim")]
    assert len(curve) == 3 * ensemble.QUICK.checkpoints
    assert all(0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1 for r in curve)
    # (b): ensemble, its members, wide (lambda = 1), lambda = 0.5 at about equal parameters
    b = [r for r in result.rows if r["part"] == "b" and "params" in r and not r["item"].startswith("  its members")]
    params = [r["params"] for r in b]
    assert len(params) == 3 and max(params) / min(params) < 1.15
    # (c): at least 20 single models, ensembles with a CI around their ER
    singles = [r for r in result.rows if r["part"] == "c" and r.get("members") == 1]
    ens = [r for r in result.rows if r["part"] == "c" and r.get("er_low") is not None]
    assert len(singles) >= 20 and ens
    assert all(r["er_low"] <= r["er"] <= r["er_high"] for r in ens)
    # (d): M = 1, 2, 4, 8, 16; at M = 1 the ensemble is its member
    d = {r["item"]: r for r in result.rows if r["part"] == "d"}
    assert {f"ensemble M={m}" for m in (1, 2, 4, 8, 16)} <= set(d)
    assert abs(d["ensemble M=1"]["nll"] - d["  members of M=1 (mean)"]["nll"]) < 1e-9
    # speed: the three training ways and the metric loops, with ratios
    speed = [r for r in result.rows if r["part"] == "speed"]
    assert len(speed) == 7 and all(r["ms"] > 0 for r in speed)
    text = markdown(result, {}, "evoens bench ensemble --quick")
    for header in ("## (a)", "## (b)", "## (c)", "## (d)", "## speed", "fitted line", "R²"):
        assert header in text
    assert text.count("**") >= 2 * len(claims) - 2  # a bold verdict per claim line
    result.plot(tmp_path / "ensemble.png")
    assert (tmp_path / "ensemble.png").stat().st_size > 1000
