"""Widening a volume: R2WiderR, Net2WiderNet, NetMorph and random padding on any site.

References: R2R — M. Painter, "Towards a More Complete Theory of Function Preserving
Transforms" (2019), §4.1–4.2, App. C.1–C.2; Net2Net — Chen, Goodfellow, Shlens, ICLR 2016;
NetMorph — Wei, Wang, Rui, Chen, ICML 2016. The per-scheme fill rules are in
:mod:`evoens_morph.schemes`; this module does the bookkeeping shared by all of them: channel
counts, concatenated slices, flatten consumers, additive producers and skip slice maps.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from evoens_morph.init import InitScheme
from evoens_morph.report import DEFAULT_TOL, MorphError, MorphReport, make_report
from evoens_morph.schemes import SCHEMES, Insert, Scheme, insert_along
from evoens_morph.sites import Site, get_site, out_channels

Positions = tuple[torch.Tensor, ...]


def new_channels(channels: int, *, amount: int | None, factor: float | None, mfactor: int, even: bool) -> int:
    """Additive ``amount`` or multiplicative ``round_up(C·(factor−1), mfactor)`` new channels."""
    if (amount is None) == (factor is None):
        raise MorphError("give exactly one of amount (new channels) or factor (width multiplier)")
    if amount is not None:
        n = int(amount)
    else:
        if factor is None or factor <= 1:
            raise MorphError(f"factor must be > 1, got {factor}")
        if mfactor < 1:
            raise MorphError(f"mfactor (round new channels up to a multiple of it) must be >= 1, got {mfactor}")
        n = mfactor * math.ceil(channels * (factor - 1) / mfactor - 1e-9)
    if n < 1:
        raise MorphError(f"widening must add >= 1 channel, got {n}")
    if even and n % 2:
        raise MorphError(f"R2R-style widening adds channels in L/R pairs: {n} is odd, use {n + 1}")
    return n


def as4d(w: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """(out, in) -> (out, in, 1, 1); with ``channels``: a flatten consumer (out, C·HW) -> (out, C, HW, 1)."""
    if w.dim() == 4:
        return w
    if channels is None or channels == w.shape[1]:
        return w[:, :, None, None]
    if w.shape[1] % channels:
        raise MorphError(f"a Linear with {w.shape[1]} inputs cannot consume a flattened volume of {channels} channels")
    return w.reshape(w.shape[0], channels, w.shape[1] // channels, 1)


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if isinstance(getattr(module, name), nn.Parameter):
        setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=getattr(module, name).requires_grad))
    else:
        setattr(module, name, value.detach().clone())


def _resize(module: nn.Module, weight4: torch.Tensor) -> None:
    """Store a (out, in, kh, kw) weight back into a Conv2d / Linear and fix its size attributes."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise MorphError("widening a grouped convolution is not supported (groups must be 1)")
        _set(module, "weight", weight4)
        module.out_channels, module.in_channels = weight4.shape[0], weight4.shape[1]
    else:
        _set(module, "weight", weight4.reshape(weight4.shape[0], -1))
        module.out_features, module.in_features = module.weight.shape


def _grid(shape: torch.Size, dim: int, index: torch.Tensor) -> Positions:
    return tuple(index if d == dim else torch.arange(s) for d, s in enumerate(shape))


def _widen_producer(model: nn.Module, path: str, n: int, scheme: Scheme, widened: dict) -> torch.Tensor | None:
    module = model.get_submodule(path)
    w4 = as4d(module.weight.detach())
    old_shape, c = module.weight.shape, w4.shape[0]
    rows, src = scheme.producer(w4, n)
    _resize(module, torch.cat([w4, rows], 0))
    widened[f"{path}.weight"] = _grid(old_shape, 0, torch.arange(c))
    if module.bias is not None:
        _set(module, "bias", torch.cat([module.bias.detach(), scheme.bias(module.bias.detach(), n, src)]))
        widened[f"{path}.bias"] = (torch.arange(c),)
    return src


def _widen_per_channel(model: nn.Module, path: str, inserts: list[Insert], scheme: Scheme, widened: dict) -> None:
    bn = model.get_submodule(path)
    parts = [(pos, scheme.per_channel(bn, n, src)) for pos, n, src in inserts]
    for key in parts[0][1]:
        value, index = insert_along(getattr(bn, key).detach(), 0, [(pos, vals[key]) for pos, vals in parts])
        _set(bn, key, value)
        widened[f"{path}.{key}"] = (index,)  # buffers too: the state dict's old entries stay findable
    bn.num_features = bn.weight.shape[0] if bn.weight is not None else bn.running_mean.shape[0]


def _widen_consumer(
    model: nn.Module, path: str, channels: int, inserts: list[Insert], scheme: Scheme, widened: dict
) -> None:
    module = model.get_submodule(path)
    w = module.weight.detach()
    w4 = as4d(w, channels)  # (out, C, kh, kw) or (out, C, HW, 1)
    new4, index = scheme.consumer(w4, inserts)
    _resize(module, new4)
    if w.dim() == 2 and w4.shape[2] > 1:  # flatten consumer: channel c owns columns c·HW ... c·HW+HW−1
        index = (index[:, None] * w4.shape[2] + torch.arange(w4.shape[2])).reshape(-1)
    widened[f"{path}.weight"] = _grid(w.shape, 1, index)


