"""Both trainers behind the engine: gradient == P separate trainings; evolution == EvoTorch's
per-solution path; every searcher provider runs; NaN fitness never crashes a run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from evotorch import Problem
from evotorch.algorithms import SNES
from evotorch.neuroevolution.net import fill_parameters
from torch import nn

from evoens import hookimpl
from evoens.datasets import Batcher, Split
from evoens.evolution import PopulationProblem
from evoens.fitness import neg_cross_entropy
from evoens.gradient import build_gradient
from evoens.phases import standalone
from evoens.testing import make_plugin_manager, run_inline, tiny_config


def _data(n: int = 96, d: int = 6, c: int = 3) -> Split:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    return Split(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())


def _template() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def _fitness(candidates: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return neg_cross_entropy(candidates.logits(batch[0]), batch[1])


@pytest.mark.parametrize("strategy", ["loop", "vmap", "bmm"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_gradient_trainer_equals_p_separately_trained_networks(strategy: str, optimizer: str) -> None:
    split, steps, lr = _data(), 15, 0.05
    trainer = build_gradient(
        _template(),
        Batcher(split, 32, seed=3),
        popsize=4,
        optimizer=optimizer,
        lr=lr,
        device=torch.device("cpu"),
        seed=7,
        strategy=strategy,
    )
    initial = trainer.population.flat.detach().clone()  # (P, D)
    for generation in range(steps):
        trainer.step(generation, standalone(_fitness))

    for i in range(4):
        net = trainer.population.with_flat(initial[i : i + 1]).member(0)
        opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer](net.parameters(), lr=lr)
        batcher = Batcher(split, 32, seed=3)
        for _ in range(steps):
            x, y = batcher.next()
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        alone = torch.cat([p.detach().flatten() for p in net.parameters()])
        assert torch.allclose(trainer.population.flat[i].detach(), alone, atol=1e-5), i


def test_gradient_trainer_leaves_a_nan_member_untouched_and_trains_the_rest() -> None:
    split = _data()

    def poisoned(candidates: Any, batch: Any) -> torch.Tensor:
        fitness = _fitness(candidates, batch)
        return torch.where(torch.arange(len(fitness)) == 1, torch.full_like(fitness, float("nan")), fitness)

    trainer = build_gradient(_template(), Batcher(split, 0, seed=0), popsize=3, device=torch.device("cpu"), seed=0)
    before = trainer.population.flat.detach().clone()
    stats = trainer.step(0, standalone(poisoned))
    after = trainer.population.flat.detach()
    assert torch.isfinite(stats["best_fitness"]) and torch.isfinite(stats["worst_fitness"])
    assert torch.equal(before[1], after[1]) and not torch.equal(before[0], after[0])


class StockProblem(Problem):
    """EvoTorch's NE path: fill ONE network per solution, in a Python loop (the reference)."""

    def __init__(self, net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], seed: int) -> None:
        self.net, self.batch = copy.deepcopy(net), batch
        super().__init__(
            "max", solution_length=sum(p.numel() for p in net.parameters()), initial_bounds=(-0.1, 0.1), seed=seed
        )

    def _evaluate(self, solution: Any) -> None:
        fill_parameters(self.net, solution.values)
        with torch.no_grad():
            solution.set_evals(-F.cross_entropy(self.net(self.batch[0]), self.batch[1]))


def test_batched_problem_follows_the_same_search_as_evotorchs_per_solution_path() -> None:
    split, template = _data(), _template()
    batch = (split.x, split.y)
    center = torch.cat([p.detach().flatten() for p in template.parameters()])
    ours = PopulationProblem(template, neg_cross_entropy, seed=5)
    ours.batch = batch
    stock = StockProblem(template, batch, seed=5)
    a = SNES(ours, popsize=16, stdev_init=0.05, center_init=center)
    b = SNES(stock, popsize=16, stdev_init=0.05, center_init=center)
    for _ in range(5):
        a.step()
        b.step()
        assert torch.allclose(a.population.evals, b.population.evals, atol=1e-5)
    assert torch.allclose(a.status["center"], b.status["center"], atol=1e-5)


@pytest.mark.parametrize("searcher", make_plugin_manager().registry.names("searcher"))
def test_every_searcher_improves_on_digits(tmp_path: Path, searcher: str) -> None:
    config = tiny_config(
        generations=12,
        eval_every=12,
        reporters=["jsonl"],
        trainer={"searcher": searcher, "popsize": 16},
        data={"batch_size": 0},
        model={"hidden": [8] if searcher != "xnes" else [2]},
    )
    summary = run_inline(config, tmp_path)
    assert summary["generations"] == 12
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # on the whole training split (batch_size 0) the population's mean fitness must rise
    assert lines[-1]["mean_fitness"] > lines[0]["mean_fitness"] + 0.01
    assert summary["test_accuracy"] > 0.1  # ten classes: chance  # ten classes: chance is 0.1


def test_nan_fitness_gets_the_worst_value_and_is_counted(tmp_path: Path) -> None:
    class HalfBroken:
        @hookimpl(wrapper=True)
        def evoens_evaluate(self) -> Any:
            evaluation = yield  # the Evaluation (fitness, outputs) of the core's implementation
            fitness = evaluation.fitness
            nan = torch.full_like(fitness, float("nan"))
            return evaluation._replace(fitness=torch.where(torch.arange(len(fitness)) % 2 == 0, nan, fitness))

    lines: list[dict[str, Any]] = []

    class Collect:
        @hookimpl
        def evoens_report(self, stats: dict[str, Any]) -> None:
            lines.append(stats)

    summary = run_inline(tiny_config(generations=3), tmp_path, HalfBroken(), Collect())
    assert [s["nonfinite"] for s in lines] == [4, 4, 4]  # popsize 8, every other one NaN
    assert all(s["worst_fitness"] <= s["median_fitness"] for s in lines)
    assert summary["generations"] == 3


def test_a_failing_reporter_is_reported_and_the_run_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        @hookimpl
        def evoens_report(self) -> None:
            raise OSError("disk full")

    summary = run_inline(tiny_config(generations=2), tmp_path, ("broken", Broken()))
    assert summary["generations"] == 2
    assert summary["reporter_errors"][0].startswith("broken: OSError")
    assert caplog.text.count("plugin 'broken' failed in evoens_report") == 1  # once, then it is off


def test_a_failing_core_hook_stops_the_run_naming_the_plugin(tmp_path: Path) -> None:
    from evoens.errors import PluginError

    class Broken:
        @hookimpl
        def evoens_run_start(self) -> None:
            raise ValueError("bad state")

    with pytest.raises(PluginError, match="plugin 'broken' failed in evoens_run_start: ValueError: bad state"):
        run_inline(tiny_config(), tmp_path, ("broken", Broken()))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "bad state" in summary["error"]


