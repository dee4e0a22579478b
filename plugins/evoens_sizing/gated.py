"""The flexible ("metric-less") layer: a sigmoid gate over the units with a learnable size x0.

G. Leclerc, R. Castro Fernandez, S. Madden, "Learning Network Size While Training with ShrinkNets"
(SysML 2018); the journal's ``MNIST_1h_flexible`` / ``SemiFlexibleLinear`` (mitdbg/fastdeepnets,
2017-10-23..30).

Unit i of N is scaled by ``g_i = sigmoid(k (x0 - i))``: units left of x0 are on, right of it off,
with a gray zone of width ``2 ln((1 - eps)/eps) / k`` in between. The size penalty is the gate's
integral, not its sum, in closed form::

    S(x0) = int_0^N sigmoid(k (x0 - u)) du = [softplus(k x0) - softplus(k (x0 - N))] / k

which lies in [0, N] for every x0 (the journal's ``x0`` itself as a penalty goes to -inf and
diverges). x0 starts at the requested size (the journal's "BIG implementation error" was x0 always
starting at 1). k is fixed (0.4 at the journal's HEAD).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gate(x0: Tensor, k: float, n: int) -> Tensor:
    """``sigmoid(k (x0 - i))`` for i = 0..n-1: ``(...,) -> (..., n)``."""
    i = torch.arange(n, dtype=x0.dtype, device=x0.device)  # (n,)
    return torch.sigmoid(k * (x0[..., None] - i))  # (..., n)


def gate_integral(x0: Tensor, k: float, n: int) -> Tensor:
    """``S(x0)`` of the module docstring, elementwise, finite and in [0, n] for every finite or
    infinite x0. With ``a = k x0`` and ``c = k n``: for ``a < c`` the two softplus terms are at most
    ``c + ln 2`` (no cancellation); for ``a >= c`` it is ``c + softplus(-a) - softplus(c - a)``,
    both terms of non-positive arguments."""
    a = k * x0
    c = torch.as_tensor(k * n, dtype=a.dtype, device=a.device)
    lower = a < c
    below, above = torch.where(lower, a, c), torch.where(lower, c, a)  # each branch: finite arguments only
    low = F.softplus(below) - F.softplus(below - c)
    high = c + F.softplus(-above) - F.softplus(c - above)
    return torch.minimum(F.relu(torch.where(lower, low, high)), c) / k


def gray_zone(k: float, eps: float = 0.01) -> float:
    """Width of the zone where ``eps < g < 1 - eps``: ``2 ln((1 - eps)/eps) / k``."""
    return 2.0 * math.log((1.0 - eps) / eps) / k


class _Gated:
    """What a gated layer shares: x0 (learnable, stored as ``x0_raw = x0 / x0_scale``), the slope k,
    the gate over ``_units`` outputs, its integral penalty and the effective size."""

    start: float
    x0_scale: float
    x0_raw: nn.Parameter
    k: Tensor

    def _init_gate(self, k: float, x0_scale: float, learn_k: bool) -> None:
        """Called after the layer's own ``__init__`` (which calls ``reset_parameters`` before x0 exists)."""
        self.x0_raw = nn.Parameter(torch.tensor(self.start / x0_scale))
        if learn_k:
            self.k = nn.Parameter(torch.tensor(float(k)))
        else:
            self.register_buffer("k", torch.tensor(float(k)))  # type: ignore[attr-defined]

    @staticmethod
    def _check(k: float, x0_scale: float) -> None:
        if k <= 0 or not math.isfinite(k):
            raise ValueError(f"gate slope k must be a positive number, got {k}")
        if x0_scale <= 0:
            raise ValueError(f"x0_scale must be > 0, got {x0_scale}")

    units_attr = "out_features"  # the layer's attribute that counts the gated units

    @property
    def _units(self) -> int:
        return int(getattr(self, self.units_attr))

    def reset_parameters(self) -> None:
        super().reset_parameters()  # type: ignore[misc]
        if hasattr(self, "x0_raw"):
            with torch.no_grad():
                self.x0_raw.fill_(self.start / self.x0_scale)

    @property
    def x0(self) -> Tensor:
        return self.x0_raw * self.x0_scale  # ()

    def gate(self) -> Tensor:
        return gate(self.x0, self.k, self._units)  # (units,)

    def size_penalty(self) -> Tensor:
        """The gate integral S(x0) in [0, units]."""
        return gate_integral(self.x0, self.k, self._units)

    def effective_size(self) -> float:
        """x0 clamped to [0, units]."""
        return float(self.x0.detach().clamp(0, self._units))


class GatedLinear(_Gated, nn.Linear):
    """``(W x + b) * g(x0)`` (ReLU goes after; g > 0, so it equals ``relu(W x + b) * g``).

    x0 is stored as ``x0 / x0_scale``: with ``x0_scale = s`` one Adam of learning rate ``lr`` moves
    x0 as an Adam of rate ``s * lr`` would (Adam is invariant to gradient scale), which lets a
    population trainer with one optimizer give x0 its own rate. Standalone, keep ``x0_scale = 1``
    and use :func:`gate_param_groups`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, k: float = 0.4,
                 x0: float | None = None, learn_k: bool = False, x0_scale: float = 1.0) -> None:  # fmt: skip
        self._check(k, x0_scale)
        self.start, self.x0_scale = float(out_features if x0 is None else x0), float(x0_scale)
        super().__init__(in_features, out_features, bias)
        self._init_gate(k, x0_scale, learn_k)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) * self.gate()  # (B, out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={float(self.k):g}, x0={float(self.x0.detach()):.4g}"


class GatedConv2d(_Gated, nn.Conv2d):
    """``conv(x) * g(x0)`` per output channel: the gate of :class:`GatedLinear` over channels."""

    units_attr = "out_channels"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, *, k: float = 0.4, x0: float | None = None) -> None:  # fmt: skip
        self._check(k, 1.0)
        self.start, self.x0_scale = float(out_channels if x0 is None else x0), 1.0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self._init_gate(k, 1.0, learn_k=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight, self.bias) * self.gate()[:, None, None]  # (B, out, H, W)


def gate_param_groups(model: nn.Module, lr_x0: float = 1.0, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Two optimizer groups: every parameter but the gates' x0 (with ``weight_decay``), and the x0s
    with learning rate ``lr_x0`` (the journal's 1) and no weight decay. Weight decay on the weights
    plateaus the size (it zeroes the outgoing weights of gated-off units): a warning says so."""
    if weight_decay > 0:
        warnings.warn(
            f"weight_decay={weight_decay} on a gated network: L2 drives gated-off units' outgoing weights to 0 "
            "and the size plateaus (journal 2017-11-01); make it tiny or 0", stacklevel=2,
        )  # fmt: skip
    gates = [m.x0_raw for m in model.modules() if isinstance(m, (GatedLinear, GatedConv2d))]
    ids = {id(p) for p in gates}
    rest: Iterable[nn.Parameter] = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": list(rest), "weight_decay": weight_decay}, {"params": gates, "lr": lr_x0, "weight_decay": 0.0}]
