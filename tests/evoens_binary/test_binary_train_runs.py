"""Binarized models trained through the ordinary run machinery: STE gradient, evolution over the
latent weights, exact resume and the example configs (the binary_mnist suite: tests/benchmarks/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from evoens_binary import hooks

from evoens.config import load_config
from evoens.engine import resume
from evoens.testing import make_plugin_manager, run_inline, tiny_config

PLUGIN = ("binary", hooks)
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("binary-*.toml"))


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("estimator", ["clipped", "identity", "approxsign", "ste:swishsign", "steep"])
def test_gradient_training_with_an_ste_learns_digits(estimator: str, tmp_path: Path) -> None:
    config = tiny_config(
        generations=120,
        eval_every=120,
        data={"batch_size": 64},
        model={"name": "binary_mlp", "hidden": [32, 32], "options": {"ste": estimator}},
        trainer={"name": "gradient", "popsize": 1, "lr": 0.01},
    )
    summary = run_inline(config, tmp_path, PLUGIN)
    assert summary["test_accuracy"] > 0.75  # chance is 0.1


def test_gradient_training_of_the_binary_cnn_learns_digits(tmp_path: Path) -> None:
    config = tiny_config(
        generations=150,
        eval_every=150,
        data={"batch_size": 64},
        model={"name": "binary_cnn", "options": {"channels": [8, 16], "ste": "approxsign"}},
        trainer={"name": "gradient", "popsize": 1, "lr": 0.01},
    )
    summary = run_inline(config, tmp_path, PLUGIN)
    assert summary["test_accuracy"] > 0.6  # chance is 0.1


@pytest.mark.parametrize("searcher", ["pgpe", "snes"])
def test_evolution_over_latent_weights_improves_fitness(searcher: str, tmp_path: Path) -> None:
    options = {"pgpe": {"center_learning_rate": 0.05, "stdev_init": 0.1}, "snes": {"stdev_init": 0.1}}[searcher]
    config = tiny_config(
        generations=100,
        eval_every=100,
        reporters=["jsonl"],
        data={"batch_size": 0},  # the whole training split: fitness comparable across generations
        model={"name": "binary_mlp", "hidden": [16, 16]},
        trainer={"name": "evolution", "searcher": searcher, "popsize": 32, "searcher_options": options},
    )
    summary = run_inline(config, tmp_path, PLUGIN)
    metrics = _metrics(tmp_path)
    first, last = metrics[0]["mean_fitness"], metrics[-1]["mean_fitness"]
    assert last > first + 0.5, (first, last)  # cross-entropy 2.5 -> about 1.6 on this seed
    assert summary["test_accuracy"] > 0.35


@pytest.mark.slow
def test_xnes_full_covariance_over_a_small_binary_net_improves_fitness(tmp_path: Path) -> None:
    """XNES adapts a D x D covariance (D = 714 here; ~20 s), so only small binarized nets suit it."""
    config = tiny_config(
        generations=60,
        eval_every=60,
        reporters=["jsonl"],
        data={"batch_size": 0},
        model={"name": "binary_mlp", "hidden": [8, 8]},
        trainer={"name": "evolution", "searcher": "xnes", "popsize": 32, "searcher_options": {"stdev_init": 0.1}},
    )
    summary = run_inline(config, tmp_path, PLUGIN)
    metrics = _metrics(tmp_path)
    assert metrics[-1]["mean_fitness"] > metrics[0]["mean_fitness"] + 0.4
    assert summary["test_accuracy"] > 0.3


def test_binary_gradient_run_resumes_exactly(tmp_path: Path) -> None:
    def config(generations: int) -> Any:
        return tiny_config(
            generations=generations,
            data={"batch_size": 32},
            model={"name": "binary_mlp", "hidden": [16, 16], "options": {"ste": "approxsign"}},
            trainer={"name": "gradient", "popsize": 2, "lr": 0.01},
            checkpoint={"every": 3},
        )

    whole = run_inline(config(6), tmp_path / "whole", PLUGIN)
    run_inline(config(3), tmp_path / "half", PLUGIN)
    resumed = resume(tmp_path / "half", make_plugin_manager(PLUGIN), ["generations=6"])
    for key in ("best_fitness", "test_accuracy", "val_accuracy", "final_stats", "selected"):
        assert resumed[key] == whole[key], key


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates_and_runs(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    assert config.model.name in ("binary_mlp", "binary_cnn") and config.data.name == "mnist"
    registry = make_plugin_manager(PLUGIN).registry
    template = registry.create("model", config.model.name, (1, 28, 28), 10, config.model)
    assert sum(p.numel() for p in template.parameters()) > 0
    # the same config, two generations on the offline digits
    short = load_config(path, ["generations=2", "eval_every=1", "reporters=[]", "data.name=digits"])
    summary = run_inline(short, tmp_path, PLUGIN)
    assert summary["generations"] == 2 and 0.0 <= summary["test_accuracy"] <= 1.0


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"binary-mlp-ste.toml", "binary-mlp-pgpe.toml"}
