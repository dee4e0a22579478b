"""The normalized parameter space a generator emits: ``raw = s ⊙ u`` with per-tensor fan-in scales.

vq-ensemble (A. Nichol, 2020; ``vq_ensemble/models.py``): a conv weight ``(C_out, C_in, kh, kw)``
has ``s = 1/sqrt(C_in·kh·kw)``, a linear weight ``(out, in)`` has ``s = 1/sqrt(in)``, a bias ``(n,)``
has ``s = 1/sqrt(n)``; any other shape is an error. In ``u`` space ``N(0, 1)`` is a sensible
initialisation and every distance (the pull loss, the diversity) is measured there.

The layout is the core's (:func:`evoens.population.flat_layout`: ``named_parameters()`` order,
row-major), so ``raw`` rows ARE a :class:`evoens.population.Population`'s ``(N, D)`` parameters.
Pure torch, no pluggy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from evoens.population import Population, flat_layout, module_to_flat

__all__ = ["ParamScale", "WeightSpace", "fan_in_scale"]


class ParamScale(NamedTuple):
    name: str
    shape: tuple[int, ...]
    scale: float


def fan_in_scale(name: str, shape: tuple[int, ...]) -> float:
    """The init scale ``s`` of one parameter tensor; a shape it cannot scale is a ValueError."""
    if len(shape) in (2, 3, 4, 5):  # linear (out, in) or conv (C_out, C_in, *kernel)
        return 1.0 / math.sqrt(math.prod(shape[1:]))
    if len(shape) == 1:
        return 1.0 / math.sqrt(shape[0])
    raise ValueError(
        f"parameter '{name}' of shape {shape} has no fan-in scale (a scalar); the generator handles conv "
        "and linear weights and 1-D biases: make it a buffer or a 1-element vector"
    )


class WeightSpace:
    """``u`` (normalized) <-> ``raw`` (the model's) rows ``(N, D)`` for one architecture ``template``."""

    def __init__(self, template: nn.Module) -> None:
        self.template = template
        self.layout = flat_layout(template)
        if not self.layout:
            raise ValueError(f"{type(template).__name__} has no parameters to generate")
        self.specs = [ParamScale(s.name, tuple(s.shape), fan_in_scale(s.name, tuple(s.shape))) for s in self.layout]
        device = next(template.parameters()).device
        # (D,) per-coordinate scale, in layout order
        self.scales = torch.cat(
            [torch.full((s.numel,), spec.scale) for s, spec in zip(self.layout, self.specs)]
        ).to(device)

    @property
    def dim(self) -> int:
        return self.scales.numel()  # D

    def param_spec(self) -> list[ParamScale]:
        """``(name, shape, scale)`` of every generated tensor, in layout order."""
        return list(self.specs)

    def to_raw(self, u: Tensor) -> Tensor:
        """``(N, D)`` normalized rows -> the model's parameters ``(N, D)`` (differentiable)."""
        return u * self.scales.to(u.device, u.dtype)

    def to_u(self, raw: Tensor) -> Tensor:
        """The model's parameters ``(N, D)`` -> normalized rows ``(N, D)``."""
        return raw / self.scales.to(raw.device, raw.dtype)

    def flatten(self, module: nn.Module) -> Tensor:
        """``module``'s parameters as one normalized row ``(D,)`` (detached)."""
        return self.to_u(module_to_flat(module)[None])[0]

    def unflatten(self, u: Tensor) -> dict[str, Tensor]:
        """One normalized row ``(D,)`` -> ``{name: raw tensor}`` for ``torch.func.functional_call``."""
        raw = self.to_raw(u[None])[0]
        return {s.name: raw[s.offset : s.offset + s.numel].view(s.shape) for s in self.layout}

    def population(self, u: Tensor, **population_kw: object) -> Population:
        """The members ``u`` (N, D) as one batched population; gradients flow back into ``u``."""
        if u.dim() != 2 or u.shape[1] != self.dim:
            raise ValueError(f"members must be (N, D={self.dim}) rows, got {tuple(u.shape)}")
        return Population(self.template, self.to_raw(u), **population_kw)  # type: ignore[arg-type]
