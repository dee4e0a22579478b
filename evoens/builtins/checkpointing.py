"""The checkpoint plugin: at the end of a generation (``evoens_generation_end``, after its
report) a checkpoint every ``checkpoint.every`` generations, one after the last generation (so
``evoens resume DIR --set generations=N`` can extend a finished run), and one when SIGINT or SIGTERM
arrives (after which the run stops cleanly, its summary saying ``"status": "interrupted"``);
``evoens resume DIR`` continues from the newest one. A checkpoint that cannot be written stops
the run (:class:`~evoens.errors.RunError`, exit code 1) with the previous ones intact."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Generator
from typing import Any

from evoens import hookimpl
from evoens.checkpoint import checkpoint_dir, save
from evoens.errors import RunError
from evoens.run import Run, run_state
from evoens.rundir import checkpoint_files, frozen_settings
from evoens.stash import StashKey

log = logging.getLogger("evoens")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
STATE = StashKey[dict[str, Any]]()  # {"signal": name or None, "previous": {signal: handler}}


@hookimpl
def evoens_run_start(run: Run) -> None:
    state: dict[str, Any] = {"signal": None, "previous": {}}
    run.stash[STATE] = state
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread

    def stop_after_this_generation(signum: int, _frame: Any) -> None:
        if state["signal"] is not None:  # a second signal: stop right away
            raise KeyboardInterrupt
        state["signal"] = signal.Signals(signum).name
        log.warning("%s received: checkpointing after this generation, then stopping", state["signal"])

    for sig in SIGNALS:
        state["previous"][sig] = signal.signal(sig, stop_after_this_generation)


@hookimpl
def evoens_generation_end(run: Run, generation: int) -> None:
    """Persist (not a report: a checkpoint that cannot be written stops the run)."""
    state = run.stash[STATE]
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


@hookimpl
def evoens_run_end(run: Run) -> None:
    for sig, handler in run.stash.get(STATE, {}).get("previous", {}).items():
        signal.signal(sig, handler)
