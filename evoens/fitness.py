"""Fitness functions over batched outputs, and the guards every trainer applies to fitness.

A fitness function maps population outputs ``(P, B, C)`` and targets ``(B,)`` to ``(P,)``,
higher is better. They are plain callables (a small knob, not a hook) registered as
``fitness`` providers by the core plugin; plugins add their own the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

FitnessFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _targets_for(outputs: torch.Tensor, targets: torch.Tensor, per_sample_dims: int) -> torch.Tensor:
    """Targets shared by all members (no leading P dim) are expanded to ``(P, B, ...)``."""
    if targets.dim() == 1 + per_sample_dims:
        return targets.expand(outputs.shape[0], *targets.shape)
    return targets


def _check_targets(name: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Targets must be shared ``outputs.shape[1:]`` or per member ``outputs.shape``: anything else
    (``(P, B, 1)`` outputs with ``(B,)`` targets) would broadcast to a wrong loss without an error."""
    if targets.shape not in (outputs.shape[1:], outputs.shape):
        raise ValueError(
            f"{name}: targets of shape {tuple(targets.shape)} do not match predictions of shape "
            f"{tuple(outputs.shape[1:])} per member; reshape the targets to the model's output shape"
        )


def neg_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Minus the mean cross-entropy of each member: ``(P, B, C), (B,) -> (P,)``."""
    if outputs.dim() != 3 or targets.shape not in (outputs.shape[1:2], outputs.shape[:2]):
        raise ValueError(
            f"cross-entropy needs logits (P, B, C) and integer labels (B,) or (P, B), got {tuple(outputs.shape)} "
            f"and {tuple(targets.shape)}"
        )
    p, b, c = outputs.shape
    y = _targets_for(outputs, targets, 0).reshape(p * b)  # (P*B,)
    loss = F.cross_entropy(outputs.reshape(p * b, c), y, reduction="none")  # (P*B,)
    return -loss.view(p, b).mean(dim=1)  # (P,)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of correct argmax predictions of each member: ``(P, B, C), (B,) -> (P,)``."""
    hits = outputs.argmax(dim=-1) == _targets_for(outputs, targets, 0)  # (P, B)
    return hits.to(outputs.dtype).mean(dim=1)  # (P,)


def neg_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Minus the mean squared error of each member for regression targets ``(B, ...)``."""
    _check_targets("mse", outputs, targets)
    diff = outputs - _targets_for(outputs, targets, outputs.dim() - 2).to(outputs.dtype)  # (P, B, ...)
    return -diff.pow(2).flatten(1).mean(dim=1)  # (P,)


FITNESS: dict[str, tuple[FitnessFn, str]] = {
    "neg_cross_entropy": (neg_cross_entropy, "minus mean cross-entropy (classification)"),
    "accuracy": (accuracy, "fraction of correct argmax predictions"),
    "neg_mse": (neg_mse, "minus mean squared error (regression)"),
}


def sanitize(fitness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace NaN/inf fitness by the worst finite value (so a broken individual never wins and
    never poisons ranking); returns ``(clean (P,), number replaced ())`` without a host sync.

    When no value is finite they all become ``-inf``: a tie for every rank-based searcher, and
    never a best value (0 would be the best possible minus cross-entropy)."""
    finite = torch.isfinite(fitness)  # (P,)
    worst = torch.where(finite, fitness, torch.full_like(fitness, float("inf"))).min()  # () +inf: none finite
    worst = torch.where(torch.isfinite(worst), worst, torch.full_like(worst, float("-inf")))
    return torch.where(finite, fitness, worst), (~finite).sum()


def fitness_stats(fitness: torch.Tensor) -> dict[str, torch.Tensor]:
    """Best/mean/median/worst of the finite values of a ``(P,)`` fitness vector, kept on its
    device (no host sync); all ``-inf`` when none is finite. The median is the lower one, as
    ``torch.median``'s."""
    finite = torch.isfinite(fitness)  # (P,)
    count = finite.sum()  # ()
    low = torch.full_like(fitness, float("-inf"))
    kept = torch.where(finite, fitness, low)  # (P,) non-finite ones last in descending order
    ordered = kept.sort(descending=True).values  # (P,)
    # the lower median of the k finite values is the (k-1)//2-th smallest: index k-1-(k-1)//2 descending
    middle = (count - 1 - torch.div(count - 1, 2, rounding_mode="floor")).clamp(min=0)  # ()
    none = count == 0
    mean = torch.where(finite, fitness, torch.zeros_like(fitness)).sum() / count.clamp(min=1)  # ()
    return {
        "best_fitness": ordered[0],
        "mean_fitness": torch.where(none, low[0], mean),
        "median_fitness": ordered.gather(0, middle.view(1))[0],
        "worst_fitness": torch.where(none, low[0], torch.where(finite, fitness, -low).min()),
    }
