"""The ensemble plugin in a run: the example config reports the ensemble per generation and in the
summary (computed from the very outputs the fitness came from), resumes exactly, and a wrong
[extra.ensemble] key is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from evoens_ensemble.judge import judge
from evoens_ensemble.metrics import ensemble_metrics

from evoens.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "ensemble-digits.toml"
FAST = ["--set", "generations=6", "--set", "eval_every=3", "--set", "extra.ensemble.every=2"]


def _run(out: Path, *extra: str) -> dict:
    assert main(["run", str(EXAMPLE), "--out", str(out), *FAST, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_the_example_reports_the_ensemble_each_generation_and_in_the_summary(tmp_path: Path) -> None:
    summary = _run(tmp_path / "run")
    ens = summary["ensemble"]
    assert ens["combiner"] == "mean_prob" and len(ens["members"]) == 8
    for split in ("val", "test", "best_member_val", "best_member_test"):
        assert set(ens[split]) == {"accuracy", "nll", "brier", "ece"}
        assert 0.0 <= ens[split]["accuracy"] <= 1.0 and 0.0 <= ens[split]["brier"] <= 2.0
    assert ens["best_member_test"]["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [("ensemble_batch_nll" in row) for row in lines] == [True, False, True, False, True, False]


def test_the_summary_equals_metrics_of_the_stacked_logits(tmp_path: Path) -> None:
    from evoens.config import load_config
    from evoens.run import build_run
    from evoens.testing import make_plugin_manager

    run = build_run(load_config(EXAMPLE, ["generations=1"]), tmp_path, make_plugin_manager(entry_points=True))
    candidates = run.trainer.candidates()
    found = judge(candidates, run.data.val, run.data.test, "geo_mean")
    direct = ensemble_metrics(candidates.logits(run.data.test.x), run.data.test.y, "geo_mean")
    assert found["test"]["nll"] == pytest.approx(float(direct["nll"]), rel=1e-6)
    assert found["test"]["ece"] == pytest.approx(float(direct["ece"]), abs=1e-9)


def test_an_ensemble_run_resumes_exactly(tmp_path: Path) -> None:
    keep = ["--set", "checkpoint.every=1", "--set", "checkpoint.keep=10", "--set", "trainer.strategy=bmm"]
    ref = _run(tmp_path / "ref", *keep)
    shutil.copytree(tmp_path / "ref", tmp_path / "cut")
    (tmp_path / "cut" / "summary.json").unlink()
    for late in ("gen-000005.pt", "gen-000006.pt"):
        (tmp_path / "cut" / "checkpoints" / late).unlink()
    assert main(["resume", str(tmp_path / "cut")]) == 0
    resumed = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert resumed["ensemble"] == ref["ensemble"] and resumed["final_stats"] == ref["final_stats"]


def test_a_wrong_ensemble_setting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(EXAMPLE), "--out", str(tmp_path / "x"), "--set", "extra.ensemble.combinr=vote"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'extra.ensemble.combinr' (did you mean 'combiner'?)" in err


def test_ensemble_fitness_trains_through_the_gradient_trainer(tmp_path: Path) -> None:
    summary = _run(tmp_path / "joint", "--set", "trainer.fitness=ensemble_joint:mean_prob")
    assert torch.isfinite(torch.tensor(summary["best_fitness"])) and summary["ensemble"]["test"]["accuracy"] > 0.3
