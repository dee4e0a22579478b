"""The candidates of a generation: one or more species, each ONE batched :class:`Population`.

Members whose architectures are equal (:func:`evoens.population.signature`) form a *species*;
a species runs as one batched forward, so M networks over S architectures cost S forwards per
input chunk, not M. A generation that evolves weights of one architecture has one species, and
:attr:`Candidates.flat` is its ``(P, D)`` search space; after a widen/deepen, a pruning or a
hypernetwork that emits several shapes there are several.

Members keep the order their trainer gave them ("member order"): ``fitness`` and every other
per-member value is ``(P,)`` in that order, while outputs come per species, ``(P_s, B, ...)``,
because species differ in cost (and, for non-classifiers, in output shape).
:meth:`Candidates.gather` puts per-species values back into member order. Pure torch, no pluggy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from evoens.population import Population, signature

__all__ = ["Candidates", "Evaluation", "species", "species_logits"]


class Evaluation(NamedTuple):
    """What ``evoens_evaluate`` returns: the fitness and the outputs it was computed from."""

    fitness: Tensor  # (P,) in member order, higher is better; differentiable for gradient trainers
    outputs: tuple[Tensor, ...] | None = None  # per species (P_s, B, ...), None if not kept


def species(models: Sequence[nn.Module]) -> list[list[int]]:
    """Indices of ``models`` grouped by architecture signature, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault(signature(m), []).append(i)
    return list(groups.values())


