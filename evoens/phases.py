"""The one place that calls a generation's hooks: every trainer gets the same recipe.

A trainer implements the steps of a generation (propose candidates, update from their fitness)
and never calls a hook: the engine hands its ``step`` an :class:`Evaluate` callable, and each
call of it runs the evaluation phases in order::

    evoens_after_ask(candidates)                      variation: may edit the candidates in place
    evoens_evaluate(candidates, batch)  -> fitness    (P,), with the outputs it came from
    evoens_after_evaluate(candidates, fitness, outputs, batch) -> extra statistics

The engine calls the rest (``generation_start`` before the step; ``after_tell``, ``report``,
``generation_end`` and ``should_stop`` after it), so the order is the same for every trainer
(tests/test_hooks.py pins it for every registered one). A hook that raises stops the run with a
:class:`~evoens.errors.PluginError` naming the plugin and the hook.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch

from evoens.candidates import Candidates, Evaluation
from evoens.errors import PluginError, RunError, UserError
from evoens.fitness import sanitize
from evoens.manager import plugin_for_exception
from evoens.memory import is_oom

if TYPE_CHECKING:
    from evoens.run import Run, RunContext

Batch = tuple[torch.Tensor, torch.Tensor]


class Evaluated(NamedTuple):
    """What a trainer gets back from one evaluation."""

    fitness: torch.Tensor  # (P,) as the evaluator returned it: differentiable, may hold NaN/inf
    clean: torch.Tensor  # (P,) detached, NaN/inf replaced by the worst finite value
    outputs: tuple[torch.Tensor, ...] | None  # per species (P_s, B, ...), detached; None if not kept


class Evaluate(Protocol):
    """``evaluate(candidates, batch)``: the evaluation phases of one generation (see above)."""

    def __call__(self, candidates: Candidates, batch: Batch) -> Evaluated: ...


class CoreFailure(UserError):
    """The run's own computation failed for a reason its config controls: out of memory, or a model
    whose shapes do not fit the data. One line: where, what happened, the keys to change."""


_SHAPES = re.compile(
    r"shapes cannot be multiplied|size mismatch|must match the (?:existing )?size|expected size|expected input|"
    r"to have \d+ channels|is invalid for input of size|out of bounds|expected \d+d|dimension out of range",
    re.IGNORECASE,
)


def explain(context: RunContext, exc: BaseException, where: str) -> CoreFailure | None:
    """A :class:`CoreFailure` for an out-of-memory or shape error raised ``where`` (e.g.
    ``plugin 'core' in evoens_evaluate at generation 3``); None for any other error."""
    detail = " ".join(str(exc).split())
    detail = detail if len(detail) <= 240 else detail[:237] + "..."
    cfg, data = context.config, context.data
    if is_oom(exc):
        batch = cfg.data.batch_size or f"0, the whole training split of {len(data.train.y):,}"
        knobs = [
            f"data.batch_size (now {batch})",
            f"trainer.max_chunk (members per forward, now {cfg.trainer.max_chunk or 'automatic'})",
            f"trainer.popsize (now {cfg.trainer.popsize})",
        ]
        wanted = _requested_bytes(str(exc))
        dim = sum(p.numel() for p in context.template.parameters())
        if wanted is not None and wanted >= cfg.trainer.popsize * dim * 2:  # about the population itself
            knobs.insert(0, knobs.pop())
        return CoreFailure(
            f"out of memory on {context.device} {where} ({type(exc).__name__}: {detail}): lower "
            f"{', '.join(knobs[:2])} or {knobs[2]}"
        )
    if isinstance(exc, (RuntimeError, IndexError, ValueError)) and _SHAPES.search(str(exc)):
        model = f"model '{cfg.model.name}' (plugin '{_plugin(context, 'model', cfg.model.name)}')"
        dataset = f"dataset '{cfg.data.name}' (plugin '{_plugin(context, 'dataset', cfg.data.name)}')"
        return CoreFailure(
            f"the model's shapes do not fit the data {where} ({type(exc).__name__}: {detail}): {model} was built for "
            f"inputs of shape {tuple(data.input_shape)} and {data.num_classes} classes of {dataset}; check [model] "
            "and [data] (a model provider must build for the input shape and classes it is given)"
        )
    return None


def _requested_bytes(message: str) -> float | None:
    """The allocation an out-of-memory message names (CPU: "allocate N bytes", CUDA: "allocate 2.00 GiB")."""
    found = re.search(r"allocate ([\d.]+) ?(bytes|[KMGT]iB)", message)
    if found is None:
        return None
    unit = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[found.group(2)]
    return float(found.group(1)) * unit


def _plugin(context: RunContext, kind: str, name: str) -> str:
    try:
        return context.registry.get(kind, name).plugin
    except UserError:
        return "?"


def call_hook(run: Run, hookname: str, /, **kwargs: Any) -> Any:
    """Call a hook; a plugin that raises stops the run with its name and the hook's (a PluginError,
    or a :class:`CoreFailure` when the error is out of memory or mismatched shapes)."""
    try:
        return getattr(run.hook, hookname)(**kwargs)
    except (UserError, RunError):
        raise
    except Exception as exc:
        culprit = plugin_for_exception(run.pm, hookname, exc)
        generation = f" at generation {kwargs['generation']}" if "generation" in kwargs else ""
        where = f"in {hookname} (plugin '{culprit}'){generation}" if culprit else f"in {hookname}{generation}"
        failure = explain(run.context, exc, where)
        if failure is not None:
            raise failure from exc
        if culprit is None:
            raise
        raise PluginError(
            f"plugin '{culprit}' failed in {hookname}{generation}: {type(exc).__name__}: {exc} (--debug shows the "
            f"traceback; -p no:{culprit} runs without the plugin)"
        ) from exc


def merge(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Statistics dicts returned by a 1:N hook, applied in registration order (pluggy answers
    newest plugin first)."""
    merged: dict[str, Any] = {}
    for extra in reversed(results):
        merged.update(extra or {})
    return merged


