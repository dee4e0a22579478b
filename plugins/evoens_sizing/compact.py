"""Compaction: dead units leave the tensors of their layer and of the next one, optimizer state too.

Smallify's "neural garbage collection" (Leclerc et al., arXiv:1806.03723, §4): switches at 0 mean
rows of this layer, entries of its BatchNorm and columns of the consumer that contribute nothing,
so they are cut out, and the optimizer's per-entry state (Adam's moments) is cut the same way.
Exact: a dead unit (``theta <= 0``) outputs exactly 0, so every member's function is unchanged up
to the consumer's summation order. Works on an ``nn.Sequential`` (a leading ``Flatten`` and nested
switch layers' BatchNorm allowed) and, with a leading member dim, on a whole population, where
every member keeps its own live units and is padded with dead ones to the widest member's count.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from evoens_sizing.switch import SwitchConv2d, SwitchLinear

SWITCHED = (SwitchLinear, SwitchConv2d)
# f(0) == 0 and per unit: a dead unit stays exactly 0 through these
ZERO_PRESERVING = (nn.ReLU, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Tanh,
                   nn.GELU)  # fmt: skip
CONSUMERS = (nn.Linear, nn.Conv2d)  # includes SwitchLinear, SwitchConv2d, GatedLinear


@dataclass
class UnitLayer:
    """A switch layer of a Sequential: where its units live in the state dict."""

    path: str
    width: int
    producer: list[tuple[str, int]] = field(default_factory=list)  # (state name, unit dim)
    consumer: list[tuple[str, int, int]] = field(default_factory=list)  # (name, dim, columns per unit)
    consumer_path: str = ""


class CompactionError(ValueError):
    """The architecture has a switch whose units cannot be removed exactly."""


def unit_plan(model: nn.Module) -> list[UnitLayer]:
    """Every switch layer of ``model`` (an ``nn.Sequential``) and its consumer."""
    if not isinstance(model, nn.Sequential):
        raise CompactionError(f"compaction reads an nn.Sequential, got {type(model).__name__}")
    names = [name for name, _ in model.named_children()]
    layers = []
    for i, name in enumerate(names):
        module = model.get_submodule(name)
        if isinstance(module, SWITCHED):
            layers.append(_layer(model, names, i))
        elif isinstance(module, nn.Sequential):
            raise CompactionError(f"nested Sequential '{name}': compaction reads a flat Sequential")
    return layers


def _layer(model: nn.Module, names: list[str], i: int) -> UnitLayer:
    path = names[i]
    module = model.get_submodule(path)
    width = module.theta.numel()
    producer = [(f"{path}.weight", 0), (f"{path}.theta", 0)]
    producer += [(f"{path}.bias", 0)] if module.bias is not None else []
    if getattr(module, "bn", None) is not None:
        bn = module.bn
        producer += [(f"{path}.bn.{k}", 0) for k in ("weight", "bias", "running_mean", "running_var")
                     if getattr(bn, k, None) is not None]  # fmt: skip
    flattened = False
    for name in names[i + 1 :]:
        nxt = model.get_submodule(name)
        if isinstance(nxt, nn.Flatten):
            flattened = True
        elif isinstance(nxt, CONSUMERS):
            fan_in = nxt.in_features if isinstance(nxt, nn.Linear) else nxt.in_channels
            block = fan_in // width if flattened and isinstance(nxt, nn.Linear) else 1
            if fan_in != width * block:
                raise CompactionError(f"layer '{name}' reads {fan_in} inputs, not a multiple of {width} units")
            return UnitLayer(path, width, producer, [(f"{name}.weight", 1, block)], name)
        elif not isinstance(nxt, ZERO_PRESERVING):
            raise CompactionError(
                f"'{name}' ({type(nxt).__name__}) between switch layer '{path}' and its consumer does not keep a "
                "dead unit at 0; put BatchNorm inside the switch layer (SwitchConv2d(batch_norm=True))"
            )
    return UnitLayer(path, width, producer)  # the last layer: its units are the outputs


def keep_index(theta: Tensor, width: int | None = None) -> Tensor:
    """Per member the units to keep, live ones first (in order), padded with dead ones:
    ``theta`` (P, N) -> (P, K), K = ``width`` or the most live units of any member (at least 1)."""
    alive = theta > 0  # (P, N)
    k = max(1, int(alive.sum(1).max())) if width is None else width
    order = torch.argsort((~alive).to(torch.int8), dim=1, stable=True)  # (P, N) live first
    return order[:, :k]  # (P, K)


def _take(t: Tensor, dim: int, index: Tensor) -> Tensor:
    """``t`` (P, ...) gathered along its ``dim`` (member dims excluded) at ``index`` (P, K)."""
    d = dim + 1
    shape = [1] * t.dim()
    shape[0], shape[d] = index.shape
    full = list(t.shape)
    full[d] = index.shape[1]
    return torch.gather(t, d, index.view(shape).expand(full))


def gather_units(tensors: Mapping[str, Tensor], plan: list[UnitLayer], keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` (name -> (P, ...)) with layer ``path``'s units ``keep[path]`` (P, K) kept."""
    out = dict(tensors)
    for layer in plan:
        index = keep[layer.path].to(next(iter(tensors.values())).device)  # (P, K)
        for name, dim in layer.producer:
            if name in out:
                out[name] = _take(out[name], dim, index)
        for name, dim, block in layer.consumer:
            if name in out:
                cols = (index[:, :, None] * block + torch.arange(block, device=index.device)).flatten(1)  # (P, K*block)
                out[name] = _take(out[name], dim, cols)
    return out


