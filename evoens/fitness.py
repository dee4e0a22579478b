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
    never poisons ranking); returns ``(clean (P,), number replaced ())`` without a host sync."""
    finite = torch.isfinite(fitness)  # (P,)
    floor = torch.where(finite, fitness, torch.full_like(fitness, float("inf"))).min()
    worst = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))  # all bad -> 0
    return torch.where(finite, fitness, worst), (~finite).sum()


def fitness_stats(fitness: torch.Tensor) -> dict[str, torch.Tensor]:
    """Best/mean/median/worst of a ``(P,)`` fitness vector, kept on its device."""
    return {
        "best_fitness": fitness.max(),
        "mean_fitness": fitness.mean(),
        "median_fitness": fitness.median(),
        "worst_fitness": fitness.min(),
    }
