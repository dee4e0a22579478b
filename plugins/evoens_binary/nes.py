"""NES / ES search gradient of the Gaussian-smoothed loss, evaluated as batched populations.

References: Wierstra, Schaul, Glasmachers, Sun, Peters, Schmidhuber, "Natural Evolution Strategies",
JMLR 15:949-980, 2014 (search gradients, fitness shaping utilities); Salimans et al., "Evolution
Strategies as a Scalable Alternative to Reinforcement Learning", arXiv:1703.03864, 2017 (antithetic
sampling, centered ranks).

The smoothed loss ``L_sigma(w) = E_s[L(w + sigma s)]``, ``s ~ N(0, I)``, has the gradient
``E[L(w + sigma s) s] / sigma``, estimated from ``popsize`` evaluations:

* antithetic (default): ``1/(2 n sigma) sum_k [L(w + sigma s_k) - L(w - sigma s_k)] s_k``, n = popsize/2;
* plain: ``1/(n sigma) sum_k [L(w + sigma s_k) - L(w)] s_k`` (L(w) as the baseline), n = popsize;
* with fitness shaping (``centered`` ranks or ``nes`` utilities, EvoTorch's rankers, lower loss =
  higher utility) the loss values are replaced by minus their utilities: the result is a descent
  direction invariant to monotone transforms of the loss, not of the gradient's scale.

For an isotropic sigma the natural gradient (Fisher ``diag(1/sigma^2)``) is parallel to this one,
so after per-tensor normalisation they coincide. All perturbations of a chunk run as ONE population
forward (``objective.losses``); the noise is drawn chunk by chunk from a seeded generator and, for
shaping (which needs every loss first), drawn again in a second pass instead of being stored.
``nes_loop`` is the one-at-a-time reference on the same draws. Pure torch, no pluggy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from evoens_binary.estimators import GradEstimator, resolve_config
from evoens_binary.objective import Objective, iter_chunks

Shaping = Literal["none", "centered", "nes"]
SHAPINGS: tuple[str, ...] = ("none", "centered", "nes")
Noise = Callable[[torch.Generator, int, Objective], Tensor]  # (gen, rows, objective) -> (rows, d)


@dataclass(frozen=True)
class NesConfig:
    """``popsize``: loss evaluations (antithetic: popsize/2 mirrored pairs); ``sigma``: search std;
    ``shaping``: none | centered | nes; ``chunk``: directions drawn and evaluated per batch."""

    popsize: int = 5000
    sigma: float = 0.1
    antithetic: bool = True
    shaping: Shaping = "none"
    seed: int = 0
    chunk: int = 1024

    def __post_init__(self) -> None:
        if self.popsize < 2:
            raise ValueError(f"nes popsize must be >= 2, got {self.popsize}")
        if self.antithetic and self.popsize % 2:
            raise ValueError(f"nes popsize must be even with antithetic sampling, got {self.popsize}")
        if not self.sigma > 0:
            raise ValueError(f"nes sigma must be > 0, got {self.sigma}")
        if self.shaping not in SHAPINGS:
            raise ValueError(f"unknown nes shaping '{self.shaping}'; use one of {', '.join(SHAPINGS)}")
        if self.chunk < 1:
            raise ValueError(f"nes chunk must be >= 1, got {self.chunk}")

    @property
    def directions(self) -> int:
        return self.popsize // 2 if self.antithetic else self.popsize


def gaussian_noise(gen: torch.Generator, rows: int, objective: Objective) -> Tensor:
    """Isotropic ``N(0, I)`` directions ``(rows, d)``."""
    x0 = objective.x0
    return torch.randn(rows, objective.dim, generator=gen, device=x0.device, dtype=x0.dtype)


def directions(config: NesConfig, objective: Objective, noise: Noise = gaussian_noise) -> Iterator[Tensor]:
    """The same sequence of ``(c, d)`` noise chunks every time it is called (seeded by ``config.seed``)."""
    gen = torch.Generator(device=objective.x0.device).manual_seed(config.seed)
    for start, stop in iter_chunks(config.directions, config.chunk):
        yield noise(gen, stop - start, objective)


def _rows(config: NesConfig, x0: Tensor, s: Tensor) -> Tensor:
    step = config.sigma * s  # (c, d)
    return torch.cat([x0 + step, x0 - step]) if config.antithetic else x0 + step  # (2c or c, d)


def _utilities(config: NesConfig, losses: Tensor) -> Tensor:
    """Shaped "loss values": minus EvoTorch's utilities (low loss -> high utility -> low value)."""
    from evotorch.tools.ranking import rank

    return -rank(losses, config.shaping, higher_is_better=False)


def _pair_weights(config: NesConfig, values: Tensor, baseline: Tensor) -> Tensor:
    """Values of one set of rows -> per-direction weights ``w_k`` (gradient = sum w_k s_k / (n sigma))."""
    if config.antithetic:
        c = values.shape[0] // 2
        return (values[:c] - values[c:]) / 2  # (c,)
    return values - baseline  # (c,)


def chunk_weights(objective: Objective, config: NesConfig, s: Tensor, baseline: Tensor) -> Tensor:
    """Evaluate one chunk of directions ``s`` (``(c, d)``) as one population -> weights ``(c,)``,
    ``(L(x0 + sigma s) - L(x0 - sigma s)) / 2`` (antithetic) or ``L(x0 + sigma s) - baseline``."""
    return _pair_weights(config, objective.losses(_rows(config, objective.x0, s)), baseline)


