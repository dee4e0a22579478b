"""Selection for architecture neuroevolution, and species-batched evaluation of a mixed population.

M. Painter, "Deep Neuroevolution with Shared Parameters: Ensembling a Better Solution" (cs231n
report, Stanford 2018), Algorithms 2 (select best) and 3 (select diverse).

Individuals of one architecture form a *species*, evaluated as ONE batched population by the
core (:mod:`evoens.candidates`: ``species``, ``species_logits``, re-exported here), so a population
of M networks over S architectures costs S batched forwards per input chunk, not M. Selection works
on the ``(M, N)`` correctness matrix this produces. Pure torch, no pluggy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from evoens.candidates import species, species_logits

__all__ = ["correctness", "select_best", "select_diverse", "species", "species_logits"]


def correctness(models: Sequence[nn.Module], x: Tensor, y: Tensor, **kw: object) -> Tensor:
    """``(M, N)`` float matrix: 1 where model m classifies example i correctly."""
    if y.shape != x.shape[:1]:  # (M, N) == (N, 1) would broadcast to (M, N, N)
        raise ValueError(f"correctness: labels must have shape ({len(x)},) for {len(x)} inputs, got {tuple(y.shape)}")
    return (species_logits(models, x, **kw).argmax(-1) == y).float()  # type: ignore[arg-type]


def _check(correct: Tensor, k: int) -> None:
    if correct.dim() != 2 or correct.shape[0] < 1:
        raise ValueError(f"selection needs an (M>=1, N) correctness matrix, got shape {tuple(correct.shape)}")
    if k < 1:
        raise ValueError(f"selection: k={k} must be >= 1")


def select_best(correct: Tensor, k: int) -> list[int]:
    """The ``k`` rows of highest accuracy (mean over examples), best first; ties keep index order."""
    _check(correct, k)
    acc = correct.float().mean(1)  # (M,)
    order = sorted(range(len(acc)), key=lambda i: (-float(acc[i]), i))
    return order[:k]


def select_diverse(correct: Tensor, k: int) -> list[int]:
    """Greedy diverse selection: the most accurate model first, then repeatedly
    ``argmax_m mean_i[correct[m, i] * (1 + sum_{s in selected} correct[s, i]) ** -2]``, i.e. credit for
    an example shrinks with the number of already-selected models that get it right."""
    _check(correct, k)
    c = correct.float()  # (M, N)
    chosen = [select_best(c, 1)[0]]
    covered = c[chosen[0]].clone()  # (N,) how many selected models get example i right
    while len(chosen) < min(k, c.shape[0]):
        score = (c * (1.0 + covered).pow(-2)).mean(1)  # (M,)
        score[chosen] = -1.0  # scores are >= 0, so a chosen row can never win again
        best = int(torch.argmax(score))  # first maximum: ties keep index order
        chosen.append(best)
        covered += c[best]
    return chosen
