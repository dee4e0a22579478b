"""Genomes over a shared filter bank, and the block-level R2R zero block they are grown with.

M. Painter, "Deep Neuroevolution with Shared Parameters: Ensembling a Better Solution" (cs231n
report, Stanford 2018), §3 and Algorithm 1; the zero block is R2DeeperR's residual branch from
M. Painter, "Towards a More Complete Theory of Function Preserving Transforms" (2019), §4.3.

A network is a list of layers; a *residual* layer computes ``pad(x) + sum_b z_b(x)`` (the input
zero-padded to the layer's output channels plus the sum of its blocks), a *plain* layer computes
``sum_b z_b(x)`` (max-pooling, the dense head). A :class:`Genome` names, per layer, the layer id
and the block ids it uses; the :class:`FilterBank` owns the modules (``layer_id -> {block_id ->
module}``). Two genomes that name the same block share its parameters: this is weight inheritance
by sharing. :meth:`FilterBank.copy_genome` gives a genome fresh ids over deep copies instead.
Pure torch, no pluggy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class R2RBlock(nn.Module):
    """``z(x) = reduce(relu(bn(conv(x))))``: a k x k conv to ``hidden`` channels, BatchNorm, ReLU, a 1x1
    conv to ``out_channels``.

    With ``zero_init`` the conv's output halves are tied (``[U; U]``, bias 0), BN starts at
    gamma=1, beta=0 with fresh running stats, and the 1x1 conv's input halves are negated
    (``[V, -V]``, bias 0): both halves of the hidden volume are equal in train and eval mode, so
    ``z(x) = V relu(.) - V relu(.) = 0`` for every x. The halves untie under training (their
    gradients differ in sign), so the block learns.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        out_channels: int,
        kernel_size: int,
        *,
        zero_init: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"R2RBlock: kernel_size={kernel_size} must be odd (same padding); use 1, 3, 5, ...")
        if zero_init and (hidden < 2 or hidden % 2):
            raise ValueError(f"R2RBlock: a zero-initialised block needs an even hidden width >= 2, got {hidden}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(in_channels, hidden, kernel_size, padding=kernel_size // 2)
        self.bn = nn.BatchNorm2d(hidden)
        self.reduce = nn.Conv2d(hidden, out_channels, 1)
        with torch.no_grad():
            nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu", generator=generator)
            nn.init.kaiming_normal_(self.reduce.weight, nonlinearity="linear", generator=generator)
            self.conv.bias.zero_()
            self.reduce.bias.zero_()
            if zero_init:
                half = hidden // 2
                self.conv.weight[half:] = self.conv.weight[:half]  # [U; U]
                self.reduce.weight[:, half:] = -self.reduce.weight[:, :half]  # [V, -V]

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(F.relu(self.bn(self.conv(x))))  # (B, out, H, W)


@dataclass(frozen=True)
class LayerSpec:
    """What a layer is: ``residual`` (padded identity + blocks) or ``plain`` (sum of blocks)."""

    kind: str
    in_channels: int
    out_channels: int

    def __post_init__(self) -> None:
        if self.kind not in ("residual", "plain"):
            raise ValueError(f"LayerSpec: kind={self.kind!r} must be 'residual' or 'plain'")
        if self.kind == "residual" and self.in_channels > self.out_channels:
            raise ValueError(
                f"LayerSpec: a residual layer zero-pads its input, so in_channels={self.in_channels} must be "
                f"<= out_channels={self.out_channels}"
            )


class Gene(NamedTuple):
    layer_id: int
    block_ids: tuple[int, ...]


Genome = tuple[Gene, ...]


class FilterBank:
    """The modules every genome draws from: ``layer_id -> {block_id -> module}`` plus a spec per layer."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.input_shape: tuple[int, ...] | None = None  # one sample's shape, set by base_genome
        self.specs: dict[int, LayerSpec] = {}
        self.blocks: dict[int, dict[int, nn.Module]] = {}
        self._next_layer = 0
        self._next_block: dict[int, int] = {}

    def new_layer(self, spec: LayerSpec) -> int:
        layer_id = self._next_layer
        self._next_layer += 1
        self.specs[layer_id], self.blocks[layer_id], self._next_block[layer_id] = spec, {}, 0
        return layer_id

    def add_block(self, layer_id: int, module: nn.Module) -> int:
        """Put ``module`` (moved to the bank's device) into layer ``layer_id``; returns its block id."""
        if layer_id not in self.specs:
            raise ValueError(f"FilterBank: no layer {layer_id}; known: {sorted(self.specs)}")
        block_id = self._next_block[layer_id]
        self._next_block[layer_id] += 1
        self.blocks[layer_id][block_id] = module.to(self.device)
        return block_id

    def block(self, layer_id: int, block_id: int) -> nn.Module:
        try:
            return self.blocks[layer_id][block_id]
        except KeyError:
            raise ValueError(f"FilterBank: no block {block_id} in layer {layer_id}") from None

    def copy_genome(self, genome: Genome) -> Genome:
        """The same architecture under fresh layer ids, over deep copies of every block."""
        out = []
        for gene in genome:
            layer_id = self.new_layer(self.specs[gene.layer_id])
            ids = tuple(self.add_block(layer_id, copy.deepcopy(self.block(gene.layer_id, b))) for b in gene.block_ids)
            out.append(Gene(layer_id, ids))
        return tuple(out)

    def prune(self, keep: Iterable[Genome]) -> int:
        """Drop every block (and emptied layer) no genome in ``keep`` uses; returns how many blocks went."""
        used = {(g.layer_id, b) for genome in keep for g in genome for b in g.block_ids}
        used_layers = {layer_id for layer_id, _ in used}
        dropped = 0
        for layer_id in list(self.blocks):
            for block_id in list(self.blocks[layer_id]):
                if (layer_id, block_id) not in used:
                    del self.blocks[layer_id][block_id]
                    dropped += 1
            if layer_id not in used_layers:
                del self.blocks[layer_id], self.specs[layer_id]
        return dropped

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks.values())

    def state_dict(self) -> dict[str, object]:
        """The bank as plain data (``torch.load(weights_only=True)``-safe): layer specs, id counters,
        and each block as its constructor arguments plus its state dict."""
        return {
            "input_shape": list(self.input_shape or ()),
            "next_layer": self._next_layer,
            "layers": [
                [lid, spec.kind, spec.in_channels, spec.out_channels, self._next_block[lid]]
                for lid, spec in self.specs.items()
            ],
            "blocks": [
                [lid, bid, _describe(m), m.state_dict()]
                for lid, blocks in self.blocks.items()
                for bid, m in blocks.items()
            ],
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str = "cpu") -> FilterBank:
        """The bank :meth:`state_dict` describes, on ``device``."""
        bank = cls(device)
        bank.input_shape = tuple(state["input_shape"]) or None
        bank._next_layer = state["next_layer"]
        for lid, kind, cin, cout, next_block in state["layers"]:
            bank.specs[lid], bank.blocks[lid], bank._next_block[lid] = LayerSpec(kind, cin, cout), {}, next_block
        for lid, bid, desc, weights in state["blocks"]:
            module = _build(desc)
            module.load_state_dict(weights)
            bank.blocks[lid][bid] = module.to(bank.device)
        return bank


def dense_head(features: int, hidden: int, classes: int) -> nn.Sequential:
    """The genome's head block: Flatten -> Linear -> ReLU -> Linear."""
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _describe(module: nn.Module) -> list[object]:
    """Constructor arguments of a bank block, as plain data."""
    if isinstance(module, R2RBlock):
        conv, reduce = module.conv, module.reduce
        return ["r2r", conv.in_channels, conv.out_channels, reduce.out_channels, module.kernel_size]
    if isinstance(module, nn.MaxPool2d):
        return ["maxpool", module.kernel_size]
    if isinstance(module, nn.Sequential) and [type(m) for m in module] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]:
        return ["head", module[1].in_features, module[1].out_features, module[3].out_features]
    raise ValueError(f"FilterBank.state_dict: cannot describe block {type(module).__name__}")


