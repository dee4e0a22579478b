"""A population: P networks of one architecture held as batched tensors, run in one forward.

Parameters live in one flat ``(P, D)`` tensor laid out in ``template.named_parameters()`` order (the
order of EvoTorch's ``parameter_vector``), so an EvoTorch ``SolutionBatch``'s values wrap without a
copy; ``params`` are ``(P, *shape)`` views of it keyed like the template's state dict. The forward
runs every member through one strategy of ``evoens.strategies``: named, or ``"auto"``, which times the
supported ones on the actual input once and caches the winner per (architecture, P, input shape,
device, dtype, grad). Members run in chunks sized from an activation-memory budget
(:mod:`evoens.memory`); when one member alone exceeds it, strategies whose layers never mix samples
also split the batch. A chunk that runs out of memory is halved, retried, and the smaller size
remembered. :func:`evoens.bench.benchmark_strategies` times every strategy. Pure torch, no pluggy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from evoens.memory import activation_elements, budget_bytes, is_oom, leaf_modules
from evoens.strategies import STRATEGIES, Strategy, UnsupportedInput

__all__ = [
    "STRATEGIES",
    "ParamSlot",
    "Population",
    "Strategy",
    "UnsupportedInput",
    "flat_layout",
    "module_to_flat",
    "watch_chunks",
]

_AUTO_CHOICE: dict[tuple, str] = {}  # auto key -> fastest strategy name, shared by all populations
_CHUNK_LIMIT: dict[tuple, int] = {}  # run key -> largest chunk that did not run out of memory
ChunkWatcher = Callable[[int, int], None]
_WATCHERS: list[ChunkWatcher] = []


def watch_chunks(watcher: ChunkWatcher) -> Callable[[], None]:
    """Call ``watcher(index, chunks)`` before each chunk of every population forward (``chunks``:
    how many that forward runs, as planned); what it raises stops the forward. Returns the function
    that removes it. A run uses this to stop a long generation within a chunk on a signal
    (evoens.builtins.checkpointing) and to estimate a first generation's cost (evoens.builtins.reporters)."""
    _WATCHERS.append(watcher)
    return lambda: _WATCHERS.remove(watcher) if watcher in _WATCHERS else None


class ParamSlot(NamedTuple):
    name: str
    shape: torch.Size
    offset: int
    numel: int


def flat_layout(template: nn.Module) -> list[ParamSlot]:
    """Where each parameter lies in a flat vector, in ``named_parameters()`` order."""
    slots, offset = [], 0
    for name, p in template.named_parameters():
        slots.append(ParamSlot(name, p.shape, offset, p.numel()))
        offset += p.numel()
    return slots


def module_to_flat(module: nn.Module) -> Tensor:
    """A detached copy of ``module``'s parameters as one vector ``(D,)``."""
    with torch.no_grad():
        parts = [p.reshape(-1) for p in module.parameters()]
        return torch.cat(parts) if parts else torch.zeros(0)


def signature(template: nn.Module) -> str:
    """Architecture identity for caches: layer configs (repr) plus parameter shapes."""
    return f"{template!r}|{[(n, tuple(p.shape)) for n, p in template.named_parameters()]}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _infer_per_member(template: nn.Module, x: Tensor, size: int) -> bool:
    """Whether ``x`` is ``(P, B, ...)``, read off the first layer that fixes the input rank."""
    if x.dim() == 0 or x.shape[0] != size:
        return False
    flatten_first = False
    for m in leaf_modules(template):
        if isinstance(m, nn.Flatten):
            flatten_first = True
        elif isinstance(m, nn.Linear) and flatten_first:
            # Flatten -> Linear(n): per member iff the per-member reading is the only one that fits.
            n = m.in_features
            return x.dim() >= 3 and math.prod(x.shape[2:]) == n and math.prod(x.shape[1:]) != n
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            rank = 1 if isinstance(m, nn.Linear) else len(m.kernel_size) + 1  # sample dims
            return x.dim() == rank + 2
        elif next(m.parameters(), None) is not None:
            break
    raise ValueError(
        f"cannot tell whether input {tuple(x.shape)} is shared (B, ...) or per member "
        f"(P={size}, B, ...); pass per_member=True or False"
    )


