"""Ensemble-level fitness and the training modes of gradient-trained ensembles.

References: Lakshminarayanan, Pritzel, Blundell, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles", NeurIPS 2017 (independent training); Liu & Yao, "Ensemble
learning via negative correlation", Neural Networks 12, 1999 (NCL); Caruana, Niculescu-Mizil,
Crew, Ksikes, "Ensemble Selection from Libraries of Models", ICML 2004 (greedy forward selection
with replacement); Abe, Buchanan, Pleiss, Zemel, Cunningham, "Deep Ensembles Work, But Are They
Necessary?", NeurIPS 2022 (sum vs mean loss, joint training; spec ensemble.md 2.3-2.5).

Every function here is an evoens fitness function, ``(P, B, C) logits, (B,) labels -> (P,)``,
higher is better, differentiable. The gradient trainer maximises the SUM of the members' fitness,
so the training modes are fitness functions:

==================  =========================================  ==============================
mode                fitness of member i                        the trainer minimises
==================  =========================================  ==============================
independent         ``-CE_i`` (core ``neg_cross_entropy``)      ``sum_i CE_i``
mean loss           ``-CE_i / P``                               ``mean_i CE_i`` (lr / P per member)
joint               ``-NLL(combined) / P``                      ``NLL(combined)``
==================  =========================================  ==============================

With plain SGD (no weight decay, which torch adds unscaled), mean loss at ``lr * P`` takes exactly
the steps of sum loss at ``lr``; Adam is invariant to the loss scale up to its epsilon. Functions
that couple the members (every one but the mean loss) set ``couples_members = True``, so the core
evaluates them on all members at once, whatever their species.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from evoens.fitness import neg_cross_entropy
from evoens_ensemble.metrics import get_combiner

FitnessFn = Callable[[Tensor, Tensor], Tensor]

# The differentiable combiners of evoens_ensemble.metrics as "average in some space" pairs
# (logits -> that space, mean in that space -> log-probs), so that leave-one-out and incremental
# ensembles are sums in that space.
_SPACES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "mean_prob": (lambda z: z.softmax(-1), lambda m: m.clamp_min(1e-30).log()),
    "geo_mean": (lambda z: z.log_softmax(-1), lambda m: m.log_softmax(-1)),
    "mean_logit": (lambda z: z, lambda m: m.log_softmax(-1)),
}
COMBINERS = tuple(_SPACES)


def _space(combiner: str) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    try:
        return _SPACES[combiner]
    except KeyError:
        raise ValueError(f"unknown combiner {combiner!r} for a differentiable ensemble loss; use one of "
                         f"{', '.join(_SPACES)}") from None  # fmt: skip


def _check(outputs: Tensor, targets: Tensor) -> None:
    if outputs.dim() != 3 or targets.shape != outputs.shape[1:2]:
        raise ValueError(
            f"ensemble fitness needs logits (P, B, C) and labels (B,) shared by all members, got "
            f"{tuple(outputs.shape)} and {tuple(targets.shape)}"
        )


def combined_log_probs(outputs: Tensor, combiner: str = "mean_prob") -> Tensor:
    """The ensemble's log-probabilities: ``(P, B, C) -> (B, C)`` (:data:`evoens_ensemble.metrics.COMBINERS`)."""
    _space(combiner)  # the differentiable ones only (not the vote)
    return get_combiner(combiner)(outputs)  # (B, C)


def ensemble_nll(outputs: Tensor, targets: Tensor, combiner: str = "mean_prob") -> Tensor:
    """The combined prediction's mean negative log-likelihood: a 0-d tensor."""
    _check(outputs, targets)
    return F.nll_loss(combined_log_probs(outputs, combiner), targets)


def mean_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """``-CE_i / P``: the seed's "average loss" (each member's effective learning rate is lr / P)."""
    return neg_cross_entropy(outputs, targets) / outputs.shape[0]  # (P,)


