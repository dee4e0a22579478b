"""The one place where a generation's phases meet pluggy, EvoTorch's hooks included.

Trainers are pure torch/EvoTorch code: they call a :class:`GenerationHooks` object at each
phase (ask/variation, evaluate, tell) and never import pluggy. :class:`PluggyHooks` forwards
those calls to the plugin manager; :func:`attach_searcher` wires an EvoTorch searcher's own
hook lists (``before_eval_hook``, ``after_eval_hook``, ``after_step_hook``) to the same calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch

from evoens.errors import PluginError
from evoens.population import Population

if TYPE_CHECKING:
    from evoens.run import Run

Batch = tuple[torch.Tensor, torch.Tensor]
Evaluator = Callable[[Population, Batch], torch.Tensor]


class GenerationHooks(Protocol):
    """What a trainer calls during one generation."""

    def after_ask(self, values: torch.Tensor) -> None: ...
    def evaluate(self, population: Population, batch: Batch) -> torch.Tensor: ...
    def after_evaluate(self, fitness: torch.Tensor) -> dict[str, Any]: ...
    def after_tell(self, stats: dict[str, Any]) -> dict[str, Any]: ...


def _merge(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for extra in reversed(results):  # pluggy answers newest plugin first: apply in registration order
        merged.update(extra or {})
    return merged


class PluggyHooks:
    """:class:`GenerationHooks` over a run's plugin manager. During a trainer's step,
    ``run.generation`` is the index of the generation in progress (the loop advances it after)."""

    def __init__(self, run: Run) -> None:
        self.run = run

    @property
    def generation(self) -> int:
        return self.run.generation

    def after_ask(self, values: torch.Tensor) -> None:
        self.run.hook.evoens_after_ask(run=self.run, generation=self.generation, values=values)

    def evaluate(self, population: Population, batch: Batch) -> torch.Tensor:
        fitness = self.run.hook.evoens_evaluate(run=self.run, population=population, batch=batch)
        if fitness is None:
            raise PluginError("no plugin implements evoens_evaluate: is the 'core' plugin disabled?")
        return fitness

    def after_evaluate(self, fitness: torch.Tensor) -> dict[str, Any]:
        hook = self.run.hook.evoens_after_evaluate
        return _merge(hook(run=self.run, generation=self.generation, fitness=fitness))

    def after_tell(self, stats: dict[str, Any]) -> dict[str, Any]:
        hook = self.run.hook.evoens_after_tell
        return _merge(hook(run=self.run, generation=self.generation, stats=stats))


class NoHooks:
    """:class:`GenerationHooks` that only evaluates: for trainers used without a run."""

    def __init__(self, evaluate: Evaluator) -> None:
        self.evaluate = evaluate  # type: ignore[assignment]

    def after_ask(self, values: torch.Tensor) -> None:
        return None

    def after_evaluate(self, fitness: torch.Tensor) -> dict[str, Any]:
        return {}

    def after_tell(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {}


def attach_searcher(
    searcher: Any, hooks: GenerationHooks, stats: Callable[[], dict[str, Any]], extras: dict[str, Any]
) -> None:
    """Forward an EvoTorch searcher's hooks to ``hooks``.

    EvoTorch calls ``before_eval_hook(batch)`` before each evaluation (-> after_ask, on the
    values about to be evaluated), ``after_eval_hook(batch)`` after it (-> after_evaluate) and
    ``after_step_hook()`` after the update (-> after_tell, given ``stats()`` and the extras so
    far). Statistics the plugins return are collected in ``extras``.
    """
    problem = searcher.problem
    problem.before_eval_hook.append(lambda batch: hooks.after_ask(batch.access_values(keep_evals=True)))
    problem.after_eval_hook.append(
        lambda batch: extras.update(hooks.after_evaluate(batch.evals[:, 0].as_subclass(torch.Tensor)))
    )
    searcher.after_step_hook.append(lambda: extras.update(hooks.after_tell({**stats(), **extras})))