def _split(config: NesConfig, losses: Tensor) -> tuple[Tensor, Tensor]:
    """Chunk-interleaved losses ``[+c1, -c1, +c2, -c2, ...]`` -> ``(plus, minus)`` in direction order."""
    if not config.antithetic:
        return losses, losses[:0]
    plus, minus, start = [], [], 0
    for a, b in iter_chunks(config.directions, config.chunk):
        c = b - a
        plus.append(losses[start : start + c])
        minus.append(losses[start + c : start + 2 * c])
        start += 2 * c
    return torch.cat(plus), torch.cat(minus)


def _nes(objective: Objective, config: NesConfig, noise: Noise, evaluate: Callable[[Tensor], Tensor]) -> Tensor:
    x0, n = objective.x0, config.directions
    with torch.no_grad():
        grad = torch.zeros_like(x0)
        if config.shaping == "none":  # weights known per chunk: one pass, noise never stored
            baseline = x0.new_zeros(()) if config.antithetic else evaluate(x0[None])[0]
            for s in directions(config, objective, noise):
                grad += _pair_weights(config, evaluate(_rows(config, x0, s)), baseline) @ s  # (d,)
            return grad / (n * config.sigma)
        # Ranks need every loss first; then the same noise is drawn again rather than stored.
        losses = torch.cat([evaluate(_rows(config, x0, s)) for s in directions(config, objective, noise)])
        plus, minus = _split(config, losses)
        values = _utilities(config, torch.cat([plus, minus]))  # (popsize,) in direction order
        weights = _pair_weights(config, values, x0.new_zeros(()))  # (n,); utilities sum to ~0: no baseline
        for (a, b), s in zip(iter_chunks(n, config.chunk), directions(config, objective, noise)):
            grad += weights[a:b] @ s  # (d,)
        return grad / (n * config.sigma)


def nes(objective: Objective, config: NesConfig = NesConfig(), noise: Noise = gaussian_noise) -> Tensor:
    """The search gradient ``(d,)`` at ``x0``, every chunk of perturbations as one population."""
    return _nes(objective, config, noise, objective.losses)


def nes_loop(objective: Objective, config: NesConfig = NesConfig(), noise: Noise = gaussian_noise) -> Tensor:
    """The reference: the same draws, one ``objective.loss`` call per perturbed copy."""

    def one_by_one(rows: Tensor) -> Tensor:
        return torch.stack([objective.loss(r) for r in rows])

    return _nes(objective, config, noise, one_by_one)


def nes_nested(
    objective: Objective, config: NesConfig, popsizes: tuple[int, ...], noise: Noise = gaussian_noise
) -> list[Tensor]:
    """Unshaped NES estimates for several popsizes from ONE stream of draws (prefixes of it).

    Estimate i uses the first ``popsizes[i]`` evaluations; with ``config.chunk`` dividing every
    direction count it equals ``nes(objective, replace(config, popsize=popsizes[i]))``. The largest
    popsize costs what it costs alone: the smaller ones are free."""
    if config.shaping != "none":
        raise ValueError("nes_nested supports shaping='none' only (ranks differ between prefixes)")
    sizes = sorted(set(popsizes))
    cfg = replace(config, popsize=sizes[-1])
    wanted = {replace(cfg, popsize=p).directions: p for p in sizes}
    x0, out, grad, done = objective.x0, {}, torch.zeros_like(objective.x0), 0
    baseline = x0.new_zeros(()) if cfg.antithetic else objective.losses(x0[None])[0]
    with torch.no_grad():
        for s in directions(cfg, objective, noise):
            for a, b in _cuts(done, done + s.shape[0], sorted(wanted)):
                part = s[a - done : b - done]  # (c, d)
                grad += _pair_weights(cfg, objective.losses(_rows(cfg, x0, part)), baseline) @ part
                if b in wanted:
                    out[wanted[b]] = grad / (b * cfg.sigma)
            done += s.shape[0]
    return [out[p] for p in popsizes]


def _cuts(start: int, stop: int, marks: list[int]) -> list[tuple[int, int]]:
    """``[start, stop)`` split at every mark strictly inside it."""
    edges = [start, *[m for m in marks if start < m < stop], stop]
    return list(zip(edges[:-1], edges[1:]))


class FreshDraws:
    """Call i after :meth:`reset` draws with ``seed + i``: a training loop gets new perturbations every
    step (one fixed seed would search the same ``popsize`` directions forever), a rerun the same ones."""

    calls = 0

    def reset(self) -> None:
        self.calls = 0

    def draws(self, config: NesConfig) -> NesConfig:
        self.calls += 1
        return replace(config, seed=config.seed + self.calls - 1)


class NesGradient(FreshDraws, GradEstimator):
    """``nes``: Gaussian search gradient (antithetic, optional fitness shaping), batched."""

    name = "nes"

    def __init__(self, config: NesConfig | None = None, **kw: Any) -> None:
        self.config = resolve_config(config, NesConfig, self.name, kw)

    def flat_gradient(self, objective: Objective) -> Tensor:
        return nes(objective, self.draws(self.config))
