"""Codes as a discrete genome: search a trained generator's K^T members for a better sub-ensemble.

Beyond vq-ensemble, which only samples codes uniformly. The cross-entropy method over categorical
codes (Rubinstein, "The cross-entropy method for combinatorial and continuous optimization", 1999):
a distribution ``p ∈ Δ_K^T`` (uniform at first) proposes ``popsize`` codes, each member's fitness
is its log-likelihood on a validation batch, and ``p`` moves toward the elite's choice frequencies,
``p ← (1 - α)·p + α·freq(elite)``. Every member it evaluates joins a pool, from which greedy forward
selection with replacement (Caruana et al., "Ensemble selection from libraries of models", ICML
2004; :func:`evoens_ensemble.fitness.caruana_select`) picks the E-member ensemble on the
validation split. Each iteration's members are decoded and evaluated as one batched population.
Pure torch, no pluggy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from evoens_ensemble.fitness import caruana_select
from torch import Tensor

from evoens.fitness import neg_cross_entropy
from evoens_hypernet.refiner import VQRefiner

__all__ = ["CodeSearch", "cem_codes", "member_logits", "select_ensemble"]


class CodeSearch(NamedTuple):
    codes: Tensor  # (M, T) every code evaluated, in order
    fitness: Tensor  # (M,) each member's fitness (minus its mean cross-entropy on the search batch)
    probs: Tensor  # (T, K) the final search distribution


@torch.no_grad()
def member_logits(generator: VQRefiner, codes: Tensor, x: Tensor, *, chunk: int = 64, batch: int = 2000) -> Tensor:
    """Logits of the members ``codes`` (N, T) on ``x`` (n, ...): ``(N, n, C)``, ``chunk`` members at once."""
    parts = []
    for start in range(0, len(codes), chunk):
        pop = generator.members(codes[start : start + chunk])
        parts.append(torch.cat([pop(x[s : s + batch], per_member=False) for s in range(0, len(x), batch)], dim=1))
    return torch.cat(parts)


@torch.no_grad()
def cem_codes(
    generator: VQRefiner, batch: tuple[Tensor, Tensor], *, iterations: int = 10, popsize: int = 64,
    elite: float = 0.25, smoothing: float = 0.5, rng: torch.Generator | None = None,
) -> CodeSearch:  # fmt: skip
    """CEM over categorical codes; fitness = minus each member's mean cross-entropy on ``batch``."""
    if not isinstance(generator, VQRefiner):
        raise TypeError("code search needs a generator of discrete codes ('vq'); 'chunked' codes are continuous")
    if not (0 < elite <= 1 and 0 < smoothing <= 1) or min(iterations, popsize) < 1:
        raise ValueError("need iterations, popsize >= 1, 0 < elite <= 1 and 0 < smoothing <= 1")
    T, K = generator.stages, generator.options
    probs = torch.full((T, K), 1.0 / K)  # (T, K)
    n_elite = max(1, round(elite * popsize))
    all_codes, all_fitness = [], []
    for _ in range(iterations):
        codes = torch.multinomial(probs, popsize, replacement=True, generator=rng).t().contiguous()  # (popsize, T)
        fitness = neg_cross_entropy(member_logits(generator, codes.to(generator.device), batch[0]), batch[1]).cpu()
        best = codes[fitness.topk(n_elite).indices]  # (n_elite, T)
        freq = torch.nn.functional.one_hot(best, K).float().mean(0)  # (T, K)
        probs = (1 - smoothing) * probs + smoothing * freq
        all_codes.append(codes)
        all_fitness.append(fitness)
    return CodeSearch(torch.cat(all_codes), torch.cat(all_fitness), probs)


def select_ensemble(generator: VQRefiner, pool: Tensor, val: tuple[Tensor, Tensor], size: int,
                    combiner: str = "mean_prob") -> Tensor:  # fmt: skip
    """Caruana selection of ``size`` picks (with replacement) from the codes ``pool`` on ``val``:
    the picked codes ``(size, T)``, repeated as often as they were picked."""
    logits = member_logits(generator, pool.to(generator.device), val[0])  # (M, n, C)
    picks = caruana_select(logits, val[1], size, combiner)
    return pool[torch.tensor(picks)]