def joint(combiner: str = "mean_prob") -> FitnessFn:
    """``-NLL(combined) / P`` for every member: their sum is minus the combined prediction's loss.

    ``mean_prob``: the mixture likelihood (at most the mean member CE, by Jensen); ``mean_logit``
    (= ``geo_mean``, renormalized): a wide net whose head averages the members' logits."""
    _space(combiner)

    def fitness(outputs: Tensor, targets: Tensor) -> Tensor:
        p = outputs.shape[0]
        return (-ensemble_nll(outputs, targets, combiner) / p).expand(p)  # (P,)

    fitness.couples_members = True  # type: ignore[attr-defined]
    return fitness


def population_score(combiner: str = "mean_prob") -> FitnessFn:
    """``-NLL(combined)`` for every member: the population judged as one ensemble."""
    _space(combiner)

    def fitness(outputs: Tensor, targets: Tensor) -> Tensor:
        return (-ensemble_nll(outputs, targets, combiner)).expand(outputs.shape[0])  # (P,)

    fitness.couples_members = True  # type: ignore[attr-defined]
    return fitness


def leave_one_out_gain(combiner: str = "mean_prob") -> FitnessFn:
    """Member i's contribution: ``NLL(ensemble without i) - NLL(ensemble)`` (positive: i helps)."""
    to_space, finish = _space(combiner)

    def fitness(outputs: Tensor, targets: Tensor) -> Tensor:
        _check(outputs, targets)
        p = outputs.shape[0]
        if p < 2:
            raise ValueError("leave-one-out gain needs at least 2 members")
        z = to_space(outputs)  # (P, B, C)
        total = z.sum(0)  # (B, C)
        full = F.nll_loss(finish(total / p), targets)  # ()
        without = finish((total - z) / (p - 1))  # (P, B, C): the ensemble without each member
        y = targets.expand(p, -1)  # (P, B)
        nll = -without.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)  # (P,)
        return nll - full  # (P,)

    fitness.couples_members = True  # type: ignore[attr-defined]
    return fitness


def negative_correlation(kappa: float = 0.5) -> FitnessFn:
    """Liu & Yao's NCL on probabilities: ``-(1/2 |p_i - y|^2 - kappa |p_i - p_mean|^2)`` per example,
    averaged; ``kappa = 0`` trains members independently on the Brier loss, larger values push
    them apart (``kappa <= 1`` keeps the ensemble's loss bounded below)."""
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"negative_correlation: kappa={kappa} must lie in [0, 1]")

    def fitness(outputs: Tensor, targets: Tensor) -> Tensor:
        _check(outputs, targets)
        probs = outputs.softmax(-1)  # (P, B, C)
        onehot = F.one_hot(targets, outputs.shape[-1]).to(probs.dtype)  # (B, C)
        fit = 0.5 * (probs - onehot).pow(2).sum(-1)  # (P, B)
        spread = (probs - probs.mean(0)).pow(2).sum(-1)  # (P, B)
        return -(fit - kappa * spread).mean(1)  # (P,)

    fitness.couples_members = True  # type: ignore[attr-defined]
    return fitness


@torch.no_grad()
def caruana_select(logits: Tensor, targets: Tensor, size: int, combiner: str = "mean_prob") -> list[int]:
    """Greedy forward selection with replacement (Caruana et al. 2004) from cached member outputs
    ``(P, N, C)``: ``size`` picks, each the member whose addition gives the lowest ensemble NLL
    (ties: the lowest index). A member picked k times has weight k / size."""
    _check(logits, targets)
    if size < 1:
        raise ValueError(f"caruana_select: size={size} must be >= 1")
    to_space, finish = _space(combiner)
    z = to_space(logits)  # (P, N, C)
    y = targets.expand(len(z), -1).unsqueeze(-1)  # (P, N, 1)
    total, picks = torch.zeros_like(z[0]), []  # (N, C)
    for n in range(size):
        trial = finish((total + z) / (n + 1))  # (P, N, C): the ensemble with each member added
        nll = -trial.gather(-1, y).squeeze(-1).mean(1)  # (P,)
        best = int(nll.argmin())
        picks.append(best)
        total = total + z[best]
    return picks
