"""Where a network can be widened or deepened: sites found by walking the module tree.

A *volume* is the tensor between layers (R2R paper §2: x^(i)). Its widening site lists
(spec §4.1): the *producers* whose output slices are concatenated into it (one for plain nets,
one per branch after a :class:`~evoens_morph.families.Concat`), the *per-channel* modules on it
(BatchNorm; ReLU/pooling are per channel and need nothing), the *consumers* (Conv2d/Linear reading
the whole volume, a Linear after a flatten owns H·W columns per channel), *additive producers*
(the second conv of a :class:`ZeroResBlock` writes into the same volume) and the slice maps that
read from it (*skip sources*) or write into it (*skip dests*). Like R2R's ``hvg()`` the structure
is explicit, but it is derived from the module types, so it stays correct after deepening.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from evoens_morph.families import Concat, ResBlock, ZeroResBlock
from evoens_morph.report import MorphError

PASS_THROUGH = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)
BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d)
NONNEG = (nn.ReLU, ResBlock)  # outputs >= 0: Net2DeeperNet's identity+ReLU layer is exact after them


@dataclass
class Site:
    """One widenable volume. ``per_channel``: (path, producer index or None for the whole volume)."""

    name: str
    producers: list[str]
    per_channel: list[tuple[str, int | None]] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    add_producers: list[tuple[str, int | None]] = field(default_factory=list)
    skip_sources: list[str] = field(default_factory=list)
    skip_dests: list[str] = field(default_factory=list)
    pooled: bool = False  # a pooling layer sits between the producers and a consumer

    @property
    def has_residual(self) -> bool:
        return bool(self.skip_sources or self.skip_dests or self.add_producers)


@dataclass(frozen=True)
class DeepenPoint:
    """Insert a block right after module ``name`` (in a Sequential), on a volume of ``channels``."""

    name: str
    channels: int
    linear: bool
    nonneg: bool
    producer: str  # a producer of the volume (its weights set the scale of new ones)


def out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    raise MorphError(f"{type(module).__name__} is not a producer (Conv2d or Linear)")


class _Walker:
    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.volumes: list[Site] = []
        self.points: list[DeepenPoint] = []

    def open(self, producer: str) -> Site:
        site = Site(producer, [producer])
        self.volumes.append(site)
        return site

    def walk(self, module: nn.Module, path: str, vol: Site) -> Site:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            vol.consumers.append(path)
            return self.open(path)
        if isinstance(module, BATCH_NORM):
            vol.per_channel.append((path, 0 if len(vol.producers) == 1 else None))
            return vol
        if isinstance(module, nn.Sequential):
            for i, child in enumerate(module):
                vol = self.walk(child, f"{path}.{i}" if path else str(i), vol)
                if isinstance(child, (*NONNEG, ZeroResBlock, nn.Tanh)) and vol.producers:
                    self.point(f"{path}.{i}" if path else str(i), vol, isinstance(child, NONNEG))
            return vol
        if isinstance(module, Concat):
            return self.concat(module, path, vol)
        if isinstance(module, ResBlock):
            return self.resblock(module, path, vol)
        if isinstance(module, ZeroResBlock):
            vol.consumers.append(f"{path}.conv1")
            inner = self.open(f"{path}.conv1")
            if isinstance(module.bn1, BATCH_NORM):
                inner.per_channel.append((f"{path}.bn1", 0))
            inner.consumers.append(f"{path}.conv2")
            vol.add_producers.append((f"{path}.conv2", 0 if len(vol.producers) == 1 else None))
            return vol
        if isinstance(module, PASS_THROUGH):
            vol.pooled |= isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d))
            return vol
        raise MorphError(
            f"module '{path}' ({type(module).__name__}) is unknown to the site walker; build the model from "
            "Sequential, Conv2d, Linear, BatchNorm, ReLU/Tanh, pooling, Flatten, Concat, ResBlock, ZeroResBlock"
        )

    def point(self, path: str, vol: Site, nonneg: bool) -> None:
        mods = [self.root.get_submodule(p) for p in vol.producers]
        channels = sum(out_channels(m) for m in mods)
        self.points.append(DeepenPoint(path, channels, isinstance(mods[0], nn.Linear), nonneg, vol.producers[0]))

    def concat(self, module: Concat, path: str, vol: Site) -> Site:
        outs = [self.walk(b, f"{path}.branches.{j}", vol) for j, b in enumerate(module.branches)]
        merged = Site(outs[0].producers[0], [])
        for out in outs:
            if out.skip_sources or out.skip_dests or out is vol:
                raise MorphError(f"concat branch of '{path}' must end in a Conv2d/Linear layer without a skip")
            offset = len(merged.producers)
            merged.producers += out.producers
            merged.per_channel += [(p, None if j is None else j + offset) for p, j in out.per_channel]
            merged.add_producers += [(p, None if j is None else j + offset) for p, j in out.add_producers]
            self.volumes.remove(out)
        self.volumes.append(merged)
        return merged

    def resblock(self, module: ResBlock, path: str, vol: Site) -> Site:
        vol.consumers.append(f"{path}.conv1")
        inner = self.open(f"{path}.conv1")
        inner.per_channel.append((f"{path}.bn1", 0))
        inner.consumers.append(f"{path}.conv2")
        if module.proj is not None:
            vol.consumers.append(f"{path}.proj.0")  # the projection's own output is not a site
        else:
            vol.skip_sources.append(f"{path}.skip")
        out = self.open(f"{path}.conv2")
        out.per_channel.append((f"{path}.bn2", 0))
        out.skip_dests.append(f"{path}.skip")
        return out


def _walk(model: nn.Module) -> _Walker:
    walker = _Walker(model)
    walker.walk(model, "", Site("<input>", []))
    return walker


def widen_sites(model: nn.Module) -> dict[str, Site]:
    """Every widenable volume (has a producer and a consumer), keyed by its first producer's path."""
    return {v.name: v for v in _walk(model).volumes if v.producers and v.consumers}


def deepen_points(model: nn.Module) -> dict[str, DeepenPoint]:
    """Every place a block can be inserted, keyed by the path of the module it follows."""
    return {p.name: p for p in _walk(model).points}


def get_site(model: nn.Module, name: str) -> Site:
    sites = widen_sites(model)
    if name not in sites:
        raise MorphError(f"no widen site '{name}'; known: {', '.join(sites) or 'none'}")
    return sites[name]


def get_point(model: nn.Module, name: str) -> DeepenPoint:
    points = deepen_points(model)
    if name not in points:
        raise MorphError(f"no deepen point '{name}'; known: {', '.join(points) or 'none'}")
    return points[name]