def _build(desc: list) -> nn.Module:
    kind, *args = desc
    if kind == "r2r":
        return R2RBlock(*args, zero_init=False)  # weights come from the state dict
    if kind == "maxpool":
        return nn.MaxPool2d(args[0])
    if kind == "head":
        return dense_head(*args)
    raise ValueError(f"FilterBank.from_state: unknown block kind {kind!r}")


class GenomeLayer(nn.Module):
    """One layer of a genome: ``pad(x) + sum_b z_b(x)`` (residual) or ``sum_b z_b(x)`` (plain)."""

    def __init__(self, spec: LayerSpec, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.residual = spec.kind == "residual"
        self.in_channels, self.out_channels = spec.in_channels, spec.out_channels
        self.pad = spec.out_channels - spec.in_channels
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        out = F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.residual else None  # (B, out, H, W)
        for block in self.blocks:
            out = block(x) if out is None else out + block(x)
        return out


class GenomeNet(nn.Module):
    """The network a genome describes; its modules ARE the bank's (not copies)."""

    def __init__(self, bank: FilterBank, genome: Genome) -> None:
        super().__init__()
        if not genome or any(not g.block_ids for g in genome):
            raise ValueError("GenomeNet: a genome needs at least one layer and every layer at least one block")
        self.genome: Genome | None = genome  # None once a copy-mutation grew it outside the bank (ne_ops)
        if bank.input_shape is not None:
            self.input_shape = bank.input_shape  # for probe batches and FLOP counts
        self.layers = nn.ModuleList(
            GenomeLayer(bank.specs[g.layer_id], [bank.block(g.layer_id, b) for b in g.block_ids]) for g in genome
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def architecture(bank: FilterBank, genome: Genome) -> tuple[object, ...]:
    """Architecture identity of a genome (ids left out): equal for any two genomes that stack into one
    batched population."""
    return tuple(
        (bank.specs[g.layer_id], tuple((repr(m), tuple(p.shape for p in m.parameters())) for m in _blocks(bank, g)))
        for g in genome
    )


def _blocks(bank: FilterBank, gene: Gene) -> list[nn.Module]:
    return [bank.block(gene.layer_id, b) for b in gene.block_ids]


def describe(bank: FilterBank, genome: Genome) -> str:
    """A short text form, e.g. ``r8[k3] pool r8[k3+k5] pool ... head``."""
    parts = []
    for g in genome:
        spec, blocks = bank.specs[g.layer_id], _blocks(bank, g)
        if spec.kind == "residual":
            ks = "+".join(f"k{getattr(m, 'kernel_size', '?')}" for m in blocks)
            parts.append(f"r{spec.out_channels}[{ks}]")
        else:
            parts.append("pool" if isinstance(blocks[0], nn.MaxPool2d) else "head")
    return " ".join(parts)


def base_genome(
    bank: FilterBank,
    *,
    in_channels: int = 1,
    image_size: int = 28,
    widths: tuple[int, ...] = (8, 16, 32),
    kernel_size: int = 3,
    fc_hidden: int = 64,
    num_classes: int = 10,
    generator: torch.Generator | None = None,
) -> Genome:
    """The starting network: per width a residual layer (one randomly initialised block) then a
    2x2 max-pool, then Flatten-Linear-ReLU-Linear (cs231n report's base network, sized down)."""
    genome, channels, size = [], in_channels, image_size
    bank.input_shape = (in_channels, image_size, image_size)
    for width in widths:
        layer = bank.new_layer(LayerSpec("residual", channels, width))
        block = R2RBlock(channels, width, width, kernel_size, zero_init=False, generator=generator)
        genome.append(Gene(layer, (bank.add_block(layer, block),)))
        pool = bank.new_layer(LayerSpec("plain", width, width))
        genome.append(Gene(pool, (bank.add_block(pool, nn.MaxPool2d(2)),)))
        channels, size = width, size // 2
    if size < 1:
        raise ValueError(f"base_genome: {len(widths)} poolings do not fit a {image_size}x{image_size} input")
    head = dense_head(channels * size * size, fc_hidden, num_classes)
    with torch.no_grad():
        for m in head:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=generator)
                m.bias.zero_()
    layer = bank.new_layer(LayerSpec("plain", channels, num_classes))
    genome.append(Gene(layer, (bank.add_block(layer, head),)))
    return tuple(genome)
