"""The evoens contract: every hook a plugin may implement, in the order a run calls them.

Read top to bottom, this file is the table of contents of a run::

    configure            evoens_addhooks, evoens_configure
    register providers   evoens_register_providers
    run start            evoens_run_start, evoens_run_loop
    per generation       evoens_generation_start
                           ask/variation  -> evoens_after_ask          } once per evaluation,
                           evaluate       -> evoens_evaluate,          } inside the trainer's
                                             evoens_after_evaluate     } step (evoens.phases)
                           tell/update    -> evoens_after_tell
                           report         -> evoens_report
                           persist        -> evoens_generation_end, evoens_should_stop
    run end              evoens_summary, evoens_run_end

Plugins implement hooks with ``from evoens import hookimpl``. A hookimpl may take any subset
of a spec's arguments, by name. Calling conventions are chosen per hook: ``firstresult`` where
one plugin provides "the one X", a list where many contribute, ``historic`` for configuration
that late-registered plugins must still see. Any hook can be wrapped with
``@hookimpl(wrapper=True)`` for cross-cutting concerns (timing, ``torch.no_grad``).

This module imports nothing at run time but pluggy; the types it names live in the core.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - names for the type hints only
    import torch

    from evoens.candidates import Candidates, Evaluation
    from evoens.config import RunConfig
    from evoens.registry import Provider
    from evoens.run import Run

hookspec = pluggy.HookspecMarker("evoens")


# --------------------------------------------------------------------------------------------
# configure
# --------------------------------------------------------------------------------------------


@hookspec(historic=True)
def evoens_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own (``pluginmanager.add_hookspecs(module)``).

    Called once, right after a plugin is registered (historic: plugins registered later see it
    too). Return nothing.
    """


@hookspec(historic=True)
def evoens_configure(config: RunConfig) -> None:
    """Read or adjust the validated run config before anything is built.

    Called once per run, before providers are resolved (historic). ``config`` may be modified
    in place; plugin-specific settings live in ``config.extra[<plugin>]``. Return nothing.
    """


# --------------------------------------------------------------------------------------------
# register providers
# --------------------------------------------------------------------------------------------


@hookspec
def evoens_register_providers() -> Iterable[Provider]:
    """Contribute named providers: searchers, trainers, models, datasets, fitness evaluators,
    reporters, weight generators, gradient estimators, mutation operators, benchmark suites.

    Called once per plugin manager when the registry is built, through pluggy like every hook
    (a ``wrapper=True`` implementation receives the list of each plugin's providers and may edit
    it). Return (or yield) any number of :class:`evoens.registry.Provider` (the kinds and their
    factories: :mod:`evoens.kinds`); each is tagged with the plugin that returned it. Configs and
    the CLI select them by ``(kind, name)``; a name registered twice for one kind is an error
    naming both plugins (the earlier-registered one first).
    """


# --------------------------------------------------------------------------------------------
# run start
# --------------------------------------------------------------------------------------------


@hookspec
def evoens_run_start(run: Run) -> None:
    """The run is built (data, population, trainer, reporters) and about to loop.

    Called once per run, also on resume (``run.generation`` then is > 0). Return nothing.
    """


@hookspec(firstresult=True)
def evoens_run_loop(run: Run) -> dict[str, Any] | None:
    """Drive the generations of ``run`` and return its result (firstresult).

    The default loop (``evoens.engine``) is itself a ``trylast`` hookimpl: a plugin that
    returns a non-None dict replaces it. The result dict is merged into ``summary.json``.
    """


# --------------------------------------------------------------------------------------------
# per generation: ask/variation -> evaluate -> tell/update -> report -> persist
# --------------------------------------------------------------------------------------------


@hookspec
def evoens_generation_start(run: Run, generation: int) -> None:
    """A generation begins (``generation`` counts from 0), before the trainer proposes anything.

    Return nothing.
    """


@hookspec
def evoens_after_ask(run: Run, generation: int, candidates: Candidates) -> None:
    """The trainer has proposed ``candidates`` and they are about to be evaluated: variation.

    ``candidates.species`` are batched populations (one per architecture; ``candidates.flat``
    is the ``(P, D)`` parameters when there is one). A plugin may edit parameters in place
    (clip, binarize, perturb); autograd does not record it. Called once per evaluation, in the
    main process. Return nothing.
    """


@hookspec(firstresult=True)
def evoens_evaluate(
    run: Run, generation: int, candidates: Candidates, batch: tuple[torch.Tensor, torch.Tensor]
) -> Evaluation | torch.Tensor | None:
    """Return the fitness of every candidate on ``batch`` = ``(x, y)`` (firstresult).

    Return an :class:`evoens.candidates.Evaluation` ``(fitness, outputs)``: ``fitness`` is
    ``(P,)`` in member order, higher is better, on the candidates' device (no host sync) and
    differentiable (gradient trainers maximise it); ``outputs`` are the per-species
    ``(P_s, B, ...)`` outputs it was computed from, which ``evoens_after_evaluate`` receives. A
    bare ``(P,)`` tensor means "no outputs kept". The core's implementation runs
    ``candidates(x)`` once and applies the configured fitness evaluator.
    """


@hookspec
def evoens_after_evaluate(
    run: Run,
    generation: int,
    candidates: Candidates,
    fitness: torch.Tensor,
    outputs: tuple[torch.Tensor, ...] | None,
    batch: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, float] | None:
    """The candidates' fitness is known: ``(P,)``, detached, NaN/inf replaced by the worst value.

    ``outputs`` are exactly the per-species outputs the fitness was computed from (detached), or
    None when the evaluator kept none; ``candidates.gather(outputs)`` gives ``(P, B, C)`` in
    member order, and ``batch`` is the ``(x, y)`` they were computed on. An ensemble evaluator
    computes its statistics here without a second forward.
    Return an optional dict of extra statistics to report for this generation.
    """


@hookspec
def evoens_after_tell(run: Run, generation: int, stats: dict[str, float]) -> dict[str, float] | None:
    """The trainer has updated its search distribution or optimizer with the fitness.

    ``stats`` holds this generation's statistics so far (best/mean/median fitness, plugins'
    extras, ...), values possibly still 0-d tensors on the device. Return an optional dict of
    extra statistics (merged into ``stats``).
    """


@hookspec
def evoens_report(run: Run, generation: int, stats: dict[str, float]) -> None:
    """Publish one generation's statistics (logs, TensorBoard, progress bars); values are numbers.

    An implementation that raises is reported once by plugin name and not called again; the run
    goes on (reporting never costs a run). Return nothing.
    """


@hookspec
def evoens_generation_end(run: Run, generation: int, stats: dict[str, float]) -> None:
    """The generation is complete and reported (``run.generation`` already counts it): persist.

    The checkpoint plugin writes its checkpoints here. Unlike a report, a failure here stops the
    run (status ``"failed"``); a :class:`evoens.errors.RunError` prints as one line, exit code 1.
    Return nothing.
    """


@hookspec(firstresult=True)
def evoens_should_stop(run: Run, generation: int, stats: dict[str, float]) -> bool | None:
    """Return True to end the run after this generation (early stopping); None to go on."""


# --------------------------------------------------------------------------------------------
# run end
# --------------------------------------------------------------------------------------------


@hookspec
def evoens_summary(run: Run) -> dict[str, Any] | None:
    """Contribute entries to ``summary.json`` (called once, after the loop). Return a dict."""


@hookspec
def evoens_run_end(run: Run, summary: dict[str, Any]) -> None:
    """The run is over and ``summary`` is final (already written). Close files. Return nothing."""
