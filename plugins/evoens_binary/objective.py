"""What a gradient estimator differentiates: a loss over a flat vector of selected parameters.

An :class:`Objective` fixes the point (the current weights), the batch and the loss, and exposes
two evaluations of the same function of a flat vector ``v`` (the selected parameters, in
``named_parameters()`` order):

* ``loss(v)`` — one scalar, differentiable (autograd runs through the model's STEs);
* ``losses(V)`` — ``(P, d) -> (P,)`` for a whole population of perturbed copies, in ONE batched
  forward per chunk of rows (:class:`evoens.population.Population` for models, ``vmap`` for
  functions), under ``no_grad``.

Estimators (STE, NES, CDG) only talk to this interface, so the same code estimates the gradient
of a binarized network on a batch or of an analytic test function. Pure torch, no pluggy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from torch.func import functional_call

from evoens.fitness import neg_cross_entropy, neg_mse
from evoens.population import ParamSlot, Population
from evoens_binary.layers import use_ste
from evoens_binary.ops import STE

LossFn = Callable[[Tensor, Tensor], Tensor]  # (P, B, ...) predictions, (B, ...) targets -> (P,)


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per member: ``(P, B, ...)`` vs ``(B, ...)`` -> ``(P,)`` (refuses broadcasts)."""
    return -neg_mse(pred, target)


