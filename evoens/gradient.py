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

from evoens.bridge import GenerationHooks
from evoens.datasets import Batcher
from evoens.fitness import fitness_stats, sanitize
from evoens.population import Population

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


class GradientTrainer:
    """One generation = one optimizer step on one minibatch for all P members."""

    def __init__(
        self, population: Population, optimizer: torch.optim.Optimizer, batcher: Batcher, hooks: GenerationHooks
    ) -> None:
        self.population = population
        self.optimizer = optimizer
        self.batcher = batcher
        self.hooks = hooks

    def step(self, generation: int) -> dict[str, Any]:
        pop = self.population
        x, y = (t.to(pop.flat.device, non_blocking=True) for t in self.batcher.next())
        with torch.no_grad():
            self.hooks.after_ask(pop.flat)
        fitness = self.hooks.evaluate(pop, (x, y))  # (P,), differentiable
        clean, bad = sanitize(fitness.detach())
        extras = self.hooks.after_evaluate(clean)
        # A member whose loss is NaN/inf is left untouched this step rather than poisoning Adam.
        finite = torch.isfinite(fitness)  # (P,)
        loss = -torch.where(finite, fitness, torch.zeros_like(fitness)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        diversity = pop.flat.detach().std(dim=0, correction=0).mean()  # mean per-weight std across members
        stats: dict[str, Any] = {**fitness_stats(clean), "nonfinite": bad, "diversity": diversity, **extras}
        stats.update(self.hooks.after_tell(stats))
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"flat": self.population.flat.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.population.flat.copy_(state["flat"])
        self.optimizer.load_state_dict(state["optimizer"])

    def candidates(self) -> dict[str, torch.Tensor]:
        """Every member is a candidate final model: ``{"member3": (D,)}``."""
        return {f"member{i}": row.detach() for i, row in enumerate(self.population.flat)}


def build_gradient(
    template: nn.Module,
    batcher: Batcher,
    hooks: GenerationHooks,
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
    return GradientTrainer(population, opt, batcher, hooks)