def resized(template: nn.Module, plan: list[UnitLayer], widths: Mapping[str, int]) -> nn.Module:
    """A copy of ``template`` whose switch layers have ``widths[path]`` units (tensors uninitialised)."""
    new = copy.deepcopy(template)
    for layer in plan:
        k = widths[layer.path]
        module = new.get_submodule(layer.path)
        _shrink_dim(module, ("weight", "bias", "theta"), 0, k)
        if isinstance(module, SwitchLinear):
            module.out_features = k
        else:
            module.out_channels = k
            if module.bn is not None:
                _shrink_dim(module.bn, ("weight", "bias", "running_mean", "running_var"), 0, k)
                module.bn.num_features = k
        if layer.consumer_path:
            consumer = new.get_submodule(layer.consumer_path)
            block = layer.consumer[0][2]
            _shrink_dim(consumer, ("weight",), 1, k * block)
            if isinstance(consumer, nn.Linear):
                consumer.in_features = k * block
            else:
                consumer.in_channels = k * block
    return new


def _shrink_dim(module: nn.Module, names: tuple[str, ...], dim: int, size: int) -> None:
    for name in names:
        t = getattr(module, name, None)
        if t is None:
            continue
        shape = list(t.shape)
        shape[dim] = size
        fresh = torch.zeros(shape, dtype=t.dtype, device=t.device)
        if isinstance(t, nn.Parameter):
            setattr(module, name, nn.Parameter(fresh, requires_grad=t.requires_grad))
        else:
            setattr(module, name, fresh)


def compact(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """A physically smaller copy of ``model`` without its dead units (at least one unit per layer
    stays). ``optimizer`` (over ``model``'s parameters) is rewired in place to the new parameters,
    its per-entry state (Adam's ``exp_avg``, ``exp_avg_sq``, ...) cut like the parameters."""
    plan = unit_plan(model)
    state = {k: v.detach()[None] for k, v in model.state_dict().items()}  # name -> (1, ...)
    keep = {layer.path: keep_index(model.get_submodule(layer.path).theta.detach()[None]) for layer in plan}
    new_state = gather_units(state, plan, keep)
    new = resized(model, plan, {p: int(k.shape[1]) for p, k in keep.items()})
    new.load_state_dict({k: v[0] for k, v in new_state.items()})
    if optimizer is not None:
        _rewire(optimizer, model, new, plan, keep)
    return new


def _rewire(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module, plan: list[UnitLayer],
            keep: Mapping[str, Tensor]) -> None:  # fmt: skip
    """Point ``optimizer`` at ``new``'s parameters, cutting every parameter-shaped state tensor."""
    old_params, new_params = dict(old.named_parameters()), dict(new.named_parameters())
    by_id = {id(p): name for name, p in old_params.items()}
    fresh_state: dict = {}
    for name, p in old_params.items():
        st = optimizer.state.get(p)
        if not st:
            continue
        shaped = {k: v[None] for k, v in st.items() if torch.is_tensor(v) and v.shape == p.shape}
        cut = {k: v[0] for k, v in _gather_as(shaped, name, plan, keep).items()}
        fresh_state[new_params[name]] = {k: cut.get(k, v) for k, v in st.items()}
    for group in optimizer.param_groups:
        group["params"] = [new_params[by_id[id(p)]] if id(p) in by_id else p for p in group["params"]]
    optimizer.state.clear()
    optimizer.state.update(fresh_state)


def _gather_as(values: dict[str, Tensor], name: str, plan: list[UnitLayer], keep: Mapping[str, Tensor]) -> dict:
    """State tensors of parameter ``name`` (key -> (1, ...)) cut as that parameter is."""
    if not values:
        return {}
    keys = list(values)
    cut = [gather_units({name: values[k]}, plan, keep)[name] for k in keys]
    return dict(zip(keys, cut))


def compact_population(template: nn.Module, tensors: list[Mapping[str, Tensor]], theta_source: Mapping[str, Tensor],
                       ) -> tuple[nn.Module, list[dict[str, Tensor]]]:  # fmt: skip
    """A population's compaction: the smaller template and every dict of ``tensors`` (name ->
    (P, ...): parameters, buffers, Adam moments laid out like the parameters) cut per member, each
    keeping its live units of every layer (``theta_source``: the parameters, for the switches)."""
    plan = unit_plan(template)
    keep = {layer.path: keep_index(theta_source[f"{layer.path}.theta"].detach()) for layer in plan}
    new = resized(template, plan, {p: int(k.shape[1]) for p, k in keep.items()})
    return new, [gather_units(t, plan, keep) for t in tensors]


def widths(model: nn.Module) -> dict[str, int]:
    """Physical units of every switch layer."""
    return {layer.path: layer.width for layer in unit_plan(model)}