def cross_entropy_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy per member: logits ``(P, B, C)``, labels ``(B,)`` -> ``(P,)``."""
    return -neg_cross_entropy(pred, target)


Slot = ParamSlot  # where each selected parameter lies in the flat vector


def _slots(params: Mapping[str, Tensor]) -> list[Slot]:
    out, offset = [], 0
    for name, p in params.items():
        out.append(Slot(name, p.shape, offset, p.numel()))
        offset += p.numel()
    return out


class Objective(ABC):
    """A loss of the flat selected parameters ``v`` (``(d,)``), around the point ``x0``."""

    slots: list[Slot]
    x0: Tensor  # (d,)
    chunk: int  # rows of a population evaluated per batched call

    @property
    def dim(self) -> int:
        return self.x0.numel()

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """``(..., d)`` -> ``{name: (..., *shape)}``."""
        lead = vec.shape[:-1]
        return {s.name: vec[..., s.offset : s.offset + s.numel].reshape(*lead, *s.shape) for s in self.slots}

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """``{name: (*shape)}`` -> ``(d,)`` in slot order."""
        for s in self.slots:  # a wrong shape of the right size would silently misalign the flat vector
            if s.name not in tensors or tensors[s.name].shape != s.shape:
                got = tuple(tensors[s.name].shape) if s.name in tensors else "missing"
                raise ValueError(f"tensor '{s.name}' must have shape {tuple(s.shape)}, got {got}")
        return torch.cat([tensors[s.name].reshape(-1) for s in self.slots])

    @abstractmethod
    def loss(self, vec: Tensor) -> Tensor:
        """The scalar loss at ``vec`` (``(d,)``); differentiable."""

    @abstractmethod
    def _losses(self, rows: Tensor) -> Tensor:
        """``(c, d) -> (c,)`` in one batched evaluation."""

    def losses(self, rows: Tensor) -> Tensor:
        """Losses of every row of ``rows`` (``(P, d) -> (P,)``), batched, ``chunk`` rows at a time."""
        with torch.no_grad():
            parts = [self._losses(rows[i : i + self.chunk]) for i in range(0, rows.shape[0], self.chunk)]
        return torch.cat(parts) if parts else rows.new_zeros(0)

    def surrogate(self, estimator: STE) -> AbstractContextManager[object]:
        """Context in which ``loss`` backpropagates through ``estimator`` (no-op without STEs)."""
        return nullcontext()


class ModelObjective(Objective):
    """``loss_fn(model(x; v), y)`` for a module, a batch ``(x, y)`` and the selected parameters.

    ``params`` (default: all of the module's) are the point and the selection; parameters not in it
    stay at the module's values. ``strategy`` is the population strategy (``auto`` times them)."""

    def __init__(
        self,
        model: nn.Module,
        batch: tuple[Tensor, Tensor],
        loss_fn: LossFn = mse_loss,
        params: Mapping[str, Tensor] | None = None,
        *,
        strategy: str = "auto",
        chunk: int = 1024,
    ) -> None:
        # Snapshots, not views: the point stays fixed if the model is updated in place afterwards
        # (``loss`` reads ``full``, ``losses`` reads ``_base``; both must describe the same point).
        full = {n: p.detach().clone() for n, p in model.named_parameters()}
        chosen = dict(full) if params is None else {n: t.detach().clone() for n, t in params.items()}
        unknown = sorted(set(chosen) - set(full))
        if unknown:
            raise ValueError(f"parameters {unknown} are not in the model; it has {sorted(full)}")
        if not chosen:
            raise ValueError("params is empty: pass the parameters to differentiate, or None for all of them")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.model, self.loss_fn, self.strategy, self.chunk = model, loss_fn, strategy, chunk
        self.x, self.y = batch
        self.full = {**full, **chosen}
        self.slots = _slots({n: self.full[n] for n in full if n in chosen})
        self.x0 = self.flatten(self.full)
        self._base = torch.cat([self.full[n].reshape(-1) for n in full])  # (D,) every parameter
        cols, start = [], 0
        for n, p in full.items():
            if n in chosen:
                cols.append(torch.arange(start, start + p.numel()))
            start += p.numel()
        self._cols = torch.cat(cols).to(self._base.device)  # where v lies in the full flat vector

    def loss(self, vec: Tensor) -> Tensor:
        params = {**self.full, **self.unflatten(vec)}
        return self.loss_fn(functional_call(self.model, params, (self.x,)).unsqueeze(0), self.y)[0]

    def _losses(self, rows: Tensor) -> Tensor:
        if self._cols.numel() == self._base.numel():
            flat = rows  # every parameter is searched: the rows are whole flat vectors, (c, D)
        else:
            flat = self._base.expand(rows.shape[0], -1).clone()  # (c, D)
            flat[:, self._cols] = rows
        pop = Population(self.model, flat, strategy=self.strategy)
        losses = self.loss_fn(pop(self.x, per_member=False), self.y)  # (c,)
        # "auto" decides once: its cache is keyed by P, so every new chunk size would time again.
        self.strategy = pop.last_strategy or self.strategy
        return losses

    def surrogate(self, estimator: STE) -> AbstractContextManager[object]:
        return use_ste(self.model, estimator)


class FunctionObjective(Objective):
    """``fn(params)`` (or ``fn(params, batch)``) for a function of named tensors; batched by vmap."""

    def __init__(
        self,
        fn: Callable[..., Tensor],
        params: Mapping[str, Tensor],
        batch: object | None = None,
        *,
        chunk: int = 4096,
    ) -> None:
        if not params:
            raise ValueError("FunctionObjective needs the point: a non-empty dict of parameters")
        self.fn, self.batch, self.chunk = fn, batch, chunk
        self.slots = _slots(params)
        self.x0 = self.flatten({n: t.detach() for n, t in params.items()})

    def _call(self, vec: Tensor) -> Tensor:
        p = self.unflatten(vec)
        return self.fn(p) if self.batch is None else self.fn(p, self.batch)

    def loss(self, vec: Tensor) -> Tensor:
        return self._call(vec)

    def _losses(self, rows: Tensor) -> Tensor:
        return torch.vmap(self._call)(rows)  # (c,)


def as_objective(
    target: nn.Module | Callable[..., Tensor] | Objective,
    params: Mapping[str, Tensor] | None = None,
    batch: object | None = None,
    loss_fn: LossFn = mse_loss,
    **kw: object,
) -> Objective:
    """An :class:`Objective` from a module (with ``batch=(x, y)``), a function of params, or as is."""
    if isinstance(target, Objective):
        if params is not None or batch is not None or kw:  # an Objective already fixes all of them
            raise ValueError("an Objective already fixes its point, batch and options; pass it alone")
        return target
    if isinstance(target, nn.Module):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("a module objective needs batch=(inputs, targets)")
        return ModelObjective(target, (batch[0], batch[1]), loss_fn, params, **kw)  # type: ignore[arg-type]
    if callable(target):
        if params is None:
            raise ValueError("a function objective needs params={name: tensor} (the point to differentiate at)")
        return FunctionObjective(target, params, batch, **kw)  # type: ignore[arg-type]
    raise ValueError(f"cannot differentiate a {type(target).__name__}: pass an nn.Module or a function of params")


def iter_chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(total)`` in pieces of ``size``."""
    for start in range(0, total, size):
        yield start, min(start + size, total)
