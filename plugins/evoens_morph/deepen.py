"""Deepening: R2DeeperR (a zero-initialised residual block) and Net2DeeperNet (identity layer).

References: R2DeeperR — M. Painter, "Towards a More Complete Theory of Function Preserving
Transforms" (2019), §4.3–4.4, App. C.3: insert x + z(x) with z = conv2 ∘ relu ∘ bn ∘ conv1,
conv1 = [U; U], conv2 = [V, −V], bias 0, so z ≡ 0 in train and eval mode. Net2DeeperNet — Chen,
Goodfellow, Shlens, ICLR 2016: insert an identity Conv/Linear + ReLU after a ReLU (ReLU is
idempotent); the optional BatchNorm is calibrated on a batch (running stats = the batch's stats,
γ = sqrt(var + eps), β = mean) so it is the identity in eval mode (spec pitfall 5).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from evoens_morph.families import ZeroResBlock
from evoens_morph.init import InitScheme, draw, init_std
from evoens_morph.report import DEFAULT_TOL, MorphError, MorphReport, make_report
from evoens_morph.sites import DeepenPoint, get_point
from evoens_morph.widen import as4d, probe_batch


def _insert_after(model: nn.Module, path: str, block: nn.Module) -> dict[str, str]:
    """Replace module ``path`` by Sequential(module, block); return old -> new state-dict names."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    old = parent.get_submodule(name)
    renamed = {f"{path}.{n}": f"{path}.0.{n}" for n in old.state_dict()}
    setattr(parent, name, nn.Sequential(old, block))
    return renamed


def _zero_block(
    point: DeepenPoint,
    model: nn.Module,
    hidden: int,
    kernel: int,
    bn: bool,
    init: InitScheme,
    gen: torch.Generator | None,
) -> ZeroResBlock:
    block = ZeroResBlock(point.channels, hidden, kernel, linear=point.linear, bn=bn)
    ref = as4d(model.get_submodule(point.producer).weight.detach())  # scale of the existing kernels
    half = hidden // 2
    w1 = as4d(block.conv1.weight.detach())
    u = draw((half, *w1.shape[1:]), init_std(init, ref), gen, ref)
    v = draw((point.channels, half, *w1.shape[2:]), init_std(init, ref), gen, ref)
    with torch.no_grad():
        block.conv1.weight.copy_(torch.cat([u, u], 0).reshape(block.conv1.weight.shape))  # [U; U]
        block.conv2.weight.copy_(torch.cat([v, -v], 1).reshape(block.conv2.weight.shape))  # [V, −V]
        block.conv1.bias.zero_()
        block.conv2.bias.zero_()
    return block.to(ref.device, ref.dtype)


def _capture(model: nn.Module, path: str, batch: torch.Tensor) -> torch.Tensor:
    """The output of module ``path`` on ``batch`` in eval mode (what the new BN will see)."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(path).register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
        model.train(was_training)
    return seen[0]


def _identity_layer(
    point: DeepenPoint, kernel: int, bn: bool, activation: torch.Tensor | None, like: torch.Tensor
) -> nn.Sequential:
    c = point.channels
    if point.linear:
        layer: nn.Module = nn.Linear(c, c)
        eye = torch.eye(c)
    else:
        layer = nn.Conv2d(c, c, kernel, padding=kernel // 2)
        eye = torch.zeros(c, c, kernel, kernel)
        eye[torch.arange(c), torch.arange(c), kernel // 2, kernel // 2] = 1.0  # 0-based centre (pitfall 5)
    with torch.no_grad():
        layer.weight.copy_(eye)
        layer.bias.zero_()
    modules = [layer]
    if bn:
        norm = nn.BatchNorm1d(c) if point.linear else nn.BatchNorm2d(c)
        dims = [0] if activation.dim() == 2 else [0, 2, 3]
        mean, var = activation.mean(dims), activation.var(dims, unbiased=False)  # (C,)
        with torch.no_grad():
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_(torch.sqrt(var + norm.eps))
            norm.bias.copy_(mean)
        modules.append(norm)
    modules.append(nn.ReLU())
    return nn.Sequential(*modules).to(like.device, like.dtype)


def deepen(
    model: nn.Module,
    point: str,
    scheme: str = "r2r",
    *,
    hidden: int | None = None,
    kernel: int = 3,
    bn: bool = True,
    init: InitScheme = "match_std_exact",
    probe: torch.Tensor | None = None,
    tol: float = DEFAULT_TOL,
    check: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[nn.Module, MorphReport]:
    """A deeper copy of ``model`` with a block inserted after module ``point``, and its report.

    ``scheme="r2r"``: a :class:`ZeroResBlock` with ``hidden`` (even, default: the volume's
    channels rounded up to even) hidden channels. ``scheme="net2net"``: identity layer (+ BN
    calibrated on ``probe``) + ReLU; only after a ReLU or a ResBlock.
    """
    new = copy.deepcopy(model)
    p = get_point(new, point)
    if not p.linear and (kernel < 1 or kernel % 2 == 0):  # same padding keeps H×W only for odd kernels
        raise MorphError(f"deepening a conv volume needs an odd kernel (1, 3, 5, ...) for same padding, got {kernel}")
    probe = probe_batch(model, probe, generator)
    ref = new.get_submodule(p.producer).weight
    if scheme == "r2r":
        hidden = hidden if hidden is not None else p.channels + p.channels % 2
        if hidden < 2 or hidden % 2:
            raise MorphError(f"R2DeeperR needs an even number (>= 2) of hidden channels (L/R halves), got {hidden}")
        block: nn.Module = _zero_block(p, new, hidden, kernel, bn, init, generator)
        exact: tuple[str, ...] = ("eval", "train")
    elif scheme == "net2net":
        if not p.nonneg:
            raise MorphError(f"Net2DeeperNet needs a ReLU (idempotent) before the new layer; '{point}' is not one")
        activation = _capture(new, point, probe) if bn else None
        block = _identity_layer(p, kernel, bn, activation, ref)
        exact = ("eval",) if bn else ("eval", "train")  # calibrated BN = identity only with running stats
    else:
        raise MorphError(f"unknown deepening scheme '{scheme}'; use 'r2r' or 'net2net'")
    renamed = _insert_after(new, point, block)
    new_names = [f"{point}.1.{n}" for n, _ in block.named_parameters()]
    report = make_report(
        f"{scheme}_deepen",
        point,
        model,
        new,
        probe,
        new_param_names=new_names,
        widened={},
        exact_modes=exact,
        tol=tol,
        check=check,
    )
    report.renamed = renamed
    return new, report
