"""The checkpoint plugin: at the end of a generation (``evoens_generation_end``, after its
report) a checkpoint every ``checkpoint.every`` generations, one after the last generation (so
``evoens resume DIR --set generations=N`` can extend a finished run), one when a run stops early
(``evoens_should_stop``), and one when SIGINT or SIGTERM arrives (after which the run stops
cleanly, its summary saying ``"status": "interrupted"``); ``evoens resume DIR`` continues from the
newest one. A generation still running ``GRACE_SECONDS`` after the signal is dropped, not waited
for: :class:`Interrupted` is raised before the next chunk of a population forward, or by a timer
after twice that inside one, so a long generation stops within seconds and resume redoes it. A
checkpoint that cannot be written stops the run (:class:`~evoens.errors.RunError`, exit code 1)
with the previous ones intact."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Generator
from typing import Any

from evoens import hookimpl
from evoens.checkpoint import checkpoint_dir, save
from evoens.errors import RunError
from evoens.population import watch_chunks
from evoens.run import Run, run_state
from evoens.rundir import checkpoint_files, frozen_settings
from evoens.stash import StashKey

log = logging.getLogger("evoens")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
STATE = StashKey[dict[str, Any]]()  # {"signal": name or None, "since": monotonic time, "previous": {...}}
GRACE_SECONDS = 2.0
"""How long a generation may run on after a signal before it is dropped at its next chunk."""


class Interrupted(KeyboardInterrupt):
    """A signal stopped the run inside a generation, whose work is dropped; the newest checkpoint
    stays the place to resume from. ``signal``: ``"SIGINT"`` or ``"SIGTERM"`` (exit 130 or 143)."""

    status = "interrupted"

    def __init__(self, message: str, signal: str) -> None:
        super().__init__(message)
        self.signal = signal


def _resume_hint(run: Run) -> str:
    found = checkpoint_files(run.out_dir)
    if not found:
        return "no checkpoint was written yet: start the run again (evoens run ... --overwrite)"
    at = int(found[-1].stem.split("-")[1])
    return f"`evoens resume {run.out_dir}` continues at generation {at} (its newest checkpoint)"


@hookimpl
def evoens_run_start(run: Run) -> None:
    state: dict[str, Any] = {"signal": None, "since": 0.0, "previous": {}, "in_generation": False}
    run.stash[STATE] = state
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread

    def stop(why: str) -> None:
        run.summary["signal"] = state["signal"]
        message = f"{state['signal']} {why} generation {run.generation}, whose work is dropped; {_resume_hint(run)}"
        raise Interrupted(message, state["signal"])

    def on_signal(signum: int, _frame: Any) -> None:
        if state["signal"] is not None:  # a second signal: stop right away
            stop("(a second one) stopped")
        state["signal"], state["since"] = signal.Signals(signum).name, time.monotonic()
        log.warning(
            "%s received: stopping after generation %d with a checkpoint (if it runs on for more than %g s, "
            "within seconds without one)", state["signal"], run.generation, GRACE_SECONDS,
        )  # fmt: skip
        signal.setitimer(signal.ITIMER_REAL, 2 * GRACE_SECONDS)  # the backstop for work between chunks

    def between_chunks(_index: int, _chunks: int) -> None:  # the safe point: before a chunk of a forward
        late = state["signal"] is not None and time.monotonic() - state["since"] > GRACE_SECONDS
        if late and state["in_generation"]:
            stop(f"stopped after {GRACE_SECONDS:g} s")

    def on_alarm(_signum: int, _frame: Any) -> None:  # a long chunk, a backward pass, a searcher's step
        if state["in_generation"]:
            stop(f"stopped after {2 * GRACE_SECONDS:g} s")

    for sig in SIGNALS:
        state["previous"][sig] = signal.signal(sig, on_signal)
    state["previous"][signal.SIGALRM] = signal.signal(signal.SIGALRM, on_alarm)
    state["unwatch"] = watch_chunks(between_chunks)


@hookimpl
def evoens_generation_start(run: Run) -> None:
    run.stash[STATE]["in_generation"] = True


@hookimpl
def evoens_generation_end(run: Run, generation: int) -> None:
    """Persist (not a report: a checkpoint that cannot be written stops the run)."""
    state = run.stash[STATE]
    state["in_generation"] = False  # complete: from here on a signal waits for the checkpoint
    if state["signal"]:
        _cancel_alarm(state)  # the generation is complete: it is checkpointed, never dropped
    every = run.config.checkpoint.every
    last = run.generation >= run.config.generations
    if state["signal"] or last or (every and (generation + 1) % every == 0):
        _save(run)


@hookimpl(wrapper=True)
def evoens_should_stop(run: Run) -> Generator[None, bool | None, bool | None]:
    """Stop after a signal; and a run that stops early for any reason (a plugin's early stopping,
    a signal after this generation's checkpoint) still ends with a checkpoint of its last generation."""
    stop = (yield) or (True if run.stash[STATE]["signal"] else None)
    if stop and run.stash[STATE].get("saved") != run.generation:
        _save(run)
    return stop


def _save(run: Run) -> None:
    try:
        checkpoint = {**run_state(run), "config": frozen_settings(run.config)}
        save(run.out_dir, run.generation, checkpoint, run.config.checkpoint.keep)
    except OSError as err:
        where = err.filename or checkpoint_dir(run.out_dir)
        then = (
            f"the previous checkpoints are intact: fix the cause, then `evoens resume {run.out_dir}`"
            if checkpoint_files(run.out_dir)
            else "there is no earlier checkpoint: fix the cause, then run again with --overwrite"
        )
        raise RunError(
            f"cannot write the checkpoint of generation {run.generation}: {where}: {err.strerror or err}; {then}"
        ) from err
    run.stash[STATE]["saved"] = run.generation


@hookimpl
def evoens_summary(run: Run) -> dict[str, Any] | None:
    received = run.stash[STATE]["signal"]
    return {"status": "interrupted", "signal": received} if received else None


def _cancel_alarm(state: dict[str, Any]) -> None:
    if signal.SIGALRM in state.get("previous", {}):
        signal.setitimer(signal.ITIMER_REAL, 0)


@hookimpl
def evoens_run_end(run: Run) -> None:
    state = run.stash.get(STATE, {})
    _cancel_alarm(state)
    state.get("unwatch", lambda: None)()
    for sig, handler in state.get("previous", {}).items():
        signal.signal(sig, handler)