def as_evaluation(result: Evaluation | torch.Tensor | None) -> Evaluation:
    """``evoens_evaluate``'s answer as an :class:`Evaluation` (a bare ``(P,)`` tensor has no outputs)."""
    if result is None:
        raise PluginError("no plugin implements evoens_evaluate: is the 'core' plugin disabled?")
    return result if isinstance(result, Evaluation) else Evaluation(result, None)


class Phases:
    """The evaluation phases of one generation of ``run``: an :class:`Evaluate`.

    Collects what the phases produce for the engine: the plugins' extra statistics and the count
    of non-finite fitness values. ``calls`` counts evaluations (a trainer must make at least one)."""

    def __init__(self, run: Run, generation: int) -> None:
        self.run, self.generation = run, generation
        self.stats: dict[str, Any] = {}
        self.nonfinite = torch.zeros((), dtype=torch.long)
        self.calls = 0

    def __call__(self, candidates: Candidates, batch: Batch) -> Evaluated:
        self.after_ask(candidates)
        evaluation = as_evaluation(
            call_hook(self.run, "evoens_evaluate", run=self.run, generation=self.generation,
                      candidates=candidates, batch=batch)
        )  # fmt: skip
        return self.after_evaluate(candidates, evaluation, batch)

    def after_ask(self, candidates: Candidates) -> None:
        """Variation: plugins may edit the candidates' parameters in place (never recorded by autograd)."""
        with torch.no_grad():
            call_hook(self.run, "evoens_after_ask", run=self.run, generation=self.generation, candidates=candidates)

    def after_evaluate(self, candidates: Candidates, evaluation: Evaluation, batch: Batch) -> Evaluated:
        """Sanitize the fitness, count non-finite values, and let plugins see fitness and outputs."""
        fitness = evaluation.fitness
        if fitness.shape != (candidates.size,):
            raise PluginError(
                f"evoens_evaluate returned fitness of shape {tuple(fitness.shape)} for {candidates.size} candidates; "
                f"expected ({candidates.size},)"
            )
        clean, bad = sanitize(fitness.detach())
        outputs = None if evaluation.outputs is None else tuple(o.detach() for o in evaluation.outputs)
        self.calls += 1
        self.nonfinite = self.nonfinite.to(bad.device) + bad
        extras = call_hook(
            self.run, "evoens_after_evaluate", run=self.run, generation=self.generation, candidates=candidates,
            fitness=clean, outputs=outputs, batch=batch,
        )  # fmt: skip
        self.stats.update(merge(extras))
        return Evaluated(fitness, clean, outputs)


def standalone(evaluator: Callable[[Candidates, Batch], torch.Tensor]) -> Evaluate:
    """An :class:`Evaluate` without a run or plugins, for trainers used from plain Python code:
    ``evaluator(candidates, batch)`` returns the ``(P,)`` fitness."""

    def evaluate(candidates: Candidates, batch: Batch) -> Evaluated:
        fitness = evaluator(candidates, batch)
        return Evaluated(fitness, sanitize(fitness.detach())[0], None)

    return evaluate
