"""Forward strategies for a batched population (P networks of one architecture, one call).

Every strategy maps ``(template, params, buffers, x)`` to the stacked outputs ``(P, B, ...)`` of all
members; ``params``/``buffers`` are ``name -> (P, ...)`` tensors and ``x`` is either shared ``(B, ...)``
or per member ``(P, B, ...)``.

- ``loop``: the reference, one ``torch.func.functional_call`` per member.
- ``vmap``: ``torch.vmap`` over ``functional_call``; generic, and the only batched one for train mode.
- ``bmm``: linear stacks as batched GEMMs in a transposed layout, activations ``(P, features, B)``
  so each layer is ``baddbmm(bias (P,out,1), W (P,out,in), h (P,in,B))`` on views of the flat
  parameters, with no weight copies.
- ``grouped_conv``: conv stacks with members as groups of one ``F.conv2d(groups=P)`` per layer,
  then the dense tail through the ``bmm`` path.

``bmm`` and ``grouped_conv`` read the architecture from an ``nn.Sequential`` (nested allowed) of
known layers; ``why_not`` names the first layer they cannot run. Their layers never mix samples
(batch-statistics BatchNorm is refused), so they set ``per_sample`` and the population may split
the batch. Two exact rewrites keep pooled conv stacks memory-light: a monotone activation before a
max pool runs after it (``max f(a) = f(max a)``, on a quarter of the elements), and a
non-overlapping max pool without grad is a maximum of strided views. Without grad on CPU, tanh
runs as ``2 sigmoid(2x) - 1`` (:func:`cpu_tanh`, 5x faster, within 2e-7). Pure torch, no pluggy.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Tensors = dict[str, Tensor]


class UnsupportedInput(ValueError):
    """The architecture is supported but this input's shape is not (``auto`` then skips it)."""


class Strategy(ABC):
    """A way to run all members' forward at once; subclasses set ``name`` and implement both methods."""

    name: str = ""
    per_sample: bool = False  # True: each sample's output depends on that sample only (batch may split)

    @abstractmethod
    def why_not(self, template: nn.Module) -> str | None:
        """None when this strategy can run ``template``, else a reason naming the layer."""

    def supports(self, template: nn.Module) -> bool:
        return self.why_not(template) is None

    @abstractmethod
    def forward(
        self, template: nn.Module, params: Tensors, buffers: Tensors, x: Tensor, *, size: int, per_member: bool
    ) -> Tensor:
        """All members on ``x``: ``(P, B, ...)`` outputs."""


def _member(d: Tensors, i: int) -> Tensors:
    return {k: v[i] for k, v in d.items()}


class LoopStrategy(Strategy):
    name = "loop"

    def why_not(self, template: nn.Module) -> str | None:
        return None

    def forward(
        self, template: nn.Module, params: Tensors, buffers: Tensors, x: Tensor, *, size: int, per_member: bool
    ) -> Tensor:
        # Buffers are passed as views, so train-mode BatchNorm updates each member's own stats.
        outs = [
            functional_call(template, ({**_member(params, i), **_member(buffers, i)},), (x[i] if per_member else x,))
            for i in range(size)
        ]
        return torch.stack(outs)  # (P, B, ...out)


class VmapStrategy(Strategy):
    name = "vmap"

    def why_not(self, template: nn.Module) -> str | None:
        return None

    def forward(
        self, template: nn.Module, params: Tensors, buffers: Tensors, x: Tensor, *, size: int, per_member: bool
    ) -> Tensor:
        def one(p: Tensors, b: Tensors, xi: Tensor) -> Tensor:
            return functional_call(template, ({**p, **b},), (xi,))

        # "different": members draw independent dropout masks, as they would in the loop.
        run = torch.vmap(one, in_dims=(0, 0, 0 if per_member else None), randomness="different")
        return run(params, buffers, x)  # (P, B, ...out)


# ---------------------------------------------------------------- planned (Sequential) strategies


class Op(NamedTuple):
    kind: str  # linear | bn1d | bn2d | conv | pool | act | flatten | softmax
    name: str  # module path in the template ("" for a bare layer)
    module: nn.Module

    def key(self, attr: str) -> str:
        return f"{self.name}.{attr}" if self.name else attr


_ACTS = (
    nn.ReLU,
    nn.ReLU6,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.Softplus,
    nn.Hardtanh,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softsign,
    nn.Identity,
)
# Non-decreasing activations: they commute with a max pool.
_MONOTONE = (nn.ReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Softsign, nn.Hardsigmoid, nn.Identity)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _plain(m: nn.Module, classes: tuple[type[nn.Module], ...]) -> bool:
    # Exact forward match: a subclass that overrides forward (e.g. a noisy Linear) is not a Linear.
    return any(isinstance(m, c) and type(m).forward is c.forward for c in classes)


