"""Gradient estimators for binarized networks: the common interface and the STE estimator.

References: Bengio, Léonard, Courville 2013, arXiv:1308.3432 (straight-through estimator); Yin et al.,
"Understanding Straight-Through Estimator in Training Activation Quantized Neural Nets", ICLR 2019;
Kim et al., "BinaryDuo", ICLR 2020 (STE gradients compared against the coordinate discrete gradient).

Every estimator maps an objective (a model with a batch and a loss, or a function of named tensors;
see :mod:`evoens_binary.objective`) to per-parameter gradients of the *loss* on that same batch and
at those same weights: ``estimate(model, batch=(x, y)) -> {name: Tensor}``. Descent is ``w - lr*g``.

* ``SteGradient`` — autograd through the model with the chosen surrogate in every binarizing module;
* ``CdgGradient`` (:mod:`evoens_binary.cdg`) — central coordinate differences of the true loss;
* ``NesGradient`` (:mod:`evoens_binary.nes`) — Gaussian search gradient of the smoothed loss;
* ``GuidedNesGradient``, ``SteThenNes`` (:mod:`evoens_binary.hybrid`) — the seed's open ideas.

Pure torch, no pluggy.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from evoens_binary.objective import LossFn, Objective, as_objective, mse_loss
from evoens_binary.ops import STE, ste

Grads = dict[str, Tensor]
C = TypeVar("C")


def resolve_config(config: C | None, cls: type[C], name: str, kw: Mapping[str, Any], **defaults: Any) -> C:
    """``config`` as given, else ``cls(**defaults, **kw)``; an unknown keyword is one ValueError naming the
    known ones (a registry ``create(kind, name, **kw)`` passes user keywords straight through)."""
    if config is not None:
        if kw:
            raise ValueError(f"estimator '{name}': pass a config or keywords, not both (got keywords {sorted(kw)})")
        return config
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(kw) - set(known))
    if unknown:
        raise ValueError(f"estimator '{name}' has no option(s) {unknown}; its options are {known}")
    return cls(**{**defaults, **kw})


class GradEstimator(ABC):
    """Per-parameter gradient estimates of a loss; subclasses implement :meth:`flat_gradient`."""

    name: str = ""

    def estimate(
        self,
        target: nn.Module | Callable[..., Tensor] | Objective,
        params: Mapping[str, Tensor] | None = None,
        batch: object | None = None,
        *,
        loss_fn: LossFn = mse_loss,
        **objective_kw: Any,
    ) -> Grads:
        """Gradients ``{name: (*shape)}`` of the selected ``params`` (default: all of a module's).

        ``target`` is a module (then ``batch=(x, y)`` and ``loss_fn``), a function ``fn(params)`` /
        ``fn(params, batch)`` returning a scalar, or an :class:`Objective`."""
        objective = as_objective(target, params, batch, loss_fn, **objective_kw)
        return objective.unflatten(self.flat_gradient(objective))

    @abstractmethod
    def flat_gradient(self, objective: Objective) -> Tensor:
        """The gradient estimate as one ``(d,)`` vector in the objective's slot order."""

    def reset(self) -> None:
        """Forget any state kept between calls (stateless estimators: nothing)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The state kept between calls (call counters, loss histories), for a trainer's checkpoint:
        the instance's plain values; its configuration is rebuilt from the options instead."""
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if _plain(v)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s state (a resumed run draws on, not again)."""
        for key, value in state.items():
            setattr(self, key, copy.deepcopy(value))


def _plain(value: object) -> bool:
    """None, a number, a string, or a list/tuple/dict of them: what ``weights_only`` loads back."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def autograd_gradient(objective: Objective, estimator: STE | None = None) -> Tensor:
    """``d loss / d v`` at ``x0`` by autograd, through ``estimator``'s surrogate if given."""
    v = objective.x0.detach().clone().requires_grad_(True)
    surrogate = objective.surrogate(estimator) if estimator is not None else nullcontext()
    with torch.enable_grad(), surrogate:
        (g,) = torch.autograd.grad(objective.loss(v), [v], allow_unused=True)
    return torch.zeros_like(v) if g is None else g.detach()


@dataclass(frozen=True)
class SteConfig:
    """``ste``: name of the surrogate (see :data:`evoens_binary.ops.STES`); ``params``: e.g. ``{"k": 2}``."""

    ste: str = "clipped"
    params: dict[str, float] = field(default_factory=dict)


class SteGradient(GradEstimator):
    """Autograd with every binarizing module's backward replaced by the chosen surrogate derivative.

    On a function objective (no binarizing modules) this is exact autograd. Keywords other than
    ``ste``/``params`` are the STE's own parameters: ``SteGradient(ste="steep", k=3)``."""

    def __init__(self, config: SteConfig | None = None, **kw: Any) -> None:
        own = {k: kw.pop(k) for k in ("ste", "params") if k in kw}
        if kw:  # e.g. k=3 for steep, beta=2 for swishsign; ste() rejects what the STE does not take
            own["params"] = {**own.get("params", {}), **kw}
        self.config = resolve_config(config, SteConfig, "ste", own)
        self.ste = ste(self.config.ste, **self.config.params)
        self.name = f"ste:{self.ste.name}"

    def flat_gradient(self, objective: Objective) -> Tensor:
        return autograd_gradient(objective, self.ste)
