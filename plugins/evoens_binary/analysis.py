"""Comparing gradient estimates: per-tensor cosine, normalisation, loss decrease vs learning rate.

Reference: the measurement protocol of seed 002 / BinaryDuo (Kim et al., ICLR 2020, arXiv:2002.06517):
cosine similarity per weight tensor against CDG on the same batch and weights, and the in-sample
loss decrease ``L(w) - L(w - lr * g_hat)`` of a per-tensor normalised step, swept over lr.

Normalising first matters: otherwise the lr axis conflates each estimator's scale with its
direction. A sweep evaluates every (estimator, lr) step as one batched population. Pure torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from evoens_binary.objective import Objective

Grads = Mapping[str, Tensor]
NormMode = Literal["per_tensor", "global", "none"]


def cosine_per_tensor(g: Grads, ref: Grads, eps: float = 1e-12) -> dict[str, float]:
    """``cos(g_l, ref_l)`` for every tensor name of ``ref`` (0 when either is zero)."""
    missing = sorted(set(ref) - set(g))
    if missing:
        raise ValueError(f"gradient is missing tensors {missing}")
    out = {}
    for name, r in ref.items():
        if g[name].shape != r.shape:
            raise ValueError(f"gradient '{name}' has shape {tuple(g[name].shape)}, the reference {tuple(r.shape)}")
        a, b = g[name].reshape(-1).double(), r.reshape(-1).double()
        out[name] = float(F.cosine_similarity(a, b, dim=0, eps=eps))
    return out


def normalize(g: Grads, mode: NormMode = "per_tensor", eps: float = 1e-8) -> dict[str, Tensor]:
    """``g_l / (||g_l|| + eps)`` per tensor, ``g / (||g|| + eps)`` globally, or unchanged (``none``)."""
    if mode == "per_tensor":
        return {k: v / (v.norm() + eps) for k, v in g.items()}
    if mode == "global":
        total = torch.sqrt(sum((v.double() ** 2).sum() for v in g.values())).to(next(iter(g.values())).dtype)
        return {k: v / (total + eps) for k, v in g.items()}
    if mode == "none":
        return dict(g)
    raise ValueError(f"unknown normalisation '{mode}'; use per_tensor, global or none")


def loss_decrease(
    objective: Objective, grads: Sequence[Grads], lrs: Sequence[float] | Tensor, *, mode: NormMode = "per_tensor"
) -> Tensor:
    """``L(x0) - L(x0 - lr * normalize(g))`` for every gradient and lr: ``(E, L)``, one population.

    The decrease is in-sample: the objective's own batch, the one the gradients were estimated on."""
    lr = torch.as_tensor(lrs, dtype=objective.x0.dtype, device=objective.x0.device)  # (L,)
    dirs = torch.stack([objective.flatten(normalize(g, mode)) for g in grads])  # (E, d)
    rows = objective.x0 - lr[None, :, None] * dirs[:, None, :]  # (E, L, d)
    with torch.no_grad():
        base = objective.losses(objective.x0[None])[0]
        after = objective.losses(rows.reshape(-1, objective.dim)).view(len(grads), lr.numel())  # (E, L)
    return base - after


def best_lr(lrs: Sequence[float], decrease: Tensor) -> tuple[float, float]:
    """The lr with the largest (mean) decrease and that decrease, from a ``(L,)`` curve."""
    if decrease.shape != (len(lrs),):
        raise ValueError(f"best_lr: a curve of shape {tuple(decrease.shape)} for {len(lrs)} lrs; pass one (L,) row")
    i = int(torch.argmax(decrease))
    return float(lrs[i]), float(decrease[i])
