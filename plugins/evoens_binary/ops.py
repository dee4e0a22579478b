"""Binarisation and straight-through estimators (STE) for binarized networks.

References: Bengio, Léonard, Courville 2013 (straight-through estimator); Hubara, Courbariaux et al.,
"Binarized Neural Networks", NeurIPS 2016 (clipped STE); Liu et al., "Bi-Real Net", ECCV 2018
(ApproxSign); Darabi et al., "BNN+", 2018 (SwishSign); Yin et al., "Understanding Straight-Through
Estimator in Training Activation Quantized Neural Nets", ICLR 2019 (ReLU STE); Kim et al., "BinaryDuo",
ICLR 2020 (0/1 step activations, k-bit quantisers, the STE zoo compared against CDG).

Forward functions (two conventions):

* ``sign``: ±1, with 0 mapped to +1 (``torch.sign`` would give 0);
* ``step``: 0/1 as in BinaryDuo, ``1[clamp(x, 0, 1) >= 0.5] = 1[x >= 0.5]``;
* ``kbit(bits)``: ``round(clamp(x, 0, 1) * n) / n`` with ``n = 2**bits - 1`` (``bits=1`` is ``step``).

An STE runs the forward function and, on the way back, multiplies the incoming gradient by the
derivative ``g`` of a smooth *surrogate* ``F``. Surrogates are written in the ±1 convention; the
0/1 convention follows from the affine change ``u = 2x - 1``: ``step(x) = (sign(2x - 1) + 1) / 2``,
so ``F01(x) = (F(2x - 1) + 1) / 2`` and ``g01(x) = g(2x - 1)``.

Every STE is an ``autograd.Function`` with a separate ``setup_context`` and
``generate_vmap_rule = True``, so it works under ``torch.func.vmap`` / ``functional_call`` (the
batched population forward). Pure torch, no pluggy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

Convention = Literal["sign", "step", "kbit"]
CONVENTIONS: tuple[str, ...] = ("sign", "step", "kbit")


# ---------------------------------------------------------------- forward functions


def binarize_sign(x: Tensor) -> Tensor:
    """±1 with ``0 -> +1`` (and ``-0.0 -> +1``: ``-0.0 + 0.0`` is ``+0.0``)."""
    # copysign is one fused pass, ~3x faster than where(x >= 0, 1, -1) on the population tensors.
    return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), x + 0.0)


def binarize_step(x: Tensor) -> Tensor:
    """0/1: ``round(clamp(x, 0, 1)) = 1[x >= 0.5]`` (BinaryDuo)."""
    return (x >= 0.5).to(x.dtype)


def quantize_kbit(x: Tensor, bits: int) -> Tensor:
    """``round(clamp(x, 0, 1) * n) / n`` with ``n = 2**bits - 1`` levels above 0."""
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    n = float(2**bits - 1)
    # Round half up (floor(v + 0.5)), not torch.round's half-to-even: bits=1 is then exactly step.
    return torch.floor(x.clamp(0.0, 1.0) * n + 0.5) / n


def quantize(x: Tensor, convention: Convention = "sign", bits: int = 1) -> Tensor:
    """The forward function of ``convention`` (``bits`` only matters for ``kbit``)."""
    if convention == "sign":
        return binarize_sign(x)
    if convention == "step":
        return binarize_step(x)
    if convention == "kbit":
        return quantize_kbit(x, bits)
    raise ValueError(f"unknown convention '{convention}'; use one of {', '.join(CONVENTIONS)}")


# ---------------------------------------------------------------- surrogates (±1 convention)

Fn = Callable[[Tensor], Tensor]


def _identity_f(x: Tensor) -> Tensor:
    return x


def _identity_g(x: Tensor) -> Tensor:
    return torch.ones_like(x)


def _clipped_f(x: Tensor) -> Tensor:
    return x.clamp(-1.0, 1.0)


def _clipped_g(x: Tensor) -> Tensor:
    return (x.abs() <= 1.0).to(x.dtype)


def _relu_f(x: Tensor) -> Tensor:
    # Yin et al.'s ReLU STE: in 0/1 coordinates F01 = relu(x), g01 = 1[x > 0]; here u = 2x - 1.
    return x.clamp_min(-1.0)


def _relu_g(x: Tensor) -> Tensor:
    return (x > -1.0).to(x.dtype)


def _approxsign_f(x: Tensor) -> Tensor:
    # Bi-Real's piecewise polynomial: 2x + x^2 on [-1, 0), 2x - x^2 on [0, 1), saturating at ±1.
    c = x.clamp(-1.0, 1.0)
    return 2 * c - c * c.abs()


def _approxsign_g(x: Tensor) -> Tensor:
    return (2 - 2 * x.abs()).clamp_min(0.0)


def _steep_f(k: float) -> Fn:
    return lambda x: (k * x).clamp(-1.0, 1.0)


def _steep_g(k: float) -> Fn:
    return lambda x: k * ((k * x).abs() <= 1.0).to(x.dtype)


def _swish_f(beta: float) -> Fn:
    def f(x: Tensor) -> Tensor:
        s = torch.sigmoid(beta * x)
        return 2 * s * (1 + beta * x * (1 - s)) - 1

    return f


def _swish_g(beta: float) -> Fn:
    def g(x: Tensor) -> Tensor:
        bx = beta * x
        return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))

    return g


# ---------------------------------------------------------------- the autograd function


class _StraightThrough(torch.autograd.Function):
    """Forward ``quantize(x)``; backward ``grad * g(x)`` with ``g`` the surrogate derivative."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, forward_fn: Fn, grad_fn: Fn) -> Tensor:  # type: ignore[override]
        return forward_fn(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, _, grad_fn = inputs
        ctx.save_for_backward(x)
        ctx.grad_fn = grad_fn

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * ctx.grad_fn(x), None, None


@dataclass(frozen=True)
class STE:
    """A straight-through estimator: ``ste(x)`` quantizes ``x``; its gradient is ``g(x)``.

    ``name`` and ``params`` identify it (``STE("steep", {"k": 2.0})``); build one with :func:`ste`.
    """

    name: str
    params: dict[str, float] = field(default_factory=dict)
    _f: Fn = field(default=_identity_f, repr=False, compare=False)
    _g: Fn = field(default=_identity_g, repr=False, compare=False)

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.params.items()))))

    def surrogate(self, x: Tensor, convention: Convention = "sign") -> Tensor:
        """``F(x)`` in ``convention`` (the smooth function whose derivative the backward uses)."""
        if convention == "sign":
            return self._f(x)
        return (self._f(2 * x - 1) + 1) / 2

    def grad(self, x: Tensor, convention: Convention = "sign") -> Tensor:
        """``g(x) = F'(x)`` in ``convention``; for 0/1 and k-bit quantisers ``g01(x) = g(2x - 1)``."""
        return self._g(x) if convention == "sign" else self._g(2 * x - 1)

    def __call__(self, x: Tensor, convention: Convention = "sign", bits: int = 1) -> Tensor:
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown convention '{convention}'; use one of {', '.join(CONVENTIONS)}")
        if convention == "sign":
            fwd, bwd = binarize_sign, self._g
        else:
            g = self._g
            fwd = binarize_step if convention == "step" else (lambda t: quantize_kbit(t, bits))

            def bwd(t: Tensor) -> Tensor:
                return g(2 * t - 1)

        return _StraightThrough.apply(x, fwd, bwd)


