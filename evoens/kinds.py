"""The provider kinds: what a plugin's ``Provider(kind, name, factory)`` must build, one
``Protocol`` per kind. Read with :mod:`evoens.hookspecs`, this is the whole extension contract.

Plugins contribute providers through ``evoens_register_providers``; configs and the CLI choose
them by name (snake_case, ``family:variant`` for parametrized families such as ``ste:clipped``).
A provider may declare ``options``: a dataclass of its config options (``[trainer.options]``,
``[model.options]``), checked by the config walker before its factory runs; a ``tiny()``
classmethod on it gives the small preset that the conformance tests use.

=================  ============================================  =================================
kind               factory                                       builds
=================  ============================================  =================================
trainer            ``(context: RunContext, options) -> ...``     :class:`Trainer`
searcher           ``(problem, popsize, options, center)``       an EvoTorch ``SearchAlgorithm``
model              ``(input_shape, num_outputs, cfg)``           the initial ``nn.Module``
dataset            ``(cfg: DataConfig, seed: int)``              ``evoens.datasets.DataSplits``
fitness            ``()``                                        :class:`FitnessFn`
reporter           ``(run: Run)``                                :class:`Reporter`
benchmark          ``(quick=, device=, env=)``                   ``evoens.bench.BenchResult``
strategy           ``()``                                        :class:`ForwardStrategy`
optimizer          ``(params, lr=, weight_decay=)``              a ``torch.optim.Optimizer``
activation         ``()``                                        an ``nn.Module``
mutation           the operator itself                           :class:`Mutation`
grad_estimator     ``(**options)``                               :class:`GradEstimator`
weight_generator   ``(context: RunContext, options)``            :class:`WeightGenerator`
=================  ============================================  =================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover - names for the type hints only
    from evoens.candidates import Candidates
    from evoens.phases import Evaluate


@runtime_checkable
class Trainer(Protocol):
    """Drives one generation of a run; the engine (:func:`evoens.engine.run_generation`) calls
    the hooks around it.

    ``step`` proposes candidates and calls ``evaluate(candidates, batch)`` at least once (each
    call runs ``evoens_after_ask`` -> ``evoens_evaluate`` -> ``evoens_after_evaluate`` and
    returns :class:`evoens.phases.Evaluated`), updates itself from the fitness, and returns the
    generation's statistics (at least ``best_fitness``; 0-d tensors are fine, the engine moves
    them to the host once). ``candidates()`` are the models worth testing as the run's final
    result (named; any species). ``state_dict``/``load_state_dict`` hold everything needed to
    continue bit for bit, loadable with ``torch.load(weights_only=True)``. A trainer that evaluates
    in Ray actors with ``trainer.num_actors`` says so with ``ray_actors = True``; a run that sets
    ``num_actors`` with any other trainer is refused, never silently run in one process.
    """

    def step(self, generation: int, evaluate: Evaluate) -> dict[str, Any]: ...
    def candidates(self) -> Candidates: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FitnessFn(Protocol):
    """``(outputs (P, B, C), targets (B,) or (P, B, ...)) -> (P,)``, higher is better, differentiable.

    Evaluated per species, unless the function couples the members (an ensemble's fitness) and
    says so with an attribute ``couples_members = True``: then it gets all P members at once."""

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor: ...


@runtime_checkable
class Reporter(Protocol):
    """A sink for per-generation statistics (numbers only); ``close`` runs once at the end."""

    def report(self, generation: int, stats: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class ForwardStrategy(Protocol):
    """One way to run all members of a population at once (see :mod:`evoens.strategies`):
    ``why_not(template)`` is None when it can run the architecture, else a reason."""

    name: str

    def why_not(self, template: nn.Module) -> str | None: ...


@runtime_checkable
class Mutation(Protocol):
    """A (function-preserving) architecture change: ``op(module, site, options, generator)``
    returns ``(new_module, report)`` without touching ``module``; ``sites(module)`` lists where it
    applies; ``exact`` says whether it preserves the function (in at least eval mode)."""

    name: str
    exact: bool

    def __call__(self, module: nn.Module, site: Any, options: Any, generator: torch.Generator) -> tuple[nn.Module, Any]:
        ...

    def sites(self, module: nn.Module) -> list[Any]: ...


@runtime_checkable
class GradEstimator(Protocol):
    """Per-parameter gradient estimates of a loss at the given weights and batch:
    ``estimate(model, batch=(x, y)) -> {name: (shape of that parameter)}``; descent is ``w - lr * g``."""

    name: str

    def estimate(self, target: Any, params: Mapping[str, Tensor] | None = None, batch: object | None = None,
                 **kwargs: Any) -> dict[str, Tensor]: ...  # fmt: skip


@runtime_checkable
class WeightGenerator(Protocol):
    """A generator of weights (a hypernetwork): ``sample(n)`` returns ``n`` candidates whose
    parameters are a differentiable function of the generator's own ``parameters()``, so a
    trainer can optimise the generator by the candidates' fitness."""

    def sample(self, n: int) -> Candidates: ...
    def parameters(self) -> Any: ...


#: kind -> the Protocol its providers build (kinds built by a plain callable map to None).
KINDS: dict[str, type | None] = {
    "trainer": Trainer,
    "searcher": None,
    "model": nn.Module,
    "dataset": None,
    "fitness": FitnessFn,
    "reporter": Reporter,
    "benchmark": None,
    "strategy": ForwardStrategy,
    "optimizer": torch.optim.Optimizer,
    "activation": nn.Module,
    "mutation": Mutation,
    "grad_estimator": GradEstimator,
    "weight_generator": WeightGenerator,
}
