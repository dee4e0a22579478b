"""The transforms as ``mutation`` operators with one uniform signature.

Every operator is called ``op(module, site, options, generator) -> (new_module, report)``:
``module`` is left untouched, ``site`` names a widen site or a deepen point of ``module``
(``op.sites(module)`` lists the valid ones), ``options`` a :class:`MorphOptions` (``None`` =
defaults) and ``generator`` the source of every random draw. ``op.exact`` says whether the
operator is function preserving by construction with default options, in at least eval mode: its
report's ``exact_modes`` lists the modes (checked against ``options.tol``), e.g. only ``eval`` for
Net2DeeperNet with BatchNorm, whose calibration holds for the probe's statistics only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from evoens_morph.deepen import deepen
from evoens_morph.init import InitScheme
from evoens_morph.report import DEFAULT_TOL, MorphReport
from evoens_morph.sites import deepen_points, widen_sites
from evoens_morph.widen import widen


@dataclass(frozen=True)
class MorphOptions:
    """Options shared by all operators (each reads the ones it needs).

    Widening: ``amount`` new channels per producer slice, or ``factor`` (×, rounded up to
    ``mfactor``); default ``factor=1.5`` as in the R2R paper. ``noise``: Net2Net symmetry breaking
    (fraction of std) / NetMorph's zero side (absolute std, default 1e-6). Deepening: ``hidden``
    channels of the zero block, ``kernel``, ``bn``. ``probe``: the input batch for the self-check
    (and Net2DeeperNet's BN calibration); default N(0,1) of ``module.input_shape``.
    """

    amount: int | None = None
    factor: float | None = None
    mfactor: int = 2
    init: InitScheme = "match_std_exact"
    noise: float | None = None
    zero_side: str = "auto"  # NetMorph: "auto" (R2R code's rule), "consumer" or "producer"
    hidden: int | None = None
    kernel: int = 3
    bn: bool = True
    probe: torch.Tensor | None = None
    tol: float = DEFAULT_TOL
    check: bool = True


class Mutation(Protocol):
    name: str
    exact: bool

    def sites(self, module: nn.Module) -> list[str]: ...

    def __call__(
        self,
        module: nn.Module,
        site: str,
        options: MorphOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[nn.Module, MorphReport]: ...


class WidenOp:
    """Widen the volume ``site`` with ``scheme``."""

    def __init__(self, scheme: str, exact: bool) -> None:
        self.scheme, self.exact, self.name = scheme, exact, f"{scheme}_widen"

    def sites(self, module: nn.Module) -> list[str]:
        sites = widen_sites(module)
        return [n for n, s in sites.items() if not (self.scheme == "net2net" and (s.skip_sources or s.skip_dests))]

    def __call__(
        self,
        module: nn.Module,
        site: str,
        options: MorphOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[nn.Module, MorphReport]:
        o = options or MorphOptions()
        factor = o.factor if o.factor is not None or o.amount is not None else 1.5
        return widen(
            module, site, self.scheme, amount=o.amount, factor=factor, mfactor=o.mfactor, init=o.init, noise=o.noise,
            zero_side=o.zero_side, probe=o.probe, tol=o.tol, check=o.check, generator=generator,
        )  # fmt: skip


class DeepenOp:
    """Insert a block after module ``site`` with ``scheme``."""

    def __init__(self, scheme: str) -> None:
        self.scheme, self.exact, self.name = scheme, True, f"{scheme}_deepen"

    def sites(self, module: nn.Module) -> list[str]:
        points = deepen_points(module)
        return [n for n, p in points.items() if self.scheme == "r2r" or p.nonneg]

    def __call__(
        self,
        module: nn.Module,
        site: str,
        options: MorphOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[nn.Module, MorphReport]:
        o = options or MorphOptions()
        return deepen(
            module, site, self.scheme, hidden=o.hidden, kernel=o.kernel, bn=o.bn, init=o.init, probe=o.probe,
            tol=o.tol, check=o.check, generator=generator,
        )  # fmt: skip


OPERATORS: dict[str, WidenOp | DeepenOp] = {
    op.name: op
    for op in (
        WidenOp("r2r", exact=True),
        WidenOp("net2net", exact=True),
        WidenOp("netmorph", exact=False),  # 1e-6 noise on the zero side by default
        WidenOp("random_pad", exact=False),
        DeepenOp("r2r"),
        DeepenOp("net2net"),
    )
}
DESCRIPTIONS = {
    "r2r_widen": "R2WiderR: [W;U;U] / [W',V,-V], exact in train and eval mode, old tensors untouched",
    "net2net_widen": "Net2WiderNet: copy random channels, divide their consumer columns (optional noise)",
    "netmorph_widen": "NetMorph widening: new consumer inputs zero + 1e-6 noise (near-exact)",
    "random_pad_widen": "random padding: [W;U;U] / [W',V,+V], not function preserving (baseline)",
    "r2r_deepen": "R2DeeperR: insert x + z(x) with a zero-initialised block, exact in train and eval",
    "net2net_deepen": "Net2DeeperNet: identity layer + BN calibrated on the probe batch (exact in eval) + ReLU",
}