class Candidates:
    """The networks one generation evaluates, grouped into species.

    ``groups[s]`` lists the member indices of ``species[s]`` (row r of species s is member
    ``groups[s][r]``); by default the species are consecutive blocks of members. ``names`` name
    the members (``member0`` ...), ``batch_chunk`` bounds the examples per forward call.
    ``per_member_inputs``: every member gets its own batch, ``x`` is ``(P, B, ...)`` and the targets
    ``(P, B)`` in member order (a hypernetwork's inner batches); by default members share ``(B, ...)``.
    """

    def __init__(
        self,
        species: Sequence[Population],
        groups: Sequence[Sequence[int]] | None = None,
        names: Sequence[str] | None = None,
        *,
        batch_chunk: int | None = None,
        per_member_inputs: bool = False,
    ) -> None:
        if not species:
            raise ValueError("Candidates need at least one species")
        self.species: tuple[Population, ...] = tuple(species)
        if groups is None:
            starts = [0]
            for pop in self.species:
                starts.append(starts[-1] + pop.size)
            groups = [range(a, b) for a, b in zip(starts[:-1], starts[1:])]
        self.groups: tuple[tuple[int, ...], ...] = tuple(tuple(g) for g in groups)
        self.size = sum(len(g) for g in self.groups)
        if [len(g) for g in self.groups] != [p.size for p in self.species] or sorted(
            i for g in self.groups for i in g
        ) != list(range(self.size)):
            raise ValueError(f"groups {self.groups} do not partition members 0..{self.size - 1} by species size")
        default = (f"member{i}" for i in range(self.size))
        self.names: tuple[str, ...] = tuple(names if names is not None else default)
        if len(self.names) != self.size:
            raise ValueError(f"{len(self.names)} names for {self.size} members")
        if batch_chunk is not None and batch_chunk < 1:
            raise ValueError(f"batch_chunk must be >= 1 or None, got {batch_chunk}")
        self.batch_chunk = batch_chunk
        self.per_member_inputs = per_member_inputs
        order = [i for g in self.groups for i in g]  # member at each row of the species-order stack
        self._identity = order == list(range(self.size))
        self._order = torch.tensor(order)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_modules(
        cls, modules: Sequence[nn.Module], names: Sequence[str] | None = None, *, batch_chunk: int | None = None,
        **population_kw: Any,
    ) -> Candidates:  # fmt: skip
        """Modules of any architectures, grouped into species (parameters and buffers copied).

        The modules' ``training`` flags are kept: put them in eval mode first to evaluate them."""
        groups = species(modules)
        pops = [Population.from_modules([modules[i] for i in g], **population_kw) for g in groups]
        return cls(pops, groups, names, batch_chunk=batch_chunk)

    def select(self, members: Sequence[int]) -> Candidates:
        """The candidates ``members`` (indices in member order), in that order."""
        where = {m: (s, r) for s, g in enumerate(self.groups) for r, m in enumerate(g)}
        pops, groups = [], []
        for s, pop in enumerate(self.species):
            rows = [(k, where[m][1]) for k, m in enumerate(members) if where[m][0] == s]
            if rows:
                index = torch.tensor([r for _, r in rows], device=pop.device)
                pops.append(_rows(pop, index))
                groups.append([k for k, _ in rows])
        return Candidates(pops, groups, [self.names[m] for m in members], batch_chunk=self.batch_chunk,
                          per_member_inputs=self.per_member_inputs)  # fmt: skip

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.size

    @property
    def flat(self) -> Tensor:
        """The ``(P, D)`` parameters when every member is of one species (the usual search space)."""
        if len(self.species) != 1:
            raise ValueError(f"{len(self.species)} species have no single flat (P, D) view; use .species")
        return self.species[0].flat

    def gather(self, per_species: Sequence[Tensor]) -> Tensor:
        """Per-species values ``(P_s, ...)`` (same trailing shape) -> ``(P, ...)`` in member order."""
        if len(per_species) != len(self.species):
            raise ValueError(f"{len(per_species)} values for {len(self.species)} species")
        stacked = per_species[0] if len(per_species) == 1 else torch.cat(list(per_species))  # species order
        if self._identity:
            return stacked
        inverse = torch.empty_like(self._order)
        inverse[self._order] = torch.arange(self.size)
        return stacked.index_select(0, inverse.to(stacked.device))

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Every species on the shared input ``x`` (B, ...), or with ``per_member_inputs`` on each
        member's own ``x[i]`` (``x`` is (P, B, ...)): ``((P_s, B, ...), ...)``, one batched forward
        per species and input chunk of ``batch_chunk`` examples."""
        if self.per_member_inputs and (x.dim() < 2 or x.shape[0] != self.size):
            raise ValueError(f"per-member inputs must be (P={self.size}, B, ...), got {tuple(x.shape)}")
        n = x.shape[1] if self.per_member_inputs else len(x)
        step = self.batch_chunk or max(n, 1)
        outputs = []
        for s, pop in enumerate(self.species):
            xs = self._rows_of(x, s) if self.per_member_inputs else x  # (P_s, B, ...) or (B, ...)
            pm = self.per_member_inputs
            chunks = [pop(xs[:, a : a + step] if pm else xs[a : a + step], per_member=pm) for a in range(0, n, step)]
            outputs.append(chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1))  # (P_s, B, ...)
        return tuple(outputs)

    def _rows_of(self, values: Tensor, s: int) -> Tensor:
        """The rows of member-ordered ``values`` (P, ...) that belong to species ``s``: (P_s, ...)."""
        if self._identity and len(self.species) == 1:
            return values
        return values.index_select(0, torch.tensor(self.groups[s], device=values.device))

    __call__ = forward

    def evaluate(self, fitness_fn: Callable[[Tensor, Tensor], Tensor], batch: tuple[Tensor, Tensor]) -> Evaluation:
        """``fitness_fn`` ``((P_s, B, C), (B,)) -> (P_s,)`` on every species: the fitness in member
        order and the outputs it was computed from (one forward per species). A fitness that
        couples the members (an ensemble's; it sets ``couples_members = True``) sees them all at
        once, ``(P, B, C)`` in member order, whatever their species."""
        x, y = batch
        outputs = self.forward(x)
        if getattr(fitness_fn, "couples_members", False) and len(outputs) > 1:
            return Evaluation(fitness_fn(self.gather(outputs), y), outputs)  # (P,)
        targets = [self._rows_of(y, s) if self.per_member_inputs else y for s in range(len(outputs))]
        return Evaluation(self.gather([fitness_fn(o, t) for o, t in zip(outputs, targets)]), outputs)  # (P,)

    def logits(self, x: Tensor) -> Tensor:
        """Every member's outputs on ``x`` in member order: ``(P, B, ...)`` (needs equal output shapes)."""
        return self.gather(self.forward(x))

    def __repr__(self) -> str:
        sizes = ", ".join(str(p.size) for p in self.species)
        return f"Candidates(P={self.size}, species sizes [{sizes}])"


def _rows(pop: Population, index: Tensor) -> Population:
    """Members ``index`` of ``pop`` (parameters and per-member buffers)."""
    shared = getattr(pop, "_shared_buffers", False)
    buffers = None if shared else {k: v.index_select(0, index) for k, v in pop.buffers.items()}
    return Population(pop.template, pop.flat.index_select(0, index), buffers or None,
                      strategy=pop.strategy, max_chunk=pop.max_chunk)  # fmt: skip


@torch.no_grad()
def species_logits(models: Sequence[nn.Module], x: Tensor, *, batch_size: int = 1000, strategy: str = "vmap") -> Tensor:
    """Eval-mode outputs of every model on ``x`` (B, ...): ``(M, B, C)``, one batched forward per species
    and input chunk of ``batch_size`` examples (the models' own modes are restored afterwards)."""
    if not models:
        raise ValueError("species_logits: no models to evaluate")
    if batch_size < 1:
        raise ValueError(f"species_logits: batch_size={batch_size} must be >= 1")
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        groups = species(models)
        pops = [Population.from_modules([models[i] for i in g], strategy=strategy, max_chunk=len(g)) for g in groups]
        return Candidates(pops, groups, batch_chunk=batch_size).logits(x)  # (M, B, C)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
