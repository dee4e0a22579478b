"""The seed's open ideas, cheap versions: NES guided by / corrected with STE directions, STE -> NES.

References: Maheswaranathan, Metz, Tucker, Choi, Sohl-Dickstein, "Guided evolutionary strategies:
augmenting random search with surrogate gradients", ICML 2019, arXiv:1806.10230 (search covariance
stretched along surrogate-gradient directions); seed 002's discussion ("STE direction as the NES
mean", "search in the span of several STE directions", "switch from STE to NES at a local minimum").

* ``GuidedNesGradient`` (``nes_guided``): antithetic NES whose directions are drawn from
  ``N(0, alpha I + (1 - alpha) (d/k) U U^T)``, U an orthonormal basis of k STE gradients at the same
  point (one or several surrogates). ``alpha = 1`` is plain NES; E||s||^2 = d for every alpha, so
  sigma means the same as in NES. The estimate is ``Cov * grad L_sigma``: a descent direction tilted
  towards the STE subspace, unbiased within it.
* ``ControlVariateNes`` (``nes_cv``): antithetic NES with the STE gradient as a linear control
  variate: ``beta g_ste + 1/(n sigma) sum_k [dL_k - sigma beta s_k.g_ste] s_k`` with dL_k the mirrored
  half-difference and beta fitted by least squares on the same samples. For a fixed beta it is
  unbiased for the smoothed-loss gradient (E[s s^T] = I) and its variance shrinks as the STE
  direction explains the loss differences; exact on a quadratic when the guide is the gradient.
* ``SteThenNes`` (``ste_nes``): stateful; returns the STE gradient until the loss it sees has not
  improved by ``rel_tol`` over the last ``patience`` calls, then NES (guided or plain) from then on.

Pure torch, no pluggy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

from evoens_binary.estimators import GradEstimator, SteGradient, autograd_gradient, resolve_config
from evoens_binary.nes import FreshDraws, NesConfig, Noise, chunk_weights, directions, nes
from evoens_binary.objective import Objective
from evoens_binary.ops import ste

C = TypeVar("C")


def _config(config: C | None, cls: type[C], name: str, kw: dict[str, Any]) -> C:
    """``config``, or ``cls(**kw)`` where NES fields among ``kw`` (popsize, sigma, ...) build its ``nes``
    config (default popsize 500): ``GuidedNesGradient(popsize=200, alpha=0.3)``."""
    if config is None and "nes" not in kw:
        nes_kw = {k: kw.pop(k) for k in list(kw) if k in NesConfig.__dataclass_fields__}
        kw["nes"] = resolve_config(None, NesConfig, name, nes_kw, popsize=500)
    return resolve_config(config, cls, name, kw)


@dataclass(frozen=True)
class GuidedConfig:
    """``guides``: STE names spanning the guiding subspace; ``alpha``: weight of the isotropic part."""

    nes: NesConfig = field(default_factory=lambda: NesConfig(popsize=500))
    guides: tuple[str, ...] = ("clipped",)
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"nes_guided alpha must be in [0, 1], got {self.alpha}")
        if not self.guides:
            raise ValueError("nes_guided needs at least one guiding STE name in guides")
        for name in self.guides:
            ste(name)  # unknown names fail here, with the known ones listed


def guide_basis(objective: Objective, guides: tuple[str, ...]) -> Tensor:
    """Orthonormal basis ``(d, k)`` of the STE gradients at ``x0`` (zero gradients dropped)."""
    grads = torch.stack([autograd_gradient(objective, ste(name)) for name in guides], 1)  # (d, k)
    grads = grads[:, grads.norm(dim=0) > 0]
    if grads.shape[1] == 0:
        return grads
    q, r = torch.linalg.qr(grads)  # (d, k)
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max()  # drop linearly dependent guides
    return q[:, keep]


def guided_noise(basis: Tensor, alpha: float) -> Noise:
    """Directions ``sqrt(alpha) z + sqrt((1 - alpha) d / k) U z_k``: covariance as in Guided ES."""

    def draw(gen: torch.Generator, rows: int, objective: Objective) -> Tensor:
        x0, d, k = objective.x0, objective.dim, basis.shape[1]
        z = torch.randn(rows, d, generator=gen, device=x0.device, dtype=x0.dtype)  # (c, d)
        if k == 0:
            return z
        zk = torch.randn(rows, k, generator=gen, device=x0.device, dtype=x0.dtype)  # (c, k)
        return math.sqrt(alpha) * z + math.sqrt((1 - alpha) * d / k) * zk @ basis.T  # (c, d)

    return draw


class GuidedNesGradient(FreshDraws, GradEstimator):
    """``nes_guided``: NES sampled around the span of STE gradients (Guided ES)."""

    name = "nes_guided"

    def __init__(self, config: GuidedConfig | None = None, **kw: Any) -> None:
        if "guides" in kw and isinstance(kw["guides"], (list, str)):
            kw["guides"] = (kw["guides"],) if isinstance(kw["guides"], str) else tuple(kw["guides"])
        self.config = _config(config, GuidedConfig, self.name, kw)

    def flat_gradient(self, objective: Objective) -> Tensor:
        basis = guide_basis(objective, self.config.guides)
        return nes(objective, self.draws(self.config.nes), guided_noise(basis, self.config.alpha))


@dataclass(frozen=True)
class ControlVariateConfig:
    """``ste``: the surrogate whose gradient is the control variate; ``nes``: antithetic, unshaped."""

    nes: NesConfig = field(default_factory=lambda: NesConfig(popsize=500))
    ste: str = "clipped"

    def __post_init__(self) -> None:
        if not self.nes.antithetic or self.nes.shaping != "none":
            raise ValueError("nes_cv needs antithetic=True and shaping='none' (the control variate is linear)")
        ste(self.ste)


def nes_control_variate(objective: Objective, config: ControlVariateConfig = ControlVariateConfig()) -> Tensor:
    """NES with the STE gradient as a control variate (two passes over one seeded noise stream)."""
    cfg, zero = config.nes, objective.x0.new_zeros(())
    guide = autograd_gradient(objective, ste(config.ste))  # (d,)
    with torch.no_grad():
        weights, proj = [], []
        for s in directions(cfg, objective):
            weights.append(chunk_weights(objective, cfg, s, zero))  # (c,) half-differences
            proj.append(cfg.sigma * s @ guide)  # (c,) what the guide predicts for them
        w, p = torch.cat(weights), torch.cat(proj)  # (n,)
        beta = (w @ p) / (p @ p).clamp_min(torch.finfo(p.dtype).tiny)
        resid, grad, start = w - beta * p, torch.zeros_like(guide), 0
        for s in directions(cfg, objective):  # the same draws again, not stored
            grad += resid[start : start + s.shape[0]] @ s  # (d,)
            start += s.shape[0]
        return beta * guide + grad / (cfg.directions * cfg.sigma)


class ControlVariateNes(FreshDraws, GradEstimator):
    """``nes_cv``: NES with the STE gradient as a fitted linear control variate."""

    name = "nes_cv"

    def __init__(self, config: ControlVariateConfig | None = None, **kw: Any) -> None:
        self.config = _config(config, ControlVariateConfig, self.name, kw)

    def flat_gradient(self, objective: Objective) -> Tensor:
        return nes_control_variate(objective, replace(self.config, nes=self.draws(self.config.nes)))


@dataclass(frozen=True)
class HandoverConfig:
    """STE ``ste`` until the loss plateaus (no ``rel_tol`` relative gain in ``patience`` calls),
    then NES with ``nes`` (guided by ``ste`` when ``guided``)."""

    ste: str = "clipped"
    nes: NesConfig = field(default_factory=lambda: NesConfig(popsize=500))
    patience: int = 5
    rel_tol: float = 1e-3
    guided: bool = True
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"ste_nes patience must be >= 1, got {self.patience}")
        if not 0.0 <= self.alpha <= 1.0:  # the guided covariance needs sqrt(alpha) and sqrt(1 - alpha)
            raise ValueError(f"ste_nes alpha must be in [0, 1], got {self.alpha}")
        if self.rel_tol < 0:
            raise ValueError(f"ste_nes rel_tol must be >= 0, got {self.rel_tol}")
        ste(self.ste)


class SteThenNes(GradEstimator):
    """``ste_nes``: a small stateful estimator; ``reset()`` starts a new run (back to STE)."""

    name = "ste_nes"

    def __init__(self, config: HandoverConfig | None = None, **kw: Any) -> None:
        self.config = _config(config, HandoverConfig, self.name, kw)
        self._ste = SteGradient(ste=self.config.ste)
        self.reset()

    def reset(self) -> None:
        self.history: list[float] = []
        self.switched_at: int | None = None  # call index of the handover

    def plateaued(self) -> bool:
        p = self.config.patience
        if len(self.history) <= p:
            return False
        before, recent = min(self.history[:-p]), min(self.history[-p:])
        return recent > before - self.config.rel_tol * abs(before) - 1e-12

    def flat_gradient(self, objective: Objective) -> Tensor:
        with torch.no_grad():
            self.history.append(float(objective.loss(objective.x0)))
        if self.switched_at is None and self.plateaued():
            self.switched_at = len(self.history) - 1
        if self.switched_at is None:
            return self._ste.flat_gradient(objective)
        cfg = self.config
        nes_cfg = replace(cfg.nes, seed=cfg.nes.seed + len(self.history))  # fresh draws every step
        if not cfg.guided:
            return nes(objective, nes_cfg)
        basis = guide_basis(objective, (cfg.ste,))
        return nes(objective, nes_cfg, guided_noise(basis, cfg.alpha))
