"""Block-level R2R widen/deepen as ``mutation`` operators on any conv net (copy inheritance).

M. Painter, "Deep Neuroevolution with Shared Parameters: Ensembling a Better Solution" (cs231n
report, Stanford 2018), §3.1 (block-level R2R); the zero block is R2DeeperR's residual branch.

The operators follow :mod:`evoens_morph.mutations`' contract, ``op(module, site, options,
generator) -> (new_module, MorphReport)`` with ``op.sites(module)``, ``op.name`` and ``op.exact``:

- ``r2r_block_widen``: add a zero :class:`~evoens_morph.genome.R2RBlock` in parallel, i.e.
  ``f(x) -> f(x) + z(x)``. Sites: the residual layers of a :class:`~evoens_morph.genome.GenomeNet`,
  else every stride-1, same-padded, ungrouped ``Conv2d``.
- ``r2r_block_deepen``: follow a site by ``y -> y + z(y)``. Sites: the residual layers of a
  GenomeNet, else every ``Conv2d``.

``module`` is never modified: the result is a deep copy plus the new block (weight inheritance by
copy; :func:`evoens_morph.ne.mutate` is the bank-sharing variant the NE driver uses). Old
parameters keep their names (conv sites become a Conv2d subclass), so an optimiser state carries
over by name; ``report.new_param_names`` lists the new block's tensors. Kernel size and hidden width
come from ``options.kernel`` / ``options.hidden`` (default: the site's output width, made even).
Pure torch, no pluggy.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from evoens_morph.genome import GenomeLayer, GenomeNet, R2RBlock
from evoens_morph.mutations import MorphOptions
from evoens_morph.report import MorphError, MorphReport, make_report
from evoens_morph.widen import probe_batch


class ConvPlusBlock(nn.Conv2d):
    """``conv(x) + zero_block(x)``; a Conv2d subclass so the old weight/bias keep their names."""

    zero_block: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.zero_block(x)  # (B, out, H, W)


class ConvThenBlock(nn.Conv2d):
    """``y + zero_block(y)`` with ``y = conv(x)``: a residual zero block inserted after the conv."""

    zero_block: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # (B, out, H, W)
        return y + self.zero_block(y)


class LayerThenBlock(GenomeLayer):
    """A genome layer followed by ``y + zero_block(y)`` (deepening a GenomeNet layer; names kept)."""

    zero_block: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # (B, out, H, W)
        return y + self.zero_block(y)


def _same_padded(m: nn.Conv2d) -> bool:
    k = m.kernel_size
    return (
        m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1 and k[0] == k[1] and k[0] % 2 == 1
        and m.padding == (k[0] // 2, k[1] // 2) and m.padding_mode == "zeros"
    )  # fmt: skip


def _genome_sites(module: GenomeNet) -> list[str]:
    return [f"layers.{i}" for i, layer in enumerate(module.layers) if type(layer) is GenomeLayer and layer.residual]


class BlockOp:
    """``r2r_block_widen`` / ``r2r_block_deepen`` (see the module docstring)."""

    exact = True

    def __init__(self, kind: str) -> None:
        if kind not in ("widen", "deepen"):
            raise ValueError(f"BlockOp: kind={kind!r} must be 'widen' or 'deepen'")
        self.kind, self.name = kind, f"r2r_block_{kind}"

    def sites(self, module: nn.Module) -> list[str]:
        if isinstance(module, GenomeNet):
            return _genome_sites(module)
        return [
            n
            for n, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d and (self.kind == "deepen" or _same_padded(m))
        ]

    def __call__(
        self,
        module: nn.Module,
        site: str,
        options: MorphOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[nn.Module, MorphReport]:
        o = options or MorphOptions()
        sites = self.sites(module)
        if site not in sites:
            raise MorphError(f"{self.name}: '{site}' is not a site of this model; sites: {', '.join(sites) or 'none'}")
        if o.kernel < 1 or o.kernel % 2 == 0:
            raise MorphError(f"{self.name}: options.kernel={o.kernel} must be odd (same padding)")
        probe = probe_batch(module, o.probe, generator)
        new = copy.deepcopy(module)
        target = new.get_submodule(site)
        c_in, c_out = target.in_channels, target.out_channels
        block_in = c_out if self.kind == "deepen" else c_in
        hidden = o.hidden if o.hidden is not None else c_out + c_out % 2
        block = R2RBlock(block_in, hidden, c_out, o.kernel, zero_init=True, generator=generator)
        block = block.to(device=probe.device, dtype=next(target.parameters()).dtype)
        # The target belongs to the deep copy: grow or retype it in place, so old parameters keep their names.
        if isinstance(target, GenomeLayer) and self.kind == "widen":
            target.blocks.append(block)
        else:
            target.__class__ = {
                (True, "deepen"): LayerThenBlock, (False, "widen"): ConvPlusBlock, (False, "deepen"): ConvThenBlock
            }[(isinstance(target, GenomeLayer), self.kind)]  # fmt: skip
            target.zero_block = block
        if isinstance(new, GenomeNet):
            new.genome = None  # no longer described by ids of a filter bank
        ids = {id(p) for p in block.parameters()}
        names = [n for n, p in new.named_parameters() if id(p) in ids]
        report = make_report(
            self.name, site, module, new, probe, new_param_names=names, widened={},
            exact_modes=("eval", "train"), tol=o.tol, check=o.check,
        )  # fmt: skip
        return new, report


OPERATORS: dict[str, BlockOp] = {op.name: op for op in (BlockOp("widen"), BlockOp("deepen"))}
DESCRIPTIONS = {
    "r2r_block_widen": "block-level R2R widen: f(x) + z(x) with a zero block [U;U]->BN->ReLU->[V,-V] (copy)",
    "r2r_block_deepen": "block-level R2R deepen: y + z(y) after a genome layer or conv, zero block (copy)",
}