def _widen_add_producer(model: nn.Module, path: str, inserts: list[Insert], scheme: Scheme, widened: dict) -> None:
    module = model.get_submodule(path)
    w = module.weight.detach()
    new4, index = insert_along(as4d(w), 0, [(pos, scheme.add_producer(as4d(w), n, src)) for pos, n, src in inserts])
    _resize(module, new4)
    widened[f"{path}.weight"] = _grid(w.shape, 0, index)
    if module.bias is not None:
        b = module.bias.detach()
        bias, index = insert_along(b, 0, [(pos, b.new_zeros(n) if src is None else b[src]) for pos, n, src in inserts])
        _set(module, "bias", bias)
        widened[f"{path}.bias"] = (index,)


def _update_skips(model: nn.Module, site: Site, inserts: list[Insert], scheme: Scheme) -> None:
    for pos, n, _ in sorted(inserts, key=lambda i: -i[0]):  # right to left: earlier positions stay valid
        for path in site.skip_sources:
            skip = model.get_submodule(path)
            skip.insert_source(pos, n)
            if scheme.skip_signs is not None:
                skip.map_pair(pos, n // 2, scheme.skip_signs)  # False = destination full: halves dropped
        for path in site.skip_dests:
            model.get_submodule(path).insert_dest(pos, n)


def widen(
    model: nn.Module,
    site: str,
    scheme: str = "r2r",
    *,
    amount: int | None = None,
    factor: float | None = None,
    mfactor: int = 2,
    init: InitScheme = "match_std_exact",
    noise: float | None = None,
    zero_side: str = "auto",
    probe: torch.Tensor | None = None,
    tol: float = DEFAULT_TOL,
    check: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[nn.Module, MorphReport]:
    """A widened copy of ``model`` (``model`` itself is untouched) and its :class:`MorphReport`.

    Every producer slice of the volume ``site`` gets ``amount`` (or ``factor``-based) new channels.
    ``noise``: Net2Net symmetry-breaking noise as a fraction of the producer's std (default 0);
    NetMorph's absolute std on its "zero" side (default 1e-6). Either makes the scheme near-exact
    only (no self-check). ``zero_side``: NetMorph's zero side, ``"consumer"``, ``"producer"`` or
    ``"auto"`` (:func:`netmorph_zero_side`).
    """
    if scheme not in SCHEMES:
        raise MorphError(f"unknown widening scheme '{scheme}'; use one of {', '.join(SCHEMES)}")
    new = copy.deepcopy(model)
    s = get_site(new, site)
    if scheme == "netmorph" and zero_side == "auto":
        zero_side = netmorph_zero_side(new, s, amount=amount, factor=factor, mfactor=mfactor)
    options = {"zero_side": zero_side} if scheme == "netmorph" else {}
    rule = SCHEMES[scheme](init, noise, generator, **options)
    if scheme == "net2net" and (s.skip_sources or s.skip_dests):
        raise MorphError(
            f"Net2WiderNet has no clean residual version (R2R paper §5.2): site '{site}' feeds or ends a skip; "
            "use r2r_widen there, or widen a block-internal site"
        )
    widened: dict[str, Positions] = {}
    inserts: list[Insert] = []
    offset = 0
    for path in s.producers:
        c = out_channels(new.get_submodule(path))
        n = new_channels(c, amount=amount, factor=factor, mfactor=mfactor, even=rule.even)
        src = _widen_producer(new, path, n, rule, widened)
        inserts.append((offset + c, n, None if src is None else src + offset))
        offset += c
    local = [
        (pos - start, n, None if src is None else src - start)
        for (pos, n, src), start in zip(inserts, _starts(inserts))
    ]
    for path, j in s.per_channel:
        _widen_per_channel(new, path, inserts if j is None else [local[j]], rule, widened)
    for path in s.consumers:
        _widen_consumer(new, path, offset, inserts, rule, widened)
    for path, j in s.add_producers:
        _widen_add_producer(new, path, inserts if j is None else [local[j]], rule, widened)
    _update_skips(new, s, inserts, rule)
    probe = probe_batch(model, probe, generator)
    has_bn = bool(s.per_channel)
    return new, make_report(
        f"{scheme}_widen",
        site,
        model,
        new,
        probe,
        new_param_names=[],
        widened=widened,
        exact_modes=rule.exact_modes(has_bn),
        tol=tol,
        check=check,
    )


def netmorph_zero_side(model: nn.Module, s: Site, *, amount: int | None, factor: float | None, mfactor: int) -> str:
    """NetMorph's zero side as in the R2R code: the producer when the volume feeds a skip or a
    pooling layer, else whichever side gets fewer new weights."""
    if s.has_residual or s.pooled:
        return "producer"
    producer_new, channels, added = 0, 0, 0
    for path in s.producers:
        module = model.get_submodule(path)
        c = out_channels(module)
        n = new_channels(c, amount=amount, factor=factor, mfactor=mfactor, even=False)
        producer_new += n * (module.weight.numel() // c)  # n new filters of the producer's size
        channels, added = channels + c, added + n
    # A consumer's weight per input channel: out x kh x kw (x H*W for a Linear after a flatten).
    consumer_new = sum(model.get_submodule(p).weight.numel() // channels * added for p in s.consumers)
    return "producer" if producer_new < consumer_new else "consumer"


def _starts(inserts: list[Insert]) -> list[int]:
    """Start of each producer slice in the old volume (slices are contiguous)."""
    starts, start = [], 0
    for pos, _, _ in inserts:
        starts.append(start)
        start = pos
    return starts


def probe_batch(
    model: nn.Module, probe: torch.Tensor | None, generator: torch.Generator | None, size: int = 16
) -> torch.Tensor:
    """``probe``, or N(0,1) inputs of the model's ``input_shape``."""
    if probe is not None:
        return probe
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise MorphError("pass probe= (an input batch) or set model.input_shape to measure function preservation")
    param = next(model.parameters())
    return torch.randn(size, *shape, generator=generator).to(param.device, param.dtype)
