"""Wide network vs ensemble: M sub-networks that form one wide network, cross-member blocks scaled by lambda.

Abe, Buchanan, Pleiss, Zemel, Cunningham, "Deep Ensembles Work, But Are They Necessary?" (NeurIPS
2022, arXiv:2202.06985) compare deep ensembles (Lakshminarayanan, Pritzel, Blundell, "Simple and
Scalable Predictive Uncertainty Estimation using Deep Ensembles", NeurIPS 2017) with one wide
network; their seed code (interpensembles) interpolates between the two. Spec: ensemble.md §2.5, §2.6.

Every hidden layer is one wide layer of width ``M·h`` whose weight is split into ``M × M`` blocks:
block ``(i, j)`` maps member ``j``'s features to member ``i``'s. The diagonal blocks are member ``i``'s
own weights; the off-diagonal (cross-member) blocks are multiplied by the constant ``lam`` (a
constructor argument, never trained). The first layer reads the shared input (its rows split into M
blocks, nothing to scale); the head is a block layer too, giving M members' logits ``(M, B, C)``:

    member_logits(x)[i] = W_i^head (S ⊙ φ(x)) + b_i     S: 1 on member i's features, lam elsewhere
    forward(x)          = mean_i member_logits(x)[i]    (B, C)   ("mean of logits")

- ``lam = 0``: exactly M independent narrow networks (:func:`members` extracts them); ``forward`` is
  their logit-mean ensemble (spec §2.3 (b): ``CE(forward)`` is the "big-model loss").
- ``lam = 1``: a plain wide network of width ``M·h`` whose single head has the averaged weights
  ``mean_i W_i^head`` and bias ``mean_i b_i`` (:func:`to_wide` builds it, at any lam).
- ``0 < lam < 1``: strictly between (all blocks live).

Unlike the seed, lambda scales the architecture, not a mixture of the losses of a wide net and
masked sub-nets sharing its weights. The seed's pitfalls do not arise: each weight is owned by one
module, so ``parameters()`` lists it once (the seed listed the base net twice); members are disjoint
blocks of the wide tensors, never one module reused (its accidental weight sharing); MLPs and plain
conv stacks have no residuals, so its zig-zag shortcut problem cannot occur (members are the
straight diagonal paths only).

Cost: for ``lam > 0`` a wide layer does ``(M·h_in)(M·h_out)`` multiply-adds per sample, M times the
ensemble's ``M·h_in·h_out``, plus one weight scaling per forward. At ``lam = 0`` the default
block-diagonal path runs only the diagonal blocks (one batched matmul or one grouped conv): the
ensemble's work, though the unused cross blocks still occupy memory (their gradients are zero).

Models are ordinary modules: ``Population.from_module(InterpMLP(...), P)`` runs P of them through
the ``loop`` or ``vmap`` strategy (the planned ``bmm``/``grouped_conv`` ones refuse the block layers).
Pure torch, no pluggy.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evoens.models import ACTIVATIONS, convnet, mlp

__all__ = [
    "BlockConv2d",
    "BlockLinear",
    "InterpCNN",
    "InterpMLP",
    "cnn_num_params",
    "equal_param_widths",
    "from_members",
    "members",
    "mlp_num_params",
    "num_params",
    "to_wide",
    "wide_channels",
    "wide_hidden",
]

Output = Literal["mean", "members"]
CrossInit = Literal["zeros", "fresh"]


# ---------------------------------------------------------------- block layers


def _check_lam(lam: float, block_diagonal: bool | None) -> tuple[float, bool]:
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    if block_diagonal and lam != 0.0:
        raise ValueError(f"block_diagonal=True needs lam = 0, got lam = {lam}")
    return lam, (lam == 0.0 if block_diagonal is None else block_diagonal)


def _blocks(weight: Tensor, M: int) -> Tensor:
    """(M·out, M·in, *k) -> (M, out, M, in, *k): block [i, :, j] maps member j to member i."""
    out, inp = weight.shape[0] // M, weight.shape[1] // M
    return weight.reshape(M, out, M, inp, *weight.shape[2:])


def scaled_weight(weight: Tensor, M: int, lam: float) -> Tensor:
    """The wide weight with its cross-member blocks times ``lam``: (M·out, M·in, *k)."""
    if lam == 1.0:
        return weight
    eye = torch.eye(M, dtype=weight.dtype, device=weight.device)
    scale = (lam + (1.0 - lam) * eye).reshape(M, 1, M, 1, *[1] * (weight.dim() - 2))  # (M, 1, M, 1, *1)
    return (_blocks(weight, M) * scale).reshape(weight.shape)


def diagonal_blocks(weight: Tensor, M: int) -> Tensor:
    """The members' own weights: (M·out, M·in, *k) -> (M, out, in, *k)."""
    return _blocks(weight, M).diagonal(dim1=0, dim2=2).movedim(-1, 0)


