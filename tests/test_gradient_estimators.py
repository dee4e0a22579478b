"""The gradient trainer with a named ``grad_estimator``: an exact estimator trains exactly like
autograd, NES points where autograd does, a bad name or option is one line, a resumed run draws on,
and a generation calls the same hooks in the same order as with autograd."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from evoens_binary import hooks as binary_hooks
from torch import nn

from evoens import hookimpl
from evoens.candidates import Candidates
from evoens.datasets import Batcher, Split
from evoens.engine import execute
from evoens.errors import ConfigError, RegistryError
from evoens.fitness import neg_cross_entropy
from evoens.gradient import GradientOptions, GradientTrainer, build_estimator, build_gradient
from evoens.phases import Evaluated, standalone
from evoens.testing import HookRecorder, make_plugin_manager, run_inline, tiny_config

BINARY = ("binary", binary_hooks)
REGISTRY = make_plugin_manager(BINARY).registry  # the core and the binary plugin's estimators


class Weights:
    """Keeps the trainer's flat ``(P, D)`` parameters at the start and at the end of a run."""

    initial: torch.Tensor | None = None
    final: torch.Tensor | None = None

    @hookimpl
    def evoens_run_start(self, run: Any) -> None:
        self.initial = run.trainer.population.flat.detach().clone()

    @hookimpl
    def evoens_run_end(self, run: Any) -> None:
        self.final = run.trainer.population.flat.detach().clone()


def _trained(tmp_path: Path, options: dict[str, Any]) -> Weights:
    weights = Weights()
    trainer = {"name": "gradient", "popsize": 4, "strategy": "bmm", "options": options}
    run_inline(tiny_config(generations=4, eval_every=1000, trainer=trainer), tmp_path, BINARY, weights)
    assert weights.initial is not None and weights.final is not None
    return weights


def test_an_exact_estimator_trains_like_autograd(tmp_path: Path) -> None:
    # A plain MLP has no binarizing module: the identity STE's estimate IS the autograd gradient.
    reference = _trained(tmp_path / "autograd", {})
    ste = _trained(tmp_path / "ste", {"grad_estimator": "ste:identity"})
    assert torch.equal(ste.initial, reference.initial)  # type: ignore[arg-type]
    assert (reference.final - reference.initial).abs().max() > 1e-3  # type: ignore[operator]  # it trained
    assert (ste.final - reference.final).abs().max() < 1e-6  # type: ignore[operator]


def _data(n: int = 96, d: int = 6) -> Split:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    return Split(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())


def _trainer(options: GradientOptions, popsize: int = 3) -> GradientTrainer:
    return build_gradient(
        nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)), Batcher(_data(), 0, seed=0), popsize=popsize,
        optimizer="sgd", lr=0.1, device=torch.device("cpu"), seed=7,
        estimator=build_estimator(REGISTRY, options), fitness_fn=neg_cross_entropy,
    )  # fmt: skip


def _fitness(candidates: Candidates, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return neg_cross_entropy(candidates.logits(batch[0]), batch[1])  # (P,)


def _update(trainer: GradientTrainer) -> torch.Tensor:
    before = trainer.population.flat.detach().clone()  # (P, D)
    trainer.step(0, standalone(_fitness))
    return trainer.population.flat.detach() - before  # (P, D), -lr * g with SGD


def test_nes_with_many_samples_points_where_autograd_does() -> None:
    exact = _update(_trainer(GradientOptions()))
    nes = _update(_trainer(GradientOptions("nes", {"popsize": 8000, "sigma": 0.01})))
    cosine = F.cosine_similarity(nes.double(), exact.double(), dim=1)  # (P,) per member
    assert cosine.min() > 0.9, cosine
    assert (nes.norm(dim=1) / exact.norm(dim=1)).sub(1).abs().max() < 0.2  # the scale of a gradient too


def test_each_generation_evaluates_once_and_reports_the_fitness() -> None:
    trainer, calls = _trainer(GradientOptions("ste:identity")), []

    def evaluate(candidates: Candidates, batch: tuple[torch.Tensor, torch.Tensor]) -> Evaluated:
        calls.append(candidates.size)
        return standalone(_fitness)(candidates, batch)

    stats = trainer.step(0, evaluate)
    assert calls == [3]
    expected = _fitness(_trainer(GradientOptions()).candidates(), (_data().x, _data().y))  # the same members
    assert float(stats["best_fitness"]) == pytest.approx(float(expected.max()))


def test_a_member_with_non_finite_fitness_is_left_untouched() -> None:
    trainer = _trainer(GradientOptions("ste:identity"))

    def poisoned(candidates: Candidates, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        fitness = _fitness(candidates, batch)  # (P,)
        return torch.where(torch.arange(len(fitness)) == 1, torch.full_like(fitness, float("nan")), fitness)

    before = trainer.population.flat.detach().clone()
    trainer.step(0, standalone(poisoned))
    after = trainer.population.flat.detach()
    assert torch.equal(before[1], after[1]) and not torch.equal(before[0], after[0])


def test_a_resumed_trainer_draws_on_instead_of_repeating() -> None:
    options = GradientOptions("nes", {"popsize": 20, "sigma": 0.05})
    straight = _trainer(options)
    for generation in range(4):
        straight.step(generation, standalone(_fitness))

    first = _trainer(options)
    for generation in range(2):
        first.step(generation, standalone(_fitness))
    buffer = io.BytesIO()
    torch.save({"trainer": first.state_dict(), "batcher": first.batcher.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = _trainer(options)
    resumed.load_state_dict(state["trainer"])
    resumed.batcher.load_state_dict(state["batcher"])
    for generation in range(2, 4):
        resumed.step(generation, standalone(_fitness))
    assert torch.equal(resumed.population.flat, straight.population.flat)


def test_an_unknown_estimator_name_is_the_registrys_one_line_error(tmp_path: Path) -> None:
    config = tiny_config(trainer={"name": "gradient", "options": {"grad_estimator": "nse"}})
    with pytest.raises(RegistryError, match=r"unknown grad_estimator 'nse' \(did you mean 'nes'\?\); known: .*cdg"):
        run_inline(config, tmp_path, BINARY)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grad_estimator": "nes", "estimator_options": {"popsiz": 10}},
         r"trainer.options.estimator_options: estimator 'nes' has no option\(s\) \['popsiz'\]; its options are"),
        ({"grad_estimator": "nes", "estimator_options": {"popsize": 5}}, "even with antithetic"),
        ({"estimator_options": {"popsize": 10}}, "the autograd gradient takes no options"),
        ({"grad_estimater": "nes"}, r"unknown key 'trainer.options.grad_estimater' \(did you mean 'grad_estimator'"),
        ({"estimator_options": 3}, r"trainer.options.estimator_options = 3: expected a table"),
    ],
)  # fmt: skip
def test_a_bad_estimator_option_is_one_config_error_line(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        build_estimator(REGISTRY, REGISTRY.options("trainer", "gradient", options, "trainer.options"))
    assert "\n" not in str(err.value)


def test_the_hook_order_is_the_autograd_runs(tmp_path: Path) -> None:
    names = []
    for options in ({}, {"grad_estimator": "ste:identity"}):
        pm = make_plugin_manager(BINARY)
        recorder = HookRecorder(pm)
        execute(tiny_config(generations=2, trainer={"name": "gradient", "popsize": 4, "options": options}),
                tmp_path / str(len(names)), pm)  # fmt: skip
        names.append(recorder.names())
    assert names[0] == names[1] and names[0].count("evoens_evaluate") == 2