class Population:
    """P networks of one architecture; ``pop(x)`` runs them all: ``(B, ...)`` or ``(P, B, ...)``
    input -> ``(P, B, ...out)``."""

    def __init__(
        self,
        template: nn.Module,
        flat: Tensor,
        buffers: dict[str, Tensor] | None = None,
        *,
        strategy: str = "auto",
        max_chunk: int | None = None,
    ) -> None:
        self.template = template
        self.layout = flat_layout(template)
        D = sum(s.numel for s in self.layout)
        if flat.dim() != 2 or flat.shape[1] != D or flat.shape[0] < 1:
            raise ValueError(f"flat must be (P>=1, D={D}) for this template, got {tuple(flat.shape)}")
        if strategy != "auto" and strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{strategy}'; known: auto, {', '.join(STRATEGIES)}")
        if max_chunk is not None and max_chunk < 1:
            raise ValueError(f"max_chunk must be >= 1 or None, got {max_chunk}")
        self.flat = flat  # (P, D), never copied: gradients and EvoTorch values flow through
        self.strategy, self.max_chunk = strategy, max_chunk
        self._shared_buffers = buffers is None  # still the template's, expanded (not copied) to P
        self.buffers = self._template_buffers() if buffers is None else dict(buffers)
        want = {name for name, _ in template.named_buffers()}
        if set(self.buffers) != want:
            raise ValueError(f"buffers must be exactly {sorted(want)}, got {sorted(self.buffers)}")
        for name, b in self.buffers.items():
            if b.shape[0] != self.size:
                raise ValueError(f"buffer '{name}' has {b.shape[0]} members, expected {self.size}")
        self._signature: str | None = None
        self.last_strategy: str | None = None  # what the latest forward ran (what "auto" chose)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_module(
        cls, template: nn.Module, size: int, *, reinit: bool = True, generator: torch.Generator | None = None, **kw: Any
    ) -> Population:
        """``size`` members: freshly initialised (``reset_parameters``) or copies of ``template``."""
        device = next(template.parameters(), torch.zeros(0)).device
        if not reinit:
            return cls(template, module_to_flat(template).to(device).repeat(size, 1), **kw)
        scratch = copy.deepcopy(template).to("cpu")  # CPU RNG: the same members on any device
        rng = torch.random.fork_rng(devices=[]) if generator is not None else nullcontext()
        with rng:
            if generator is not None:  # seed the forked global RNG that reset_parameters draws from
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator, device=generator.device)))
            rows = []
            for _ in range(size):
                for m in scratch.modules():
                    if callable(getattr(m, "reset_parameters", None)):
                        m.reset_parameters()
                rows.append(module_to_flat(scratch))
        return cls(template, torch.stack(rows).to(device), **kw)

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module], **kw: Any) -> Population:
        """Stack trained modules of one architecture (parameters and buffers) into a population."""
        if not modules:
            raise ValueError("from_modules needs at least one module")
        want = [(s.name, s.shape) for s in flat_layout(modules[0])]
        for i, m in enumerate(modules):
            got = [(s.name, s.shape) for s in flat_layout(m)]
            if got != want:
                raise ValueError(f"module {i} differs in architecture from module 0: {got} != {want}")
        flat = torch.stack([module_to_flat(m) for m in modules])  # (P, D)
        named = [dict(m.named_buffers()) for m in modules]
        buffers = {k: torch.stack([b[k].detach() for b in named]) for k in named[0]}
        return cls(modules[0], flat, buffers or None, **kw)

    def with_flat(self, flat: Tensor) -> Population:
        """Same template, settings and buffers, new parameters ``(P', D)``."""
        same = flat.shape[0] == self.size
        if not (same or self._shared_buffers or not self.buffers):
            raise ValueError(f"per-member buffers exist for {self.size} members, not {flat.shape[0]}")
        pop = Population(
            self.template, flat, self.buffers if same else None, strategy=self.strategy, max_chunk=self.max_chunk
        )
        pop._shared_buffers = self._shared_buffers or not same
        pop._signature = self._signature
        return pop

    def to(self, device: torch.device | str) -> Population:
        """The population on ``device`` (the template itself is never used for compute)."""
        buffers = None if self._shared_buffers else {k: v.to(device) for k, v in self.buffers.items()}
        pop = Population(self.template, self.flat.to(device), buffers, strategy=self.strategy, max_chunk=self.max_chunk)
        pop._signature = self._signature
        return pop

    def _template_buffers(self) -> dict[str, Tensor]:
        out = {}
        for name, b in self.template.named_buffers():
            b = b.detach().to(self.device, self.dtype if b.is_floating_point() else b.dtype)
            out[name] = b.unsqueeze(0).expand(self.size, *b.shape)  # (P, ...), stride 0: shared
        return out

    # ------------------------------------------------------------------ views
    @property
    def size(self) -> int:
        return self.flat.shape[0]  # P

    @property
    def num_params(self) -> int:
        return self.flat.shape[1]  # D

    @property
    def device(self) -> torch.device:
        return self.flat.device

    @property
    def dtype(self) -> torch.dtype:
        return self.flat.dtype

    @property
    def params(self) -> dict[str, Tensor]:
        """``name -> (P, *shape)`` views into ``flat`` (fresh each access, so always current)."""
        out = {}
        for s in self.layout:
            cols = self.flat[:, s.offset : s.offset + s.numel]  # (P, numel)
            # A flat whose columns are strided (e.g. a transpose) cannot be viewed; copy then.
            out[s.name] = cols.view(-1, *s.shape) if cols.stride(1) == 1 else cols.reshape(-1, *s.shape)
        return out

    def member(self, i: int) -> nn.Module:
        """Member ``i`` as an ordinary module (a deep copy of the template)."""
        m = copy.deepcopy(self.template).to(device=self.device, dtype=self.dtype)
        params = self.params
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params[name][i])
            for name, b in m.named_buffers():
                b.copy_(self.buffers[name][i])
        return m

    def signature(self) -> str:
        if self._signature is None:
            self._signature = signature(self.template)
        return self._signature

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, *, strategy: str | None = None, per_member: bool | None = None) -> Tensor:
        """All members on ``x``: shared ``(B, ...)`` or per member ``(P, B, ...)`` -> ``(P, B, ...)``.

        ``per_member`` is inferred from the template's first layer when None."""
        name = strategy or self.strategy
        if per_member is None:
            per_member = _infer_per_member(self.template, x, self.size)
        if per_member and x.shape[0] != self.size:
            raise ValueError(f"per-member input needs {self.size} members first, got {tuple(x.shape)}")
        training = tuple(m.training for m in self.template.modules())
        if self._shared_buffers and self.buffers and any(training):
            # Train-mode BatchNorm writes its running stats in place: give each member its own.
            self.buffers = {k: v.clone(memory_format=torch.contiguous_format) for k, v in self.buffers.items()}
            self._shared_buffers = False
        if name != "auto":
            strat = STRATEGIES.get(name)
            if strat is None:
                raise ValueError(f"unknown strategy '{name}'; known: auto, {', '.join(STRATEGIES)}")
            reason = strat.why_not(self.template)
            if reason is not None:
                raise ValueError(f"strategy '{name}' cannot run this template: {reason}")
            self.last_strategy = name
            return self._chunked(strat, x, per_member)
        key = (
            self.signature(),
            training,
            self.size,
            tuple(x.shape),
            per_member,
            str(self.device),
            self.dtype,
            self._needs_grad(x),
        )
        choice = _AUTO_CHOICE.get(key)
        if choice is not None and choice in STRATEGIES:  # a plugin's strategy leaves with its run
            self.last_strategy = choice
            return self._chunked(STRATEGIES[choice], x, per_member)
        choice, out = self._fastest(x, per_member)
        _AUTO_CHOICE[key] = self.last_strategy = choice
        return out

    __call__ = forward

    def _needs_grad(self, x: Tensor) -> bool:
        return torch.is_grad_enabled() and (self.flat.requires_grad or x.requires_grad)

    def _fastest(self, x: Tensor, per_member: bool) -> tuple[str, Tensor]:
        """Time every supported strategy on ``x``; near-ties get a second, warm run."""
        # Train-mode BatchNorm updates running stats on every run: time each from the same state and
        # keep only the state the chosen strategy's run left behind, as if it had run once.
        stateful = bool(self.buffers) and any(m.training for m in self.template.modules())
        before = {k: v.clone() for k, v in self.buffers.items()} if stateful else {}
        after: dict[str, dict[str, Tensor]] = {}

        def timed(name: str) -> tuple[float, Tensor]:
            for k, v in before.items():
                self.buffers[k].copy_(v)
            _sync(self.device)
            t0 = time.perf_counter()
            out = self._chunked(STRATEGIES[name], x, per_member)
            _sync(self.device)
            if stateful:
                after[name] = {k: v.clone() for k, v in self.buffers.items()}
            return time.perf_counter() - t0, out

        times: dict[str, float] = {}
        outs: dict[str, Tensor] = {}
        first_error: Exception | None = None
        for name, strat in STRATEGIES.items():
            if not strat.supports(self.template):
                continue
            try:
                times[name], outs[name] = timed(name)
            except (UnsupportedInput, RuntimeError, NotImplementedError) as err:  # e.g. a vmap gap
                first_error = first_error or err
        if not times:
            raise first_error or RuntimeError("no strategy could run this population")
        best = min(times.values())
        for name in [n for n, t in times.items() if t < 1.5 * best and len(times) > 1]:
            t, outs[name] = timed(name)
            times[name] = min(times[name], t)
        choice = min(times, key=times.__getitem__)
        for k, v in after.get(choice, {}).items():
            self.buffers[k].copy_(v)
        return choice, outs[choice]

    def _chunked(self, strat: Strategy, x: Tensor, per_member: bool) -> Tensor:
        """``strat`` over member chunks and, for per-sample strategies whose single member's
        activations exceed the budget, over sample chunks too: (P, B, ...out)."""
        members, samples = self._budget_chunk(x, per_member)
        dim = 1 if per_member else 0
        if not strat.per_sample or x.dim() <= dim or samples >= x.shape[dim]:
            return self._member_chunks(strat, x, per_member, members)
        pieces = x.split(samples, dim)
        parts = [self._member_chunks(strat, xs, per_member, members, (i, len(pieces))) for i, xs in enumerate(pieces)]
        return torch.cat(parts, 1)  # (P, B, ...out)

    def _member_chunks(
        self, strat: Strategy, x: Tensor, per_member: bool, budget: int, part: tuple[int, int] = (0, 1)
    ) -> Tensor:
        """Member chunks of ``strat`` on ``x``, the sample chunk ``part`` = (index, count) of the forward."""
        P = self.size
        key = (
            self.signature(),
            strat.name,
            tuple(x.shape),
            per_member,
            str(self.device),
            self.dtype,
            self._needs_grad(x),
        )
        chunk = min(self.max_chunk or budget, _CHUNK_LIMIT.get(key, P), P)
        params, outs, start = self.params, [], 0
        while start < P:
            if _WATCHERS:
                per_part = math.ceil(P / chunk)
                index, planned = part[0] * per_part + start // chunk, part[1] * per_part
                for watcher in list(_WATCHERS):
                    watcher(index, planned)
            stop = min(start + chunk, P)
            p, b = (
                (params, self.buffers)
                if stop - start == P
                else ({k: v[start:stop] for k, v in d.items()} for d in (params, self.buffers))
            )
            try:
                outs.append(
                    strat.forward(
                        self.template,
                        p,
                        b,
                        x[start:stop] if per_member else x,
                        size=stop - start,
                        per_member=per_member,
                    )
                )
            except Exception as err:
                if not is_oom(err) or stop - start == 1:
                    raise
                chunk = max(1, (stop - start) // 2)
                _CHUNK_LIMIT[key] = chunk
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start = stop
        return outs[0] if len(outs) == 1 else torch.cat(outs)  # (P, B, ...out)

    def _budget_chunk(self, x: Tensor, per_member: bool) -> tuple[int, int]:
        """(members, samples) per chunk whose activations fit the budget (8 MiB CPU, 1/8 of a GPU):
        all samples while one member fits, else one member and as many samples as fit."""
        sample = tuple(x.shape[2:] if per_member else x.shape[1:])
        grad = self._needs_grad(x)

        def one_member() -> dict[str, Tensor]:
            tensors = {k: v[0] for k, v in self.params.items()}
            return {**tensors, **{k: v[0].clone() for k, v in self.buffers.items()}}

        key = (self.signature(), sample, self.dtype, grad)
        elems = activation_elements(key, self.template, one_member, sample, grad)
        batch = x.shape[1] if per_member else (x.shape[0] if x.dim() else 1)
        if elems is None:
            return self.size, batch  # unknown: rely on out-of-memory halving
        per_sample_bytes = max(1, elems * self.flat.element_size())
        budget = budget_bytes(self.device)
        members = budget // (batch * per_sample_bytes)
        if members >= 1:
            return members, batch
        return 1, max(1, budget // per_sample_bytes)
