"""CDG: the coordinate discrete gradient, central differences of the true (binarized) loss.

Reference: Kim et al., "BinaryDuo: Reducing Gradient Mismatch in Binary Activation Network by
Coupling Binary Activations", ICLR 2020, arXiv:2002.06517 (CDG as the yardstick for STEs).

``g_i = [L(w + eps e_i) - L(w - eps e_i)] / (2 eps)`` for every selected scalar weight: the exact
partial derivative of the loss box-smoothed along coordinate i over ``[-eps, eps]`` (the loss of a
binary-activation net is piecewise constant, so its true gradient is zero almost everywhere).
Deterministic, but it costs 2*d forwards: here they run as batched populations of perturbed copies,
``chunk`` coordinates (2*chunk rows) per evaluation. ``cdg_loop`` is the one-at-a-time reference.
Pure torch, no pluggy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from evoens_binary.estimators import GradEstimator, resolve_config
from evoens_binary.objective import Objective, iter_chunks


@dataclass(frozen=True)
class CdgConfig:
    """``eps``: the coordinate step; ``chunk``: coordinates per batched population (2*chunk rows)."""

    eps: float = 0.1
    chunk: int = 512

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"cdg eps must be > 0, got {self.eps}")
        if self.chunk < 1:
            raise ValueError(f"cdg chunk must be >= 1, got {self.chunk}")


def _perturbed(x0: Tensor, start: int, stop: int, eps: float) -> Tensor:
    """Rows ``x0 + eps e_i`` then ``x0 - eps e_i`` for i in [start, stop): ``(2c, d)``."""
    c = stop - start
    idx = torch.arange(start, stop, device=x0.device)
    plus = x0.expand(c, -1).clone()  # (c, d)
    plus[torch.arange(c), idx] += eps
    minus = x0.expand(c, -1).clone()  # (c, d)
    minus[torch.arange(c), idx] -= eps
    return torch.cat([plus, minus])  # (2c, d)


def cdg(objective: Objective, config: CdgConfig = CdgConfig()) -> Tensor:
    """Central coordinate differences of ``objective`` at ``x0``: ``(d,)``, batched."""
    x0, out = objective.x0, torch.empty_like(objective.x0)
    for start, stop in iter_chunks(objective.dim, config.chunk):
        losses = objective.losses(_perturbed(x0, start, stop, config.eps))  # (2c,)
        c = stop - start
        out[start:stop] = (losses[:c] - losses[c:]) / (2 * config.eps)
    return out


def cdg_loop(objective: Objective, config: CdgConfig = CdgConfig()) -> Tensor:
    """The reference: one forward per perturbed copy (same rows as :func:`cdg`)."""
    x0, out = objective.x0, torch.empty_like(objective.x0)
    with torch.no_grad():
        for i in range(objective.dim):
            rows = _perturbed(x0, i, i + 1, config.eps)  # (2, d)
            out[i] = (objective.loss(rows[0]) - objective.loss(rows[1])) / (2 * config.eps)
    return out


class CdgGradient(GradEstimator):
    """``cdg``: central coordinate differences, all 2*d perturbed copies as batched populations."""

    name = "cdg"

    def __init__(self, config: CdgConfig | None = None, **kw: Any) -> None:
        self.config = resolve_config(config, CdgConfig, self.name, kw)

    def flat_gradient(self, objective: Objective) -> Tensor:
        return cdg(objective, self.config)