def _init_blocks(weight: Tensor, bias: Tensor, M: int, fan_in: int) -> None:
    """Diagonal blocks and bias as a narrow layer's default (U(±1/√fan_in)); cross blocks as a wide
    layer's (U(±1/√(M·fan_in))), so that at lam = 1 pre-activations have < 2× the narrow variance."""
    with torch.no_grad():
        weight.uniform_(-1.0 / math.sqrt(M * fan_in), 1.0 / math.sqrt(M * fan_in))
        diagonal_blocks(weight, M).uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))  # a view
        bias.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))


class BlockLinear(nn.Module):
    """A wide linear layer ``(B, M·in) -> (B, M·out)`` of M×M blocks, cross blocks times ``lam``."""

    def __init__(
        self, in_features: int, out_features: int, members: int, lam: float, *, block_diagonal: bool | None = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.members = in_features, out_features, members
        self.lam, self.block_diagonal = _check_lam(lam, block_diagonal)
        self.weight = nn.Parameter(torch.empty(members * out_features, members * in_features))
        self.bias = nn.Parameter(torch.empty(members * out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_blocks(self.weight, self.bias, self.members, self.in_features)

    def forward(self, h: Tensor) -> Tensor:
        if not self.block_diagonal:
            return F.linear(h, scaled_weight(self.weight, self.members, self.lam), self.bias)  # (B, M·out)
        M, B = self.members, h.shape[0]
        own = diagonal_blocks(self.weight, M)  # (M, out, in)
        y = torch.einsum("bmi,moi->bmo", h.reshape(B, M, self.in_features), own)  # (B, M, out)
        return y.reshape(B, -1) + self.bias  # (B, M·out)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, members={self.members}, lam={self.lam}"


class BlockConv2d(nn.Module):
    """A wide 'same'-padded conv ``(B, M·in, H, W) -> (B, M·out, H, W)`` of M×M blocks."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, members: int, lam: float, *,
        block_diagonal: bool | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.in_channels, self.out_channels, self.kernel, self.members = in_channels, out_channels, kernel, members
        self.lam, self.block_diagonal = _check_lam(lam, block_diagonal)
        self.weight = nn.Parameter(torch.empty(members * out_channels, members * in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(members * out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_blocks(self.weight, self.bias, self.members, self.in_channels * self.kernel**2)

    def forward(self, h: Tensor) -> Tensor:
        pad = self.kernel // 2
        if not self.block_diagonal:
            return F.conv2d(h, scaled_weight(self.weight, self.members, self.lam), self.bias, padding=pad)
        own = diagonal_blocks(self.weight, self.members).flatten(0, 1)  # (M·out, in, k, k)
        return F.conv2d(h, own, self.bias, padding=pad, groups=self.members)  # (B, M·out, H, W)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel={self.kernel}, members={self.members}, lam={self.lam}"


# ---------------------------------------------------------------- models


class _Interp(nn.Module, ABC):
    """Shared by both families: ``features`` (B, ...) -> (B, M·F) member-major, ``head`` -> (B, M·C)."""

    features: nn.Sequential
    head: BlockLinear

    def __init__(self, num_classes: int, members: int, lam: float, output: Output) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        if output not in ("mean", "members"):
            raise ValueError(f"output must be 'mean' or 'members', got {output!r}")
        self.num_classes, self.members, self.lam, self.output = num_classes, members, float(lam), output

    def member_logits(self, x: Tensor) -> Tensor:
        """Every member's logits: (B, ...) -> (M, B, C)."""
        z = self.head(self.features(x))  # (B, M·C)
        return z.reshape(z.shape[0], self.members, self.num_classes).transpose(0, 1)  # (M, B, C)

    def forward(self, x: Tensor) -> Tensor:
        """(B, ...) -> mean of the members' logits (B, C), or with ``output="members"`` all (B, M, C)."""
        logits = self.member_logits(x)  # (M, B, C)
        return logits.mean(0) if self.output == "mean" else logits.transpose(0, 1)

    @abstractmethod
    def narrow(self) -> nn.Sequential:
        """A freshly initialised narrow network of one member's architecture."""


class InterpMLP(_Interp):
    """M MLPs ``in -> hidden[0] -> ... -> num_classes`` as one wide MLP; inputs (B, in) or (B, *shape)."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], num_classes: int, members: int = 2, lam: float = 0.0, *,
        activation: str = "relu", output: Output = "mean", block_diagonal: bool | None = None,
    ) -> None:  # fmt: skip
        super().__init__(num_classes, members, lam, output)
        if not hidden:
            raise ValueError("InterpMLP needs at least one hidden layer (the cross blocks live there)")
        self.in_features, self.hidden, self.activation = in_features, list(hidden), activation
        act, M = ACTIVATIONS[activation], members
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(in_features, M * hidden[0]), act()]
        for fan_in, fan_out in zip(hidden[:-1], hidden[1:]):
            layers += [BlockLinear(fan_in, fan_out, M, lam, block_diagonal=block_diagonal), act()]
        self.features = nn.Sequential(*layers)
        self.head = BlockLinear(hidden[-1], num_classes, M, lam, block_diagonal=block_diagonal)

    def narrow(self) -> nn.Sequential:
        return mlp((self.in_features,), self.num_classes, self.hidden, self.activation)


class InterpCNN(_Interp):
    """M conv nets (``evoens.models.convnet``: conv k×k 'same' -> activation -> max pool 2, per stage;
    then a linear head) as one wide conv net; inputs (B, C, H, W)."""

    def __init__(
        self, in_shape: tuple[int, int, int], channels: Sequence[int], num_classes: int, members: int = 2,
        lam: float = 0.0, *, kernel: int = 5, activation: str = "relu", output: Output = "mean",
        block_diagonal: bool | None = None,
    ) -> None:  # fmt: skip
        super().__init__(num_classes, members, lam, output)
        if not channels:
            raise ValueError("InterpCNN needs at least one conv stage")
        self.in_shape, self.channels, self.kernel, self.activation = tuple(in_shape), list(channels), kernel, activation
        act, M = ACTIVATIONS[activation], members
        c, h, w = in_shape
        layers: list[nn.Module] = [nn.Conv2d(c, M * channels[0], kernel, padding=kernel // 2), act(), nn.MaxPool2d(2)]
        for fan_in, fan_out in zip(channels[:-1], channels[1:]):
            conv = BlockConv2d(fan_in, fan_out, kernel, M, lam, block_diagonal=block_diagonal)
            layers += [conv, act(), nn.MaxPool2d(2)]
        for _ in channels:
            h, w = h // 2, w // 2
        # (B, M·c, h, w) flattens member-major, each member's block in its own (c, h, w) order.
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = BlockLinear(channels[-1] * h * w, num_classes, M, lam, block_diagonal=block_diagonal)

    def narrow(self) -> nn.Sequential:
        return convnet(self.in_shape, self.num_classes, tuple(self.channels), self.kernel, self.activation)


# ---------------------------------------------------------------- conversions


def _weighted(module: nn.Module) -> list[nn.Module]:
    kinds = (nn.Linear, nn.Conv2d, BlockLinear, BlockConv2d)
    return [m for m in module.modules() if isinstance(m, kinds)]


def _member_slice(layer: nn.Module, M: int, i: int) -> tuple[Tensor, Tensor]:
    """Member i's (weight, bias) in ``layer``: a diagonal block, or row block i of a shared-input layer."""
    if isinstance(layer, (BlockLinear, BlockConv2d)):
        return _blocks(layer.weight, M)[i, :, i], layer.bias.reshape(M, -1)[i]
    return layer.weight.reshape(M, -1, *layer.weight.shape[1:])[i], layer.bias.reshape(M, -1)[i]


def members(interp: _Interp, *, strict: bool = True) -> list[nn.Sequential]:
    """The M narrow networks (fresh tensors): equal to ``interp``'s members at lam = 0. With
    ``strict=False`` any lam is accepted and the diagonal paths alone are returned."""
    if strict and interp.lam != 0.0:
        raise ValueError(f"members equal the model's only at lam = 0, got lam = {interp.lam} (strict=False to force)")
    nets = [interp.narrow().to(interp.head.weight) for _ in range(interp.members)]
    wide = _weighted(interp)
    with torch.no_grad():
        for i, net in enumerate(nets):
            for src, dst in zip(wide, _weighted(net)):
                weight, bias = _member_slice(src, interp.members, i)
                dst.weight.copy_(weight)
                dst.bias.copy_(bias)
    return nets


def from_members(
    nets: Sequence[nn.Module], lam: float, *, in_shape: tuple[int, int, int] | None = None,
    cross: CrossInit = "zeros", output: Output = "mean",
) -> InterpMLP | InterpCNN:  # fmt: skip
    """One model whose diagonal blocks are copies of ``nets`` (architectures of ``evoens.models.mlp`` /
    ``convnet``). Cross blocks: ``"zeros"`` (at every lam the model starts as exactly the ensemble) or
    ``"fresh"`` (the default init). Conv nets need ``in_shape``."""
    if cross not in ("zeros", "fresh"):
        raise ValueError(f"cross must be 'zeros' or 'fresh', got {cross!r}")
    interp = _like(nets[0], len(nets), lam, in_shape, output).to(next(nets[0].parameters()))
    want = repr(interp.narrow())
    for k, net in enumerate(nets):
        if repr(net) != want:
            raise ValueError(f"net {k} is not the architecture {want}")
    with torch.no_grad():
        if cross == "zeros":
            for layer in _weighted(interp):
                if isinstance(layer, (BlockLinear, BlockConv2d)):
                    layer.weight.zero_()
        for i, net in enumerate(nets):
            for dst, src in zip(_weighted(interp), _weighted(net)):
                weight, bias = _member_slice(dst, interp.members, i)
                weight.copy_(src.weight)
                bias.copy_(src.bias)
    return interp


def _like(
    net: nn.Module, M: int, lam: float, in_shape: tuple[int, int, int] | None, output: Output
) -> InterpMLP | InterpCNN:
    """An interp model whose members have ``net``'s architecture (read off its layers)."""
    acts = [name for m in net.modules() for name, cls in ACTIVATIONS.items() if type(m) is cls]
    activation = acts[0] if acts else "identity"
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    classes = linears[-1].out_features
    if not convs:
        hidden = [m.out_features for m in linears[:-1]]
        return InterpMLP(linears[0].in_features, hidden, classes, M, lam, activation=activation, output=output)
    if in_shape is None:
        raise ValueError("from_members needs in_shape=(C, H, W) for conv nets")
    channels, kernel = [m.out_channels for m in convs], convs[0].kernel_size[0]
    return InterpCNN(in_shape, channels, classes, M, lam, kernel=kernel, activation=activation, output=output)


def _plain(layer: nn.Module, M: int) -> nn.Module:
    """A block layer as the ordinary wide layer with the scaled weight; other layers copied."""
    if isinstance(layer, BlockLinear):
        plain: nn.Module = nn.Linear(M * layer.in_features, M * layer.out_features)
    elif isinstance(layer, BlockConv2d):
        plain = nn.Conv2d(M * layer.in_channels, M * layer.out_channels, layer.kernel, padding=layer.kernel // 2)
    else:
        return copy.deepcopy(layer)
    with torch.no_grad():
        plain.weight.copy_(scaled_weight(layer.weight, M, layer.lam))
        plain.bias.copy_(layer.bias)
    return plain.to(layer.weight)


def to_wide(interp: _Interp) -> nn.Sequential:
    """The plain wide ``nn.Sequential`` (fresh tensors) equal to ``interp``'s mean-logit output at any lam:
    every block layer with its scaled weight, one head ``Linear(M·F, C)`` with ``mean_i`` of the members'
    scaled head rows and biases. At lam = 1 these are the raw weights: the wide network."""
    M, C, head = interp.members, interp.num_classes, interp.head
    body = [_plain(layer, M) for layer in interp.features]
    wide_head = nn.Linear(M * head.in_features, C)
    with torch.no_grad():
        wide_head.weight.copy_(scaled_weight(head.weight, M, head.lam).reshape(M, C, -1).mean(0))  # (C, M·F)
        wide_head.bias.copy_(head.bias.reshape(M, C).mean(0))
    return nn.Sequential(*body, wide_head.to(head.weight))


# ---------------------------------------------------------------- parameter counts


def mlp_num_params(in_features: int, hidden: Sequence[int], num_classes: int) -> int:
    """Parameters of ``evoens.models.mlp``: sum of (fan_in + 1)·fan_out."""
    widths = [in_features, *hidden, num_classes]
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))


def cnn_num_params(in_shape: tuple[int, int, int], channels: Sequence[int], num_classes: int, kernel: int = 5) -> int:
    """Parameters of ``evoens.models.convnet`` (k×k 'same' convs, each followed by a 2×2 max pool)."""
    c, h, w = in_shape
    total = 0
    for out in channels:
        total += (c * kernel * kernel + 1) * out
        c, h, w = out, h // 2, w // 2
    return total + (c * h * w + 1) * num_classes


def num_params(interp: _Interp) -> int:
    """Parameters of the plain network ``interp`` equals: at lam = 0 the M narrow nets (M × one member),
    at lam = 1 the wide net with one head (:func:`to_wide`), in between every parameter (all live)."""
    M, lam, total = interp.members, interp.lam, 0
    for layer in _weighted(interp):
        weight = layer.weight.numel()
        if isinstance(layer, (BlockLinear, BlockConv2d)) and lam == 0.0:
            weight //= M  # only the diagonal blocks reach the output
        total += weight + layer.bias.numel()
    if lam == 1.0:
        total -= (M - 1) * (interp.head.weight.numel() + interp.head.bias.numel()) // M  # M heads act as one
    return total


def equal_param_widths(count: Callable[[list[int]], int], base: Sequence[int], target: int) -> list[int]:
    """Widths proportional to ``base`` whose ``count`` is closest to ``target`` (ties: the smaller)."""
    if not base or min(base) < 1:
        raise ValueError(f"base widths must be positive, got {list(base)}")

    def widths(first: int) -> list[int]:
        return [max(1, round(first * b / base[0])) for b in base]

    best, first = widths(1), 1
    while count(widths(first)) < target:
        first += 1
        best = widths(first)
    below = widths(max(1, first - 1))
    return below if abs(count(below) - target) <= abs(count(best) - target) else best


def wide_hidden(in_features: int, hidden: Sequence[int], num_classes: int, members: int) -> list[int]:
    """Hidden widths of ONE MLP with about the parameters of ``members`` MLPs of width ``hidden``."""
    target = members * mlp_num_params(in_features, hidden, num_classes)
    return equal_param_widths(lambda w: mlp_num_params(in_features, w, num_classes), hidden, target)


def wide_channels(
    in_shape: tuple[int, int, int], channels: Sequence[int], num_classes: int, members: int, kernel: int = 5
) -> list[int]:
    """Channels of ONE conv net with about the parameters of ``members`` conv nets of ``channels``."""
    target = members * cnn_num_params(in_shape, channels, num_classes, kernel)
    return equal_param_widths(lambda c: cnn_num_params(in_shape, c, num_classes, kernel), channels, target)
