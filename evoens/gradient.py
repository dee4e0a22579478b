"""The gradient trainer: P independent networks trained together by one torch optimizer.

The population's flat ``(P, D)`` parameters are a single leaf tensor. The loss is the SUM of
the members' losses, so the gradient of member i's slice is exactly the gradient of member i's
own loss; with an element-wise optimizer (SGD, Adam, AdamW) one batched step therefore equals
P separate training steps. (Deep ensembles, Lakshminarayanan et al., NeurIPS 2017, train their
members exactly like this, independently from different initialisations.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from evoens.candidates import Candidates
from evoens.datasets import Batcher
from evoens.fitness import fitness_stats
from evoens.phases import Evaluate
from evoens.population import Population

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


class GradientTrainer:
    """One generation = one optimizer step on one minibatch for all P members."""

    def __init__(self, population: Population, optimizer: torch.optim.Optimizer, batcher: Batcher) -> None:
        self.population = population
        self.optimizer = optimizer
        self.batcher = batcher

    def step(self, generation: int, evaluate: Evaluate) -> dict[str, Any]:
        pop = self.population
        x, y = (t.to(pop.flat.device, non_blocking=True) for t in self.batcher.next())
        fitness, clean, _ = evaluate(Candidates([pop]), (x, y))  # (P,), differentiable
        # A member whose loss is NaN/inf is left untouched this step rather than poisoning Adam.
        finite = torch.isfinite(fitness)  # (P,)
        loss = -torch.where(finite, fitness, torch.zeros_like(fitness)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        diversity = pop.flat.detach().std(dim=0, correction=0).mean()  # mean per-weight std across members
        return {**fitness_stats(clean), "diversity": diversity}

    def state_dict(self) -> dict[str, Any]:
        return {"flat": self.population.flat.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.population.flat.copy_(state["flat"])
        self.optimizer.load_state_dict(state["optimizer"])

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
) -> GradientTrainer:
    """P members, each freshly initialised (PyTorch's default init) from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    fresh = Population.from_module(template, popsize, generator=generator).flat  # (P, D)
    # The leaf must require grad BEFORE the population takes views of it.
    flat = fresh.detach().to(device).requires_grad_(True)
    population = Population(template.to(device), flat, strategy=strategy, max_chunk=max_chunk)
    opt = OPTIMIZERS[optimizer]([flat], lr=lr, weight_decay=weight_decay)
    return GradientTrainer(population, opt, batcher)
