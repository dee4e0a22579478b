"""The watchdog plugin: a run whose fitness is no longer finite is stopped, never "finished".

It reads each generation's ``nonfinite`` count (members whose fitness was NaN/inf, counted by
the evaluation phases) once the statistics are numbers, in ``evoens_generation_end``, so it adds
no host synchronisation to the trainer's step:

- the first generation with some non-finite members is one console warning with the count (once
  per run: they rank as the worst, the run goes on);
- a generation where every member is non-finite is a warning each time, and
  ``[watchdog] diverge_after`` of them in a row (or one at the last generation) stop the run with
  :class:`Diverged`: status ``"diverged"`` in summary.json, one line, exit code 1.

It runs before the checkpoint plugin's ``evoens_generation_end``, so a diverged generation is never
checkpointed over the last good ones. Its count lives in ``run.persisted``, which checkpoints carry:
a resumed run stops at the same generation as the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from evoens import hookimpl
from evoens.errors import RunError

if TYPE_CHECKING:
    from evoens.run import Run

log = logging.getLogger("evoens")

CHECK = "check trainer.lr, trainer.searcher_options (stdev_init, learning rates) and the fitness plugin"


class Diverged(RunError):
    """Every member's fitness was NaN/inf for ``watchdog.diverge_after`` generations in a row."""

    status = "diverged"


def _watch(run: Run) -> dict[str, Any]:
    """One run's watch, carried by its checkpoints (so a resumed run stops exactly where the
    uninterrupted one would): ``streak``, the current run of all-non-finite generations, and
    ``warned_partial``, whether a partly non-finite generation was reported already."""
    return run.persisted.setdefault("watchdog", {"streak": 0, "warned_partial": False})


def all_nonfinite(stats: dict[str, Any], popsize: int) -> bool:
    """No member of the generation had a finite fitness: its best fitness is not finite (the
    statistics leave non-finite values out), or without one, every member was counted. The count
    alone can mislead: a trainer may evaluate more than its popsize (GA: parents and children)."""
    bad = int(stats.get("nonfinite", 0))
    best = stats.get("best_fitness")
    if isinstance(best, (int, float)):
        return bad > 0 and not math.isfinite(best)
    return bad >= popsize > 0


@hookimpl(tryfirst=True)
def evoens_generation_end(run: Run, generation: int, stats: dict[str, Any]) -> None:
    watch = _watch(run)
    popsize, bad = run.config.trainer.popsize, int(stats.get("nonfinite", 0))
    if not all_nonfinite(stats, popsize):
        watch["streak"] = 0
        if bad and not watch["warned_partial"]:
            watch["warned_partial"] = True
            log.warning(
                "generation %d: %d evaluations gave a non-finite fitness (NaN/inf; popsize %d); those members rank "
                "as the worst (warned once per run; each generation's 'nonfinite' statistic counts them)",
                generation, bad, popsize,
            )  # fmt: skip
        return
    watch["streak"] = streak = watch["streak"] + 1
    limit = run.config.watchdog.diverge_after
    last = generation + 1 >= run.config.generations
    if limit and (streak >= limit or last):
        first = generation - streak + 1
        span = f"generation {generation}" if streak == 1 else f"generations {first}-{generation}"
        raise Diverged(
            f"the run diverged: no member had a finite fitness in {span} ({streak} in a row, "
            f"watchdog.diverge_after = {limit}); {CHECK}"
        )
    log.warning(
        "generation %d: no member has a finite fitness (%d NaN/inf values; %d in a row%s); %s",
        generation, bad, streak, f", the run stops after {limit}" if limit else "", CHECK,
    )  # fmt: skip
