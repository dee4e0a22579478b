"""The gradient trainer: P independent networks trained together by one torch optimizer.

The population's flat ``(P, D)`` parameters are a single leaf tensor. The loss is the SUM of
the members' losses, so the gradient of member i's slice is exactly the gradient of member i's
own loss; with an element-wise optimizer (SGD, Adam, AdamW) one batched step therefore equals
P separate training steps. (Deep ensembles, Lakshminarayanan et al., NeurIPS 2017, train their
members exactly like this, independently from different initialisations.)

``[trainer.options]`` (:class:`GradientOptions`) picks where the gradient comes from. The default,
``grad_estimator = "autograd"``, is the one ``backward()`` above. Any other name is a
``grad_estimator`` provider (the binary plugin's ``ste:NAME``, ``nes``, ``cdg``, ...), built once
from ``estimator_options``: each generation still evaluates the candidates once through the phases
(every hook sees them, the fitness is reported), then asks the estimator, member by member, for
the gradient of that member's loss ``-fitness`` on the same batch at its current weights, writes
the estimates into the members' slices of the leaf's ``.grad`` and takes one optimizer step.
Estimators run per member (P calls a generation); a sampling estimator such as NES evaluates the
perturbations of one member as one batched population. A member whose fitness or estimate is not
finite gets a zero gradient, as in the autograd path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from evoens.candidates import Candidates
from evoens.config import ConfigError, option
from evoens.datasets import Batcher
from evoens.fitness import fitness_stats
from evoens.kinds import FitnessFn, GradEstimator
from evoens.phases import Evaluate
from evoens.population import Population

if TYPE_CHECKING:  # pragma: no cover - names for the type hints only
    from evoens.registry import Registry

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}

AUTOGRAD = "autograd"  # the built-in gradient: one backward() through the batched population


@dataclass
class GradientOptions:
    """``[trainer.options]`` of ``gradient``."""

    grad_estimator: str = option(AUTOGRAD, "'autograd' (one backward pass) or a grad_estimator provider name")
    estimator_options: dict[str, Any] = option({}, "keywords of that estimator, e.g. {popsize = 200, sigma = 0.01}")

    @classmethod
    def tiny(cls) -> GradientOptions:
        """A run of seconds, for conformance tests."""
        return cls()


def build_estimator(registry: Registry, options: GradientOptions) -> GradEstimator | None:
    """The estimator ``options`` name (None for ``autograd``); any mistake is one line: an unknown
    name is the registry's error, a bad keyword a :class:`ConfigError` naming the key."""
    key = "trainer.options.estimator_options"
    if options.grad_estimator == AUTOGRAD:
        if options.estimator_options:
            raise ConfigError(
                f"{key} = {options.estimator_options!r}: the autograd gradient takes no options; "
                "set trainer.options.grad_estimator to an estimator"
            )
        return None
    provider = registry.get("grad_estimator", options.grad_estimator)  # unknown: lists the known names
    try:
        return provider.factory(**options.estimator_options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: {' '.join(str(err).split())}") from None


class FitnessLoss:
    """A fitness as the loss an estimator descends: ``(P, B, ...)`` outputs, targets -> ``(P,)``."""

    def __init__(self, fitness_fn: FitnessFn) -> None:
        self.fitness_fn = fitness_fn

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return -self.fitness_fn(outputs, targets)  # (P,)


class GradientTrainer:
    """One generation = one optimizer step on one minibatch for all P members."""

    def __init__(
        self,
        population: Population,
        optimizer: torch.optim.Optimizer,
        batcher: Batcher,
        estimator: GradEstimator | None = None,
        fitness_fn: FitnessFn | None = None,
    ) -> None:
        if estimator is not None and fitness_fn is None:
            raise ValueError("a gradient estimator needs the fitness_fn whose negation it differentiates")
        self.population = population
        self.optimizer = optimizer
        self.batcher = batcher
        self.estimator = estimator
        self.loss_fn = None if fitness_fn is None else FitnessLoss(fitness_fn)

    def step(self, generation: int, evaluate: Evaluate) -> dict[str, Any]:
        pop = self.population
        x, y = (t.to(pop.flat.device, non_blocking=True) for t in self.batcher.next())
        if self.estimator is not None:
            return self._estimated_step(x, y, evaluate)
        fitness, clean, _ = evaluate(Candidates([pop]), (x, y))  # (P,), differentiable
        # A member whose loss is NaN/inf is left untouched this step rather than poisoning Adam.
        finite = torch.isfinite(fitness)  # (P,)
        loss = -torch.where(finite, fitness, torch.zeros_like(fitness)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return self._stats(clean)

    def _estimated_step(self, x: Tensor, y: Tensor, evaluate: Evaluate) -> dict[str, Any]:
        """The generation with a named estimator: evaluate once, estimate per member, one step."""
        pop, estimator = self.population, self.estimator
        assert estimator is not None
        # Same storage, no graph: in-place edits by after_ask hooks reach the leaf; nothing to backprop.
        view = pop.with_flat(pop.flat.detach())
        fitness, clean, _ = evaluate(Candidates([view]), (x, y))  # (P,)
        params = view.params  # name -> (P, *shape), views of the current weights
        rows = []
        for i in range(pop.size):
            grads = estimator.estimate(
                pop.template, params={name: p[i] for name, p in params.items()}, batch=(x, y), loss_fn=self.loss_fn
            )  # name -> (*shape), of member i's loss
            rows.append(torch.cat([grads[s.name].reshape(-1) for s in pop.layout]))  # (D,)
        grad = torch.stack(rows).to(pop.flat.dtype)  # (P, D)
        finite = torch.isfinite(fitness.detach()) & torch.isfinite(grad).all(dim=1)  # (P,)
        self.optimizer.zero_grad(set_to_none=True)
        pop.flat.grad = torch.where(finite[:, None], grad, torch.zeros_like(grad))  # (P, D)
        self.optimizer.step()
        return self._stats(clean)

    def _stats(self, clean: Tensor) -> dict[str, Any]:
        diversity = self.population.flat.detach().std(dim=0, correction=0).mean()  # mean per-weight std
        return {**fitness_stats(clean), "diversity": diversity}

    def state_dict(self) -> dict[str, Any]:
        state = {"flat": self.population.flat.detach().clone(), "optimizer": self.optimizer.state_dict()}
        if self.estimator is not None:  # e.g. NES's call counter: its draws continue, not repeat
            state["estimator"] = getattr(self.estimator, "state_dict", dict)()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.population.flat.copy_(state["flat"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.estimator is not None and hasattr(self.estimator, "load_state_dict"):
            self.estimator.load_state_dict(state.get("estimator", {}))

    def candidates(self) -> Candidates:
        """Every member is a candidate final model (``member0`` ...), as a detached population."""
        return Candidates([self.population.with_flat(self.population.flat.detach())])


def build_gradient(
    template: nn.Module,
    batcher: Batcher,
    *,
    popsize: int,
    optimizer: str = "adam",
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    device: torch.device,
    seed: int,
    strategy: str = "auto",
    max_chunk: int | None = None,
    estimator: GradEstimator | None = None,
    fitness_fn: FitnessFn | None = None,
) -> GradientTrainer:
    """P members, each freshly initialised (PyTorch's default init) from a seeded generator.

    ``estimator`` (with the run's ``fitness_fn``) replaces autograd's gradient; None keeps it."""
    generator = torch.Generator().manual_seed(seed)
    fresh = Population.from_module(template, popsize, generator=generator).flat  # (P, D)
    # The leaf must require grad BEFORE the population takes views of it.
    flat = fresh.detach().to(device).requires_grad_(True)
    population = Population(template.to(device), flat, strategy=strategy, max_chunk=max_chunk)
    opt = OPTIMIZERS[optimizer]([flat], lr=lr, weight_decay=weight_decay)
    return GradientTrainer(population, opt, batcher, estimator, fitness_fn)
