"""Binarized layers: sign/step activations, BinaryLinear and BinaryConv2d with latent real weights.

References: Courbariaux et al., "BinaryConnect", NeurIPS 2015 (latent real weights, binary forward);
Rastegari et al., "XNOR-Net", ECCV 2016, arXiv:1603.05279 (per-output-channel scale
``alpha_o = ||W_o||_1 / n``); Kim et al., "BinaryDuo", ICLR 2020 (layer-wise ``alpha = mean|W|``).

A layer keeps real ("latent") weights as its parameters and binarizes them in every forward, so an
optimiser (or an evolution strategy) updates the real values while the network computes with
``alpha * sign(W)``. The scale is computed from ``W`` inside autograd, which gives the XNOR/Bi-Real
"magnitude-aware" weight gradient ``dC/dW = dC/dW~ * (alpha * g(W) + sign(W)/n)`` for free.
Optionally the layer also binarizes its *input* (XNOR-Net's BinActiv -> BinConv order). First and
last layers of a binary net are usually kept full precision: use plain ``nn.Linear``/``nn.Conv2d``.

The layers subclass ``nn.Linear``/``nn.Conv2d`` (same parameters, init and state-dict keys) but
override ``forward``, so the population strategies treat them as custom modules (``vmap``/``loop``).
Pure torch, no pluggy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from torch import Tensor, nn

from evoens_binary.ops import CONVENTIONS, STE, Convention, ste

WeightScale = Literal["none", "layer", "channel"]
WEIGHT_SCALES: tuple[str, ...] = ("none", "layer", "channel")


def binarize_weight(weight: Tensor, scale: WeightScale = "none", estimator: STE | str = "clipped") -> Tensor:
    """``alpha * sign(W)`` with the STE's backward; ``alpha`` per ``scale`` (none: 1, layer: mean|W|,
    channel: ``||W_o||_1 / n`` per output row/filter, n = fan-in)."""
    b = ste(estimator)(weight)  # (out, in, ...) in ±1
    if scale == "none":
        return b
    if scale == "layer":
        return weight.abs().mean() * b
    if scale == "channel":
        alpha = weight.abs().flatten(1).mean(1)  # (out,)
        return alpha.view(-1, *([1] * (weight.dim() - 1))) * b
    raise ValueError(f"unknown weight_scale '{scale}'; use one of {', '.join(WEIGHT_SCALES)}")


class BinaryActivation(nn.Module):
    """Elementwise binarization with a straight-through backward: ``sign``, ``step`` or ``kbit``."""

    # Parameter-free and elementwise: the bmm / grouped-conv population strategies may run it.
    evoens_elementwise = True

    def __init__(
        self, estimator: STE | str = "clipped", convention: Convention = "sign", bits: int = 1, **ste_params: float
    ) -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown convention '{convention}'; use one of {', '.join(CONVENTIONS)}")
        if convention == "kbit" and (int(bits) != bits or bits < 1):  # else it would fail at the first forward
            raise ValueError(f"kbit activation needs an integer bits >= 1, got bits={bits}")
        self.ste = ste(estimator, **ste_params)
        self.convention: Convention = convention
        self.bits = int(bits)

    def forward(self, x: Tensor) -> Tensor:
        return self.ste(x, self.convention, self.bits)

    def extra_repr(self) -> str:
        bits = f", bits={self.bits}" if self.convention == "kbit" else ""
        return f"ste={self.ste.name}{self.ste.params or ''}, convention={self.convention}{bits}"


class _BinaryMixin:
    """Shared option handling of BinaryLinear and BinaryConv2d."""

    weight: Tensor

    def _setup(
        self, weight_scale: WeightScale, binarize_input: bool, estimator: STE | str, weight_ste: STE | str | None
    ) -> None:
        if weight_scale not in WEIGHT_SCALES:
            raise ValueError(f"unknown weight_scale '{weight_scale}'; use one of {', '.join(WEIGHT_SCALES)}")
        self.weight_scale: WeightScale = weight_scale
        self.binarize_input = bool(binarize_input)
        self.ste = ste(estimator)  # activations (and weights unless weight_ste is given)
        self.weight_ste = None if weight_ste is None else ste(weight_ste)

    def binary_weight(self) -> Tensor:
        return binarize_weight(self.weight, self.weight_scale, self.weight_ste or self.ste)

    def binary_input(self, x: Tensor) -> Tensor:
        return self.ste(x) if self.binarize_input else x

    def _extra(self) -> str:
        w = (self.weight_ste or self.ste).name
        scale, inp = self.weight_scale, self.binarize_input
        return f", weight_scale={scale}, binarize_input={inp}, ste={self.ste.name}, weight_ste={w}"


class BinaryLinear(_BinaryMixin, nn.Linear):
    """``y = b(x) @ (alpha * sign(W))^T + bias``; ``b`` is the identity unless ``binarize_input``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        weight_scale: WeightScale = "none",
        binarize_input: bool = False,
        estimator: STE | str = "clipped",
        weight_ste: STE | str | None = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._setup(weight_scale, binarize_input, estimator, weight_ste)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self.binary_input(x), self.binary_weight(), self.bias)  # (B, out)

    def extra_repr(self) -> str:
        return nn.Linear.extra_repr(self) + self._extra()


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """``conv(b(x), alpha * sign(W)) + bias`` (XNOR-Net without the input scale map K)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        bias: bool = False,
        *,
        weight_scale: WeightScale = "none",
        binarize_input: bool = False,
        estimator: STE | str = "clipped",
        weight_ste: STE | str | None = None,
        **conv_kwargs: object,
    ) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, bias=bias, **conv_kwargs)
        self._setup(weight_scale, binarize_input, estimator, weight_ste)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.binary_input(x), self.binary_weight(), self.bias)  # (B, out, H', W')

    def extra_repr(self) -> str:
        return nn.Conv2d.extra_repr(self) + self._extra()


@contextmanager
def use_ste(model: nn.Module, estimator: STE | str, *, weights: bool = True) -> Iterator[nn.Module]:
    """Temporarily give every binarizing module of ``model`` the STE ``estimator``.

    Activations always switch; layer weights too unless ``weights=False``. Restores on exit."""
    new = ste(estimator)
    saved: list[tuple[nn.Module, str, STE | None]] = []
    for m in model.modules():
        if isinstance(m, (BinaryActivation, _BinaryMixin)):
            saved.append((m, "ste", m.ste))
            m.ste = new
        if weights and isinstance(m, _BinaryMixin):
            saved.append((m, "weight_ste", m.weight_ste))
            m.weight_ste = new
    try:
        yield model
    finally:
        for m, attr, old in reversed(saved):
            setattr(m, attr, old)


def sign_mlp(sizes: Sequence[int], estimator: STE | str = "clipped", *, bias: bool = False) -> nn.Sequential:
    """Full-precision ``Linear`` layers with ±1 (sign) hidden units and a linear output:
    ``sign_mlp([d, d, d, 1])`` is the seed's toy MLP ``d -> d -> d -> 1``."""
    if len(sizes) < 2:
        raise ValueError(f"sign_mlp needs at least [in, out] sizes, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(BinaryActivation(estimator))
    return nn.Sequential(*layers)


def binary_modules(model: nn.Module) -> list[nn.Module]:
    """The binarizing modules of ``model`` (activations and binary layers), in order."""
    return [m for m in model.modules() if isinstance(m, (BinaryActivation, _BinaryMixin))]