def _leaves(module: nn.Module, name: str = "") -> list[tuple[str, nn.Module]]:
    if _plain(module, (nn.Sequential,)) and not (module._forward_hooks or module._forward_pre_hooks):
        return [
            leaf
            for child_name, child in module.named_children()
            for leaf in _leaves(child, f"{name}.{child_name}" if name else child_name)
        ]
    return [(name, module)]


def _label(name: str, m: nn.Module) -> str:
    return f"layer '{name}' ({type(m).__name__})" if name else f"layer ({type(m).__name__})"


def _classify(name: str, m: nn.Module) -> Op | str:
    label = _label(name, m)
    if m._forward_hooks or m._forward_pre_hooks:
        return f"{label} has forward hooks"
    if getattr(m, "inplace", False):
        m = copy.copy(m)  # never write into the caller's input or a tensor autograd saved
        m.inplace = False
    if _plain(m, (nn.Linear,)):
        return Op("linear", name, m)
    if _plain(m, (nn.Conv2d,)):
        return Op("conv", name, m)
    if _plain(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.training or m.running_mean is None:
            return f"{label} uses batch statistics (train mode or no running stats): use 'loop' or 'vmap'"
        return Op("bn1d" if isinstance(m, nn.BatchNorm1d) else "bn2d", name, m)
    if _plain(m, _DROPOUTS):
        return f"{label} is in train mode: use 'loop' or 'vmap'" if m.training else Op("act", name, m)
    if _plain(m, _ACTS) or getattr(type(m), "evoens_elementwise", False) is True:
        # A custom module may declare itself elementwise and parameter-free (``evoens_elementwise =
        # True``, e.g. a binarizing activation): it then runs on any layout like a known activation.
        return Op("act", name, m)
    if _plain(m, _POOLS) and not getattr(m, "return_indices", False):
        return Op("pool", name, m)
    if _plain(m, (nn.Flatten,)) and m.start_dim == 1 and m.end_dim == -1:
        return Op("flatten", name, m)
    if _plain(m, (nn.Softmax, nn.LogSoftmax)) and m.dim in (1, -1):
        return Op("softmax", name, m)
    return f"{label} is not supported (only nn.Sequential stacks of known layers are)"


def plan(template: nn.Module, kinds: frozenset[str]) -> list[Op] | str:
    """The template as a list of ops of the given kinds, or the reason it cannot be one."""
    ops: list[Op] = []
    for name, m in _leaves(template):
        op = _classify(name, m)
        if isinstance(op, str):
            return op
        if op.kind not in kinds:
            return f"{_label(name, m)} is not supported by this strategy"
        ops.append(op)
    return _pool_first(ops)


def _monotone(m: nn.Module) -> bool:
    if _plain(m, (nn.LeakyReLU,)):
        return m.negative_slope >= 0
    if _plain(m, (nn.ELU,)):
        return m.alpha >= 0
    return _plain(m, _MONOTONE) or (_plain(m, _DROPOUTS) and not m.training)


def _pool_first(ops: list[Op]) -> list[Op]:
    """Run a monotone activation after the max pool that follows it: the same values, 1/k² the work."""
    ops = list(ops)
    for i in range(len(ops) - 1):
        act, pool = ops[i], ops[i + 1]
        if act.kind == "act" and pool.kind == "pool" and _monotone(act.module):
            if _plain(pool.module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
                ops[i], ops[i + 1] = pool, act
    return ops


# Execution state: (mode, h). mode "x": the shared input, natural layout (B, ...); "pm": per-member
# input before its first layout-dependent op, (P, B, ...); "dense": (P, F, B); "conv": members'
# channels side by side, (B, P*C, H, W).
State = tuple[str, Tensor]


def _linear(op: Op, p: Tensors, b: Tensors, mode: str, h: Tensor, P: int) -> State:
    W, bias = p[op.key("weight")], p.get(op.key("bias"))  # (P, out, in), (P, out)
    out, inp = W.shape[1:]
    if mode == "conv":
        raise UnsupportedInput(f"Linear '{op.name}' applied to a conv feature map")
    if mode == "x":
        if h.dim() != 2:
            raise UnsupportedInput(f"Linear '{op.name}' on a shared input of shape {tuple(h.shape)}")
        if W.is_contiguous():
            # Members' weights are adjacent in memory: the whole layer is ONE (P*out, in) GEMM.
            Wf = W.reshape(P * out, inp)  # (P*out, in), a view
            y = Wf @ h.T if bias is None else torch.addmm(bias.reshape(P * out, 1), Wf, h.T)
            return "dense", y.view(P, out, h.shape[0])  # (P, out, B)
        h = h.T.expand(P, inp, h.shape[0])  # (P, in, B), stride 0: broadcast, not copied
    y = torch.bmm(W, h) if bias is None else torch.baddbmm(bias.unsqueeze(-1), W, h)
    return "dense", y  # (P, out, B)


def _bn(op: Op, p: Tensors, b: Tensors, mode: str, h: Tensor, P: int) -> State:
    m = op.module
    w, bias = p.get(op.key("weight")), p.get(op.key("bias"))  # (P, C) or None (affine=False)
    mean, var = b[op.key("running_mean")], b[op.key("running_var")]  # (P, C)
    if op.kind == "bn1d":
        if mode == "conv" or (mode == "x" and h.dim() != 2):
            raise UnsupportedInput(f"BatchNorm1d '{op.name}' on input of shape {tuple(h.shape)}")
        h = h.T if mode == "x" else h  # (F, B) broadcasts against (P, F, 1)
        y = (h - mean.unsqueeze(-1)) * torch.rsqrt(var + m.eps).unsqueeze(-1)  # (P, F, B)
        if w is not None:
            y = torch.addcmul(bias.unsqueeze(-1), y, w.unsqueeze(-1))
        return "dense", y
    if mode == "dense" or h.dim() != 4:
        raise UnsupportedInput(f"BatchNorm2d '{op.name}' on input of shape {tuple(h.shape)}")
    if mode == "x":
        h = h.repeat(1, P, 1, 1)  # (B, P*C, H, W): each member normalises with its own stats

    def flat(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.reshape(-1)  # (P, C) -> (P*C,)

    y = F.batch_norm(h, flat(mean), flat(var), flat(w), flat(bias), False, 0.0, m.eps)
    return "conv", y  # (B, P*C, H, W)


def _conv(op: Op, p: Tensors, b: Tensors, mode: str, h: Tensor, P: int) -> State:
    m: nn.Conv2d = op.module  # type: ignore[assignment]
    if mode == "dense" or h.dim() != 4:
        raise UnsupportedInput(f"Conv2d '{op.name}' on input of shape {tuple(h.shape)}")
    W, bias = p[op.key("weight")], p.get(op.key("bias"))  # (P, out, in/g, kh, kw), (P, out)
    W = W.reshape(-1, *W.shape[2:])  # (P*out, in/g, kh, kw)
    bias = None if bias is None else bias.reshape(-1)  # (P*out,)
    padding = m.padding
    if m.padding_mode != "zeros":
        h, padding = F.pad(h, m._reversed_padding_repeated_twice, mode=m.padding_mode), 0
    if mode == "x" and m.groups == 1:
        # Shared input: stacking the members' filters makes one ordinary conv, no input copies.
        return "conv", F.conv2d(h, W, bias, m.stride, padding, m.dilation)  # (B, P*out, H', W')
    if mode == "x":
        h = h.repeat(1, P, 1, 1)  # (B, P*C, H, W)
    return "conv", F.conv2d(h, W, bias, m.stride, padding, m.dilation, P * m.groups)


def _pool(op: Op, p: Tensors, b: Tensors, mode: str, h: Tensor, P: int) -> State:
    if mode == "dense":
        raise UnsupportedInput(f"{type(op.module).__name__} '{op.name}' on dense features")
    tiles = _tiles(op.module)
    fits = tiles is not None and h.dim() == 4 and h.shape[-2] >= tiles[0] and h.shape[-1] >= tiles[1]
    if fits and not (torch.is_grad_enabled() and h.requires_grad):
        return mode, tile_max(h, *tiles)  # type: ignore[misc]
    return mode, op.module(h)  # pooling is per channel, so the grouped layout is unaffected


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _tiles(m: nn.Module) -> tuple[int, int] | None:
    """(kh, kw) when ``m`` is a max pool over non-overlapping tiles (kernel == stride), else None."""
    if not _plain(m, (nn.MaxPool2d,)) or m.ceil_mode:
        return None
    k, s = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
    if k != s or _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1):
        return None
    return k


def tile_max(h: Tensor, kh: int, kw: int) -> Tensor:
    """``F.max_pool2d(h, (kh, kw))`` as the maximum of kh*kw strided views: (N, C, H, W) ->
    (N, C, H//kh, W//kw). About 10x faster on CPU than the pooling kernel; NaN propagates alike."""
    H, W = (h.shape[-2] // kh) * kh, (h.shape[-1] // kw) * kw
    h = h[..., :H, :W]
    out = h[..., 0::kh, 0::kw]
    for i in range(kh):
        for j in range(kw):
            if i or j:
                out = torch.maximum(out, h[..., i::kh, j::kw])
    return out  # (N, C, H//kh, W//kw)


def _act(op: Op, p: Tensors, b: Tensors, mode: str, h: Tensor, P: int) -> State:
    if _plain(op.module, (nn.Tanh,)) and h.device.type == "cpu" and h.dtype == torch.float32:
        if not (torch.is_grad_enabled() and h.requires_grad):
            return mode, cpu_tanh(h)
    return mode, op.module(h)  # elementwise: any layout


def cpu_tanh(h: Tensor) -> Tensor:
    """``tanh(h) = 2 sigmoid(2h) - 1`` in place on one new tensor: within 2e-7 of ``torch.tanh`` and
    about 5x faster on CPU, where torch's float32 tanh kernel costs about 8 sigmoids."""
    y = torch.mul(h, 2.0)
    return y.sigmoid_().mul_(2.0).sub_(1.0)


def _flatten(op: Op, p: Tensors, b: Tensors, mode: str, h: Tensor, P: int) -> State:
    if mode == "x":
        return mode, h.flatten(1)
    if mode == "conv":
        # (B, P*C, H, W) -> (B, P, C*H*W): each member's features in the module's own (C, H, W) order.
        return "dense", h.reshape(h.shape[0], P, -1).permute(1, 2, 0)  # (P, F, B)
    return mode, h


def _softmax(op: Op, p: Tensors, b: Tensors, mode: str, h: Tensor, P: int) -> State:
    if mode == "x":
        return mode, op.module(h)
    if mode == "conv":
        raise UnsupportedInput(f"{type(op.module).__name__} '{op.name}' on a conv feature map")
    fn = F.softmax if isinstance(op.module, nn.Softmax) else F.log_softmax
    return mode, fn(h, dim=-2)  # features are dim -2 in (P, F, B)


_STEPS: dict[str, Callable[[Op, Tensors, Tensors, str, Tensor, int], State]] = {
    "linear": _linear,
    "bn1d": _bn,
    "bn2d": _bn,
    "conv": _conv,
    "pool": _pool,
    "act": _act,
    "flatten": _flatten,
    "softmax": _softmax,
}


def _enter(op: Op, h: Tensor) -> State:
    """Per-member input (P, B, ...) into the layout the first non-elementwise op needs."""
    if op.kind == "flatten":
        return "dense", h.flatten(2).transpose(1, 2)  # (P, F, B)
    if h.dim() == 3:
        return "dense", h.transpose(1, 2)  # (P, F, B)
    if h.dim() == 5:
        return "conv", h.transpose(0, 1).reshape(h.shape[1], -1, *h.shape[3:])  # (B, P*C, H, W)
    raise UnsupportedInput(f"per-member input of shape {tuple(h.shape)} before '{op.name}'")


def run_plan(ops: list[Op], params: Tensors, buffers: Tensors, x: Tensor, size: int, per_member: bool) -> Tensor:
    """Execute ``ops`` for ``size`` members; returns ``(P, B, ...out)``."""
    P = size
    mode, h = ("pm" if per_member else "x"), x  # (P, B, ...) or (B, ...)
    for op in ops:
        if mode == "pm" and op.kind != "act":
            mode, h = _enter(op, h)
        mode, h = _STEPS[op.kind](op, params, buffers, mode, h, P)
    if mode == "dense":
        return h.transpose(1, 2).contiguous()  # (P, B, F)
    if mode == "conv":
        return h.reshape(h.shape[0], P, -1, *h.shape[2:]).transpose(0, 1)  # (P, B, C, H, W)
    if mode == "pm":
        return h
    return h.expand(P, *h.shape)  # no parameters at all: every member computes the same thing


class PlannedStrategy(Strategy):
    """A strategy that runs the template as a list of known ops (``kinds``)."""

    per_sample = True  # known layers only, none with batch statistics

    def __init__(self, name: str, kinds: frozenset[str], need: str | None = None) -> None:
        self.name, self.kinds, self.need = name, kinds, need

    def why_not(self, template: nn.Module) -> str | None:
        ops = plan(template, self.kinds)
        if isinstance(ops, str):
            return ops
        if self.need and not any(op.kind == self.need for op in ops):
            return f"no {self.need} layer (use 'bmm' for linear stacks)"
        return None

    def forward(
        self, template: nn.Module, params: Tensors, buffers: Tensors, x: Tensor, *, size: int, per_member: bool
    ) -> Tensor:
        ops = plan(template, self.kinds)
        if isinstance(ops, str):
            raise ValueError(f"strategy '{self.name}' cannot run this template: {ops}")  # noqa: TRY004
        return run_plan(ops, params, buffers, x, size, per_member)


_DENSE = frozenset({"linear", "bn1d", "act", "flatten", "softmax"})

STRATEGIES: dict[str, Strategy] = {
    "loop": LoopStrategy(),
    "vmap": VmapStrategy(),
    "bmm": PlannedStrategy("bmm", _DENSE),
    "grouped_conv": PlannedStrategy("grouped_conv", _DENSE | {"conv", "bn2d", "pool"}, need="conv"),
}
