"""Per-unit switches with an L1 penalty: a network that prunes itself while it trains.

G. Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska, S. Madden, "Smallify: Learning Network Size
while Training" (arXiv:1806.03723, 2018) and "Learning Network Size While Training with
ShrinkNets" (SysML 2018); the journal's ``LinearSparsifier`` (mitdbg/fastdeepnets, 2017-11-10).

A switch layer multiplies each output unit by ``relu(theta_i)``; unit i is alive iff
``theta_i > 0``. ``strict`` mode penalises ``sum relu(theta)``: once ``theta_i <= 0`` both the data
gradient and the penalty gradient vanish (``relu'(0) = 0``), so a dead unit never revives. ``l1``
mode penalises ``sum |theta|``, which pushes a negative ``theta`` back towards 0, where the data
gradient can revive it. Without a weight term the problem has no minimum (theta shrinks while the
weights grow), so :func:`weight_penalty` adds ``lambda_2 ||W||^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("strict", "l1")
INITS = ("one", "uniform", "normal")


def switch_init_(theta: Tensor, init: str, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``theta`` in place: ``one`` (the journal: 1), ``uniform`` (SysML: ``1 - U[0,1)``, in
    (0, 1]) or ``normal`` (the NIPS draft: N(0, 1), signed)."""
    with torch.no_grad():
        if init == "one":
            return theta.fill_(1.0)
        if init == "uniform":
            return theta.copy_(1.0 - torch.rand(theta.shape, generator=generator, dtype=theta.dtype))
        if init == "normal":
            return theta.copy_(torch.randn(theta.shape, generator=generator, dtype=theta.dtype))
    raise ValueError(f"unknown switch init '{init}'; use one of {', '.join(INITS)}")


def switch_penalty(theta: Tensor, mode: str) -> Tensor:
    """The switches' penalty over the last dim: ``(..., N) -> (...)``."""
    if mode == "strict":
        return F.relu(theta).sum(-1)
    if mode == "l1":
        return theta.abs().sum(-1)
    raise ValueError(f"unknown switch mode '{mode}'; use one of {', '.join(MODES)}")


def weight_penalty(weight: Tensor, lead: int = 0) -> Tensor:
    """``||W||^2``, one per index of the ``lead`` leading dims: ``(P, out, in) -> (P,)`` with
    ``lead=1``, a scalar with ``lead=0``."""
    return weight.pow(2).flatten(lead).sum(-1) if lead else weight.pow(2).sum()


class _Switched(nn.Module):
    """Shared part of the switch layers: ``theta`` (out,) and its mode."""

    theta: nn.Parameter

    def _init_switches(self, n: int, mode: str, init: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown switch mode '{mode}'; use one of {', '.join(MODES)}")
        if init not in INITS:
            raise ValueError(f"unknown switch init '{init}'; use one of {', '.join(INITS)}")
        self.mode, self.init = mode, init
        self.theta = nn.Parameter(torch.empty(n))
        switch_init_(self.theta, init)

    def switches(self) -> Tensor:
        return F.relu(self.theta)  # (out,)

    def penalty(self) -> Tensor:
        """The L1 switch penalty (``strict``: of the positive part)."""
        return switch_penalty(self.theta, self.mode)

    def alive_mask(self) -> Tensor:
        return self.theta.detach() > 0  # (out,)

    def capacity(self) -> int:
        """The number of live units (the layer's L0)."""
        return int(self.alive_mask().sum())

    def fold_into_weights(self) -> None:
        """Multiply the switches into the weights (and bias); switches become 1 / 0 (dead stays dead)."""
        with torch.no_grad():
            s = self.switches()  # (out,)
            w = self.weight
            w.mul_(s.view(-1, *([1] * (w.dim() - 1))))
            if self.bias is not None:
                self.bias.mul_(s)
            self.theta.copy_((s > 0).to(s.dtype))


class SwitchLinear(nn.Linear, _Switched):
    """``(W x + b) * relu(theta)``: a Linear whose output units carry switches (ReLU goes after)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, mode: str = "strict",
                 init: str = "one") -> None:  # fmt: skip
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._init_switches(out_features, mode, init)

    def reset_parameters(self) -> None:
        nn.Linear.reset_parameters(self)
        if hasattr(self, "theta"):
            switch_init_(self.theta, self.init)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) * F.relu(self.theta)  # (B, out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}, init={self.init}"


class SwitchConv2d(nn.Conv2d, _Switched):
    """``BN(conv(x)) * relu(theta)`` per output channel (the BatchNorm optional, before the switch:
    a switch before a BatchNorm would be normalised away)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, *, batch_norm: bool = False, mode: str = "strict",
                 init: str = "one") -> None:  # fmt: skip
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else None
        self._init_switches(out_channels, mode, init)

    def reset_parameters(self) -> None:
        nn.Conv2d.reset_parameters(self)
        if hasattr(self, "theta"):
            switch_init_(self.theta, self.init)

    def forward(self, x: Tensor) -> Tensor:
        h = self._conv_forward(x, self.weight, self.bias)  # (B, out, H, W)
        if self.bn is not None:
            h = self.bn(h)
        return h * F.relu(self.theta)[:, None, None]  # (B, out, H, W)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}, init={self.init}"


@dataclass
class SizePenaltyScheduler:
    """lambda per member: divided by ``decay`` whenever a member collapses to 0 units (Leclerc's
    ``lambda_decay``: start at 10, / 10 on collapse, at least ``min_lam``); ``decay = 0``: fixed."""

    lam: Tensor  # (P,)
    decay: float = 10.0
    min_lam: float = 1e-7

    def step(self, capacity: Tensor) -> Tensor:
        """``capacity`` (P,) live units per member; returns the collapsed members' mask (P,)."""
        collapsed = capacity == 0
        if self.decay and bool(collapsed.any()):
            lowered = torch.clamp(self.lam / self.decay, min=self.min_lam)
            self.lam = torch.where(collapsed, lowered, self.lam)
        return collapsed


def kill_steps(theta0: float, lr: float) -> int:
    """Adam steps for a switch starting at ``theta0`` to reach 0 at full speed (one lr per step)."""
    return math.ceil(theta0 / lr)