# ---------------------------------------------------------------- registry


def _make_identity() -> STE:
    return STE("identity", {}, _identity_f, _identity_g)


def _make_clipped() -> STE:
    return STE("clipped", {}, _clipped_f, _clipped_g)


def _make_relu() -> STE:
    return STE("relu", {}, _relu_f, _relu_g)


def _make_approxsign() -> STE:
    return STE("approxsign", {}, _approxsign_f, _approxsign_g)


def _make_steep(k: float = 2.0) -> STE:
    if k <= 0:
        raise ValueError(f"steep STE needs k > 0, got k={k}")
    return STE("steep", {"k": float(k)}, _steep_f(float(k)), _steep_g(float(k)))


def _make_swishsign(beta: float = 5.0) -> STE:
    if beta <= 0:
        raise ValueError(f"swishsign STE needs beta > 0, got beta={beta}")
    return STE("swishsign", {"beta": float(beta)}, _swish_f(float(beta)), _swish_g(float(beta)))


STES: dict[str, Callable[..., STE]] = {
    "identity": _make_identity,
    "clipped": _make_clipped,
    "relu": _make_relu,
    "steep": _make_steep,
    "approxsign": _make_approxsign,
    "swishsign": _make_swishsign,
}
ALIASES: dict[str, str] = {
    "vanilla": "clipped",
    "hardtanh": "clipped",
    "pass": "identity",
    "poly": "approxsign",
    "polynomial": "approxsign",
}


def ste(name: str | STE, **params: float) -> STE:
    """The STE called ``name`` (or an alias), e.g. ``ste("clipped")``, ``ste("steep", k=2)``."""
    if isinstance(name, STE):
        if params:
            raise ValueError(f"STE '{name.name}' is already built; pass parameters with its name instead")
        return name
    key = ALIASES.get(name, name)
    if key not in STES:
        known = ", ".join(sorted([*STES, *ALIASES]))
        raise ValueError(f"unknown STE '{name}'; known: {known}")
    try:
        return STES[key](**params)
    except TypeError:
        raise ValueError(f"STE '{name}' does not take parameters {sorted(params)}") from None
