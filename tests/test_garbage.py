"""Garbage is never "finished": non-finite fitness never counts as a best value, a run without a
finite member stops as "diverged" (exit 1), and values that cannot work are refused up front in
one line (exit 2): lr and stdevs that are not finite and > 0, unknown or mistyped searcher options,
PGPE with an odd popsize, a population larger than memory."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from evotorch.algorithms import CEM, CMAES, PGPE, SNES

import evoens.builtins.core
import evoens.memory
from evoens import hookimpl
from evoens.builtins.searchers import GA_OPTIONS, accepted_options, check_options
from evoens.builtins.watchdog import Diverged
from evoens.cli import main
from evoens.config import ConfigError
from evoens.fitness import fitness_stats, sanitize
from evoens.memory import check_population_fits
from evoens.testing import run_inline, tiny_config

CONFIG = """
seed = 1
generations = 10
eval_every = 1000
reporters = ["jsonl"]
[data]
name = "digits"
batch_size = 128
[model]
hidden = [8]
[trainer]
searcher = "snes"
popsize = 8
"""

ALL_NAN = """
import torch
from evoens import hookimpl

@hookimpl(wrapper=True)
def evoens_evaluate():
    evaluation = yield
    return evaluation._replace(fitness=evaluation.fitness * float("nan"))  # differentiable NaN
