"""Ensembles of the networks neuroevolution selected: mean of probabilities and a hierarchical head.

M. Painter, "Deep Neuroevolution with Shared Parameters: Ensembling a Better Solution" (cs231n
report, Stanford 2018), §3.3: a small MLP over the concatenated logits of the K selected models,
trained with the members frozen. The original concatenated along dim 0 and then ``view(-1, 40)``,
which mixes different samples into one row; here the logits of one sample are concatenated along
the class dimension (dim 1), so row i of the head's input only holds sample i's logits.
Pure torch, no pluggy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evoens_morph.select import species_logits


def mean_probability(logits: Tensor) -> Tensor:
    """``(K, B, C)`` member logits -> ``(B, C)`` mean of the members' softmax probabilities."""
    return logits.softmax(-1).mean(0)  # (B, C)


def stack_features(logits: Tensor) -> Tensor:
    """``(K, B, C)`` member logits -> ``(B, K*C)``: each sample's K logit vectors side by side, i.e.
    ``torch.cat([logits[0], ..., logits[K-1]], dim=1)``."""
    K, B, C = logits.shape
    return logits.permute(1, 0, 2).reshape(B, K * C)  # (B, K*C)


class HierarchicalEnsemble(nn.Module):
    """``Linear(K*C, hidden) - ReLU - Linear(hidden, C)`` over the members' concatenated logits.

    The members are held in a plain tuple, not as submodules: ``parameters()`` is the head only, so an
    optimiser over it leaves the (possibly bank-shared) members untouched."""

    def __init__(self, members: Sequence[nn.Module], num_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        if not members:
            raise ValueError("HierarchicalEnsemble: needs at least one member")
        self.members = tuple(members)
        self.num_classes = num_classes
        self.head = nn.Sequential(
            nn.Linear(len(members) * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def features(self, x: Tensor) -> Tensor:
        """Frozen members' eval-mode logits on ``x`` as ``(B, K*C)`` (no gradient to the members)."""
        logits = species_logits(self.members, x)  # (K, B, C)
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"HierarchicalEnsemble: the members output {logits.shape[-1]} classes but the head was built for "
                f"num_classes={self.num_classes}; pass num_classes={logits.shape[-1]}"
            )
        return stack_features(logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, C)


def train_head(
    ensemble: HierarchicalEnsemble,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Adam on the head only, over minibatches of ``(x, y)``; the members' logits are computed once
    (they are frozen). Returns the loss of every step."""
    feats = ensemble.features(x)  # (N, K*C), fixed
    opt = torch.optim.Adam(ensemble.head.parameters(), lr=lr)
    losses = []
    ensemble.head.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (batch_size,), generator=generator).to(y.device)
        loss = F.cross_entropy(ensemble.head(feats[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
