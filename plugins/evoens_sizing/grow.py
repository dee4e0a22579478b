"""Grow and shrink in one run: R2R widening where a layer is saturated, switches prune where units die.

Widening: M. Painter, "Towards a More Complete Theory of Function Preserving Transforms" (2019),
R2WiderR (:func:`evoens_morph.widen.widen`): new units come in pairs with equal incoming weights and
opposite outgoing weights, so the function is unchanged while every new weight gets a gradient.
Shrinking: the switches of :mod:`evoens_sizing.switch` (Smallify). The journal's own growth attempt
(new blocks fit to residuals, 2017-11-11) failed and it concluded "start very large and only
shrink"; this policy instead grows with function-preserving transforms.

The policy (:meth:`evoens_sizing.trainer.SizingTrainer.maybe_grow`) reads two signals per member
and layer: the switches (``theta > 0``: alive) and the dead units (activation standard deviation 0
on a probe batch, :mod:`evoens_sizing.stats`). A layer is saturated when no unit was pruned by its
switch or died since the last check (units dead from the start do not block it). A member
saturated on a layer gets ``ceil(width * (factor - 1))`` new R2R units there (even, at most
``max_width``); the others get the same number of dead units (``theta = 0``), so the population
keeps one physical width: per-member masks in one batched forward. No check acts before the
start-up delay (``grow_delay``, by default ``theta0 / lr`` steps): a strict switch starting at
theta0 cannot reach 0 sooner, so an early check sees every layer saturated and would double even
a layer that is too wide (the suite's 2048-unit start grew to 4096 before it could shrink).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from evoens_morph.widen import widen
from torch import Tensor, nn

from evoens_sizing.compact import UnitLayer


def growth(width: int, factor: float, max_width: int) -> int:
    """New units for a layer of ``width``: even (R2R pairs), >= 2, at most up to ``max_width``."""
    n = 2 * math.ceil(width * (factor - 1) / 2)
    return max(0, min(max(n, 2), (max_width - width) // 2 * 2))


def r2r_units(weight: Tensor, bias: Tensor | None, consumer: Tensor, n: int,
              generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """R2WiderR's ``n`` new units of one member's ``Linear(in -> N)`` whose outputs the ``Linear``
    ``consumer`` (out, N) reads: new rows (n, in), biases (n,) and consumer columns (out, n)."""
    fan_in, width = weight.shape[1], weight.shape[0]
    plain = nn.Sequential(nn.Linear(fan_in, width), nn.ReLU(), nn.Linear(width, consumer.shape[0], bias=False))
    with torch.no_grad():
        plain[0].weight.copy_(weight)
        plain[0].bias.copy_(bias if bias is not None else torch.zeros(width))
        plain[2].weight.copy_(consumer)
    probe = torch.zeros(1, fan_in, dtype=weight.dtype, device=weight.device)  # check=False: never compared
    wide, _ = widen(plain, "0", "r2r", amount=n, check=False, probe=probe, generator=generator)
    return wide[0].weight[width:].detach(), wide[0].bias[width:].detach(), wide[2].weight[:, width:].detach()


def grow_tensors(tensors: Mapping[str, Tensor], layer: UnitLayer, grow: Tensor, n: int, theta_new: float,
                 generator: torch.Generator) -> dict[str, Tensor]:  # fmt: skip
    """Parameters (name -> (P, ...)) with ``n`` units appended to ``layer``: R2R units with switch
    ``theta_new`` for members ``grow`` (P,), dead units (zeros, theta 0) for the others."""
    out = dict(tensors)
    w, th = tensors[f"{layer.path}.weight"], tensors[f"{layer.path}.theta"]  # (P, N, in), (P, N)
    b = tensors.get(f"{layer.path}.bias")
    cname = layer.consumer[0][0]
    c = tensors[cname]  # (P, out, N)
    rows = w.new_zeros(w.shape[0], n, w.shape[2])
    bias = w.new_zeros(w.shape[0], n)
    cols = c.new_zeros(c.shape[0], c.shape[1], n)
    for i in torch.nonzero(grow).flatten().tolist():
        rows[i], bias[i], cols[i] = r2r_units(w[i], None if b is None else b[i], c[i], n, generator)
    thetas = torch.where(grow[:, None], torch.full_like(th[:, :1], theta_new), torch.zeros_like(th[:, :1]))
    out[f"{layer.path}.weight"] = torch.cat([w, rows], 1)
    out[f"{layer.path}.theta"] = torch.cat([th, thetas.expand(-1, n)], 1)
    if b is not None:
        out[f"{layer.path}.bias"] = torch.cat([b, bias], 1)
    out[cname] = torch.cat([c, cols], 2)
    return out


def grow_zeros(tensors: Mapping[str, Tensor], layer: UnitLayer, n: int) -> dict[str, Tensor]:
    """Per-entry state laid out like the parameters (Adam's moments), ``n`` new units at zero."""
    out = dict(tensors)
    for name, dim in layer.producer:
        if name in out:
            t = out[name]
            shape = list(t.shape)
            shape[dim + 1] = n
            out[name] = torch.cat([t, t.new_zeros(shape)], dim + 1)
    for name, dim, _ in layer.consumer:
        t = out[name]
        shape = list(t.shape)
        shape[dim + 1] = n
        out[name] = torch.cat([t, t.new_zeros(shape)], dim + 1)
    return out
