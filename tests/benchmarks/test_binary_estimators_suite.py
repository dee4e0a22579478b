"""The binary_estimators suite at tiny sizes: output shape and the properties its numbers must have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from evoens_benchmarks.binary_estimators import STE_SET, ToyConfig, suite, toy_pair
from evoens_benchmarks.binary_handover import HandoverBench

from evoens.bench import BenchResult, run_suite

TINY = ToyConfig(
    dims=(2, 3), num_init=2, batch=256, nes_popsizes=(20, 100, 1000), nes_max_cost=2e4, guided_popsize=20,
    cv_popsizes=(20,),
    lrs=(0.01, 0.1, 0.5),
    handover=HandoverBench(dims=(3,), num_init=1, steps=6, batch=64, eval_batch=256, popsize=20, patience=2),
)  # fmt: skip


@pytest.fixture(scope="module")
def result() -> BenchResult:
    return suite(quick=True, device=torch.device("cpu"), env={}, config=TINY)


def test_rows_cover_every_dim_and_estimator(result: BenchResult) -> None:
    est = [r for r in result.rows if r["section"] == "estimate"]
    # d=2: D=10 -> nes-1000 costs 1e4 <= 2e4; d=3: D=21 -> 2.1e4 > 2e4: skipped
    want2 = {"cdg", "nes-20", "nes-100", "nes-1000", "nes_guided-20", "nes_guided4-20", "nes_cv-20",
             *(n for n, _, _ in STE_SET)}  # fmt: skip
    assert {r["estimator"] for r in est if r["dim"] == 2} == want2
    assert {r["estimator"] for r in est if r["dim"] == 3} == want2 - {"nes-1000"}
    for r in est:
        assert len(r["curve"]) == 3 and r["best_lr"] in TINY.lrs and r["dec@0.1"] == r["curve"][1]
        assert r["best_dec"] == max(r["curve"]) and isinstance(r["raw@0.1"], float)
    train = [r for r in result.rows if r["section"] == "train"]
    methods = {"ste:clipped", "nes-20", "ste_nes", "ste_nes-plain", "init"}
    assert {r["estimator"] for r in train} == {f"train:{m}" for m in methods}


def test_numbers_have_the_expected_properties(result: BenchResult) -> None:
    est = [r for r in result.rows if r["section"] == "estimate"]
    for r in est:
        if r["estimator"].startswith("ste:"):
            # linear output layer: a proper STE's last-layer gradient is exact, as CDG is there
            assert r["cos_W3"] == pytest.approx(1.0, abs=1e-4), r
        assert all(-1.0 - 1e-9 <= r[f"cos_W{k}"] <= 1.0 + 1e-9 for k in (1, 2, 3)), r
    # CDG and the clipped STE decrease the loss at their best lr (mean over points, in-sample)
    assert all(r["best_dec"] > 0 for r in est if r["estimator"] in ("cdg", "ste:clipped"))
    assert {r["dim"]: r["loss0"] for r in est if r["estimator"] == "cdg"}.keys() == {2, 3}
    text = "\n".join(result.notes)
    for heading in ("Loss decrease at lr = 0.1", "Cosine to CDG per layer", "Best lr", "handover",
                    "Comparison with the seed", "Do the open ideas help"):  # fmt: skip
        assert heading in text


def test_run_suite_writes_json_markdown_and_plot(tmp_path: Path, result: BenchResult) -> None:
    payload = run_suite(lambda **kw: result, "binary_estimators", quick=True, out=tmp_path, device=torch.device("cpu"))
    assert json.loads((tmp_path / "binary_estimators.json").read_text())["rows"] == payload["rows"]
    assert (tmp_path / "binary_estimators.png").stat().st_size > 1000
    assert "| d | cdg |" in (tmp_path / "binary_estimators.md").read_text()


def test_teacher_and_student_are_independent_sign_mlps() -> None:
    s, t = toy_pair(4, 0)
    assert [type(m).__name__ for m in s] == ["Linear", "BinaryActivation", "Linear", "BinaryActivation", "Linear"]
    assert not torch.equal(s[0].weight, t[0].weight)
    s2, _ = toy_pair(4, 0)
    assert torch.equal(s[0].weight, s2[0].weight)  # seeded