"""


class AllNaN:
    @hookimpl(wrapper=True)
    def evoens_evaluate(self) -> Any:
        evaluation = yield
        return evaluation._replace(fitness=evaluation.fitness * float("nan"))  # differentiable NaN


class HalfNaN:
    @hookimpl(wrapper=True)
    def evoens_evaluate(self) -> Any:
        evaluation = yield
        fitness = evaluation.fitness
        nan = torch.full_like(fitness, float("nan"))
        return evaluation._replace(fitness=torch.where(torch.arange(len(fitness)) % 2 == 0, nan, fitness))


class Collect:
    def __init__(self) -> None:
        self.stats: list[dict[str, Any]] = []

    @hookimpl
    def evoens_report(self, stats: dict[str, Any]) -> None:
        self.stats.append(stats)


def _run(tmp_path: Path, *args: str, text: str = CONFIG) -> int:
    config = tmp_path / "run.toml"
    config.write_text(text)
    return main(["run", str(config), "--out", str(tmp_path / "out"), *args])


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("evoens: error: ")]
    assert len(errors) == 1, err
    return errors[0]


# --- non-finite fitness is never a best value -----------------------------------------------


def test_no_finite_value_is_minus_infinity_never_zero() -> None:
    nan = torch.full((4,), float("nan"))
    clean, bad = sanitize(nan)
    assert int(bad) == 4 and torch.equal(clean, torch.full((4,), float("-inf")))
    assert all(v == float("-inf") for v in fitness_stats(nan).values())


def test_statistics_leave_non_finite_values_out() -> None:
    fitness = torch.tensor([float("nan"), -1.0, float("inf"), -3.0, float("-inf"), -2.0])
    stats = {k: float(v) for k, v in fitness_stats(fitness).items()}
    assert stats == {"best_fitness": -1.0, "mean_fitness": -2.0, "median_fitness": -2.0, "worst_fitness": -3.0}
    finite = torch.randn(7)
    assert float(fitness_stats(finite)["median_fitness"]) == float(finite.median())
    clean, bad = sanitize(fitness)
    assert int(bad) == 3 and clean.tolist() == [-3.0, -1.0, -3.0, -3.0, -3.0, -2.0]  # the worst finite


@pytest.mark.parametrize("trainer", [{"searcher": "snes"}, {"searcher": "pgpe"}, {"name": "gradient"}])
def test_an_all_nan_run_diverges_and_never_reports_a_best(tmp_path: Path, trainer: dict[str, Any]) -> None:
    collect = Collect()
    with pytest.raises(Diverged, match="no member had a finite fitness in generations 0-2") as err:
        run_inline(tiny_config(generations=10, eval_every=1000, trainer=trainer), tmp_path, AllNaN(), collect)
    assert "trainer.lr" in str(err.value) and "stdev_init" in str(err.value) and "fitness plugin" in str(err.value)
    assert [s["best_fitness"] for s in collect.stats] == [float("-inf")] * 3  # never 0.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["generations"] == 3


def test_a_diverged_run_is_one_line_and_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "all_nan.py").write_text(ALL_NAN)
    assert _run(tmp_path, "--plugins-dir", str(plugins)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("evoens: error: ")]
    assert len(errors) == 1 and "the run diverged" in errors[0] and "check trainer.lr" in errors[0], err
    warnings = [line for line in err.splitlines() if "no member has a finite fitness" in line]
    assert [w.split(":")[2].strip() for w in warnings] == ["generation 0", "generation 1"]  # a warning each
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    bests = [m["best_fitness"] for m in metrics]  # -inf, or null where the reporter writes strict JSON
    assert len(bests) == 3 and all(b is None or b == float("-inf") for b in bests)


def test_diverge_after_is_configurable_and_the_last_generation_counts(tmp_path: Path) -> None:
    with pytest.raises(Diverged, match="generation 0 "):
        run_inline(tiny_config(generations=5, watchdog={"diverge_after": 1}), tmp_path / "a", AllNaN())
    with pytest.raises(Diverged, match="generations 0-1 "):  # fewer generations than diverge_after
        run_inline(tiny_config(generations=2), tmp_path / "b", AllNaN())
    summary = run_inline(tiny_config(generations=4, watchdog={"diverge_after": 0}), tmp_path / "c", AllNaN())
    assert summary["status"] == "finished" and summary["best_fitness"] == float("-inf")  # the watch is off


def test_a_partly_nan_population_is_one_warning_and_the_run_finishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collect = Collect()
    with caplog.at_level(logging.WARNING, logger="evoens"):
        summary = run_inline(tiny_config(generations=4, eval_every=1000), tmp_path, HalfNaN(), collect)
    assert summary["status"] == "finished" and summary["generations"] == 4
    warned = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warned) == 1 and "generation 0: 4 evaluations gave a non-finite fitness" in warned[0]
    assert "popsize 8" in warned[0]
    assert all(math.isfinite(s["best_fitness"]) and s["nonfinite"] == 4 for s in collect.stats)


# --- values that cannot work are refused up front --------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.lr=inf", "trainer.lr = inf: must be > 0 and finite"),
        ("trainer.lr=nan", "trainer.lr = nan: must be > 0 and finite"),
        ("trainer.searcher_options.stdev_init=0", "trainer.searcher_options.stdev_init = 0: must be > 0 and finite"),
        ("trainer.searcher_options.stdev_init=inf", "stdev_init = inf: must be > 0 and finite"),
        ("trainer.searcher_options.center_learning_rate=0", "center_learning_rate = 0: must be > 0 and finite"),
        ("trainer.searcher_options.symmetric='yes'", "symmetric = 'yes': expected true or false"),
        ("trainer.searcher_options.ranking_method='centred'", "(did you mean 'centered'?)"),
        ("watchdog.diverge_after=-1", "watchdog.diverge_after = -1: must be >= 0"),
    ],
)
def test_values_that_cannot_work_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    assert _run(tmp_path, "--set", "trainer.searcher='pgpe'", "--set", override) == 2
    assert expected in _error_line(capsys)


def test_pgpe_needs_an_even_popsize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "--set", "trainer.searcher='pgpe'", "--set", "trainer.popsize=7") == 2
    line = _error_line(capsys)
    assert "trainer.popsize = 7" in line and "even popsize" in line and "symmetric = false" in line
    summary = run_inline(
        tiny_config(trainer={"searcher": "pgpe", "popsize": 7, "searcher_options": {"symmetric": False}}), tmp_path
    )
    assert summary["status"] == "finished"


def test_an_unknown_searcher_option_says_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "--set", "trainer.searcher_options.stdev_int=0.1") == 2
    line = _error_line(capsys)
    assert "unknown key 'trainer.searcher_options.stdev_int' (did you mean 'stdev_init'?)" in line
    accepted = line.split("accepts: ")[1].split(", ")
    assert {"stdev_init", "center_learning_rate", "noise_table"} <= set(accepted)
    assert not {"problem", "popsize", "center_init"} & set(accepted)  # evoens sets those itself
    assert _run(tmp_path, "--set", "trainer.searcher_options.popsize=4") == 2
    assert "set trainer.popsize instead" in _error_line(capsys)
    assert _run(tmp_path, "--set", "trainer.searcher='ga'", "--set", "trainer.searcher_options.tournament=2") == 2
    assert "(did you mean 'tournament_size'?)" in _error_line(capsys)


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (PGPE, {"center_learning_rate": 0.006, "stdev_learning_rate": 0.089, "stdev_init": 0.039, "optimizer": "adam"}),
        (SNES, {"stdev_init": [0.05, 0.1], "ranking_method": "centered", "noise_table": False}),
        (CEM, {"parenthood_ratio": 0.5, "stdev_init": 0.1, "noise_table": 4096}),
        (CMAES, {"stdev_init": 0.1, "separable": True, "c_m": 1}),
    ],
)
def test_valid_searcher_options_pass(cls: type, options: dict[str, Any]) -> None:
    check_options(cls.__name__.lower(), accepted_options(cls), options)
    check_options("ga", GA_OPTIONS, {"mutation_stdev": 0.05, "tournament_size": 2, "elitist": False})


# --- a population larger than memory -----------------------------------------------------------


@pytest.mark.parametrize("trainer", [{"name": "gradient"}, {"name": "evolution", "searcher": "pgpe"}])
def test_a_population_larger_than_memory_is_one_line_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, trainer: dict[str, Any]
) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the trainer was built")

    monkeypatch.setattr(evoens.builtins.core, "build_gradient", never)
    monkeypatch.setattr(evoens.builtins.core, "build_evolution", never)
    sets = [f"trainer.{k}={json.dumps(v)}" for k, v in trainer.items()]
    args = [a for s in [*sets, "trainer.popsize=100000000", "model.hidden=[64]"] for a in ("--set", s)]
    assert _run(tmp_path, *args) == 2
    line = _error_line(capsys)
    assert "trainer.popsize = 100000000: the population needs about" in line
    assert "100,000,000 members x 4,810 parameters x 4 bytes x" in line  # digits 64-64-10
    assert "lower trainer.popsize" in line


def test_the_estimate_counts_every_copy_a_trainer_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evoens.memory, "available_bytes", lambda device: 1_000_000)
    template = torch.nn.Linear(9, 10)  # 100 parameters: 400 bytes a copy
    copies = {"weights": 1, "gradients": 1, "optimizer states": 2}
    check_population_fits(625, template, torch.device("cpu"), copies)  # exactly 1 MB
    with pytest.raises(ConfigError) as err:
        check_population_fits(626, template, torch.device("cpu"), copies)
    message = str(err.value)
    assert "626 members x 100 parameters x 4 bytes x 4 copies: weights, gradients, 2 optimizer states" in message
    assert "at most about 625 fit" in message and "\n" not in message
    monkeypatch.setattr(evoens.memory, "available_bytes", lambda device: None)
    check_population_fits(10**12, template, torch.device("cpu"), copies)  # unknown memory: no guess
