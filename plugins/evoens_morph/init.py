"""Initialisation of the free weights of a transform (U, V in R2R; the new side of NetMorph).

Spec pitfall 2 (R2R paper §6.2, App. E): He init of new weights makes training unstable right
after a widen; matching the existing kernel's std works. ``match_std_exact`` draws with the std
of the existing tensor, ``match_std`` with 0.1 x that (the R2R code's default, near zero), ``he``
with sqrt(2 / fan_in), ``zero`` gives zeros; a float is used as the std itself. Free weights are
drawn from U(-sqrt(3) s, sqrt(3) s), which has std s (as the R2R code draws them); symmetry-breaking
noise (NetMorph's zero side, Net2Net) is Gaussian.
"""

from __future__ import annotations

import math

import torch

InitScheme = str | float
SCHEMES = ("match_std_exact", "match_std", "he", "zero")


def init_std(scheme: InitScheme, reference: torch.Tensor) -> float:
    """The std for new entries of a tensor shaped like ``reference`` (out, in, kh, kw)."""
    if isinstance(scheme, (int, float)) and not isinstance(scheme, bool):
        if scheme < 0:
            raise ValueError(f"init std must be >= 0, got {scheme}")
        return float(scheme)
    if scheme == "match_std_exact":
        return float(reference.detach().std()) if reference.numel() > 1 else 0.0
    if scheme == "match_std":
        return 0.1 * init_std("match_std_exact", reference)
    if scheme == "he":
        return math.sqrt(2.0 / max(1, math.prod(reference.shape[1:])))
    if scheme == "zero":
        return 0.0
    raise ValueError(f"unknown init '{scheme}'; use one of {', '.join(SCHEMES)} or a float std")


def draw(shape: tuple[int, ...], std: float, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Free weights: U(-sqrt(3) std, sqrt(3) std) entries of ``shape`` (standard deviation ``std``)
    with ``like``'s dtype/device, drawn from ``generator`` on CPU."""
    unit = torch.rand(shape, generator=generator, dtype=torch.float64) * 2.0 - 1.0  # U(-1, 1): std 1/sqrt(3)
    return (unit * (math.sqrt(3.0) * std)).to(dtype=like.dtype, device=like.device)


def gaussian_noise(
    shape: tuple[int, ...], std: float, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Symmetry-breaking noise: N(0, std²) entries of ``shape`` with ``like``'s dtype/device."""
    sample = torch.randn(shape, generator=generator, dtype=torch.float64) * std
    return sample.to(dtype=like.dtype, device=like.device)
