"""The generation loop: one hook call per phase, nothing else.

:func:`execute` builds a :class:`Run` from a validated config (every component chosen by
provider name), calls ``evoens_run_start``, hands the loop to ``evoens_run_loop`` and writes
``summary.json``. The default loop below is an ordinary ``trylast`` hookimpl, so a plugin can
replace it; logging, checkpoints and progress bars are plugins too, never inline here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from evoens import hookimpl, rundir
from evoens.checkpoint import CheckpointError, load_latest
from evoens.config import RunConfig, dump_toml, load_config
from evoens.errors import PluginError, RunError, UserError, show
from evoens.manager import PluginManager
from evoens.phases import Phases, call_hook, explain, merge
from evoens.run import ADDED, Run, build_run, final_evaluation, remove_entries, restore_run

log = logging.getLogger("evoens")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (a run's config, ``evoens bench --threads``, a
    suite's one thread) for the block (0 or None: left as they are), and restored after it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)


def as_numbers(stats: dict[str, Any]) -> dict[str, Any]:
    """Statistics stay tensors on the device during a generation; they reach the host once,
    in a single transfer, when they are reported."""
    keys = [k for k, v in stats.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
    if not keys:
        return dict(stats)
    device = stats[keys[0]].device
    values = torch.stack([stats[k].detach().reshape(()).to(device, torch.float64) for k in keys]).tolist()
    return {**stats, **dict(zip(keys, values))}


def run_generation(run: Run, generation: int) -> dict[str, Any]:
    """One generation, phase by phase (evoens.phases runs the evaluation phases inside the step)."""
    started = time.perf_counter()
    call_hook(run, "evoens_generation_start", run=run, generation=generation)
    phases = Phases(run, generation)
    stats = {**_step(run, generation, phases), **phases.stats, "nonfinite": phases.nonfinite}
    if phases.calls == 0:
        raise PluginError(
            f"trainer '{run.config.trainer.name}' finished generation {generation} without evaluating its "
            "candidates: a trainer's step must call the evaluate it is given at least once"
        )
    stats.update(merge(call_hook(run, "evoens_after_tell", run=run, generation=generation, stats=stats)))
    stats = as_numbers(stats)
    stats["generations_per_second"] = 1.0 / max(time.perf_counter() - started, 1e-9)
    run.generation = generation + 1
    run.best_fitness = max(run.best_fitness, stats["best_fitness"])
    run.hook.evoens_report(run=run, generation=generation, stats=stats)  # failures isolated per plugin
    call_hook(run, "evoens_generation_end", run=run, generation=generation, stats=stats)
    return stats


def _step(run: Run, generation: int, phases: Phases) -> dict[str, Any]:
    """The trainer's step; an error of its own names the trainer and its plugin (a hook's error
    inside it is already a PluginError naming that hook's plugin)."""
    name = run.config.trainer.name
    plugin = run.registry.get("trainer", name).plugin
    try:
        stats = run.trainer.step(generation, phases)
    except (UserError, RunError):
        raise
    except Exception as exc:
        where = f"in the step of trainer '{name}' (plugin '{plugin}') at generation {generation}"
        failure = explain(run.context, exc, where)
        if failure is not None:
            raise failure from exc
        raise PluginError(
            f"trainer '{name}' (plugin '{plugin}') failed in step at generation {generation}: "
            f"{type(exc).__name__}: {exc} (--debug shows the traceback)"
        ) from exc
    if not isinstance(stats, dict) or "best_fitness" not in stats:
        got = f"a dict with keys {', '.join(map(repr, stats)) or 'none'}" if isinstance(stats, dict) else show(stats)
        raise PluginError(
            f"trainer '{name}' (plugin '{plugin}') returned {got} from step at generation {generation}: a "
            "trainer's step returns its statistics as a dict with at least 'best_fitness' (evoens.kinds.Trainer)"
        )
    return stats


@hookimpl(trylast=True)
def evoens_run_loop(run: Run) -> dict[str, Any]:
    """The default loop: one :func:`run_generation` per generation until done or told to stop."""
    stats: dict[str, Any] = {}
    for generation in range(run.generation, run.config.generations):
        stats = run_generation(run, generation)
        if call_hook(run, "evoens_should_stop", run=run, generation=generation, stats=stats):
            break
    final = {k: v for k, v in stats.items() if k != "generations_per_second"}  # results, not timings
    return {"generations": run.generation, "best_fitness": run.best_fitness, "final_stats": final}


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """``path`` holds ``payload`` or, if it cannot be written (a full disk), what it held before:
    never a 0-byte or half file, and no temp file is left behind."""
    _write_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


class SummaryUnwritten(RunError):
    """``summary.json`` could not be written; what it held before stays (see :func:`write_json_atomic`)."""


def _finish(run: Run, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` and call ``evoens_run_end`` (also after a failure, and also when the
    summary cannot be written: the plugins still close their files)."""
    summary["wall_seconds"] = time.perf_counter() - run.started
    summary.update(run.summary)
    errors = [*run.summary.get("reporter_errors", []), *run.pm.report_errors()]
    if errors:  # report sinks (evoens.builtins.reporters) and report hooks that failed
        summary["reporter_errors"] = errors
    run.summary = summary
    path = run.out_dir / "summary.json"
    unwritten: OSError | None = None
    try:
        write_json_atomic(path, summary)
    except OSError as err:
        unwritten = err
    try:
        call_hook(run, "evoens_run_end", run=run, summary=summary)
    finally:
        remove_entries(run.stash.get(ADDED, []))
    if unwritten is not None:
        kept = "keeps its previous contents" if path.exists() else "was not written"
        raise SummaryUnwritten(f"cannot write {path}: {unwritten.strerror or unwritten}; it {kept}") from unwritten


def execute(config: RunConfig, out_dir: str | Path, pm: PluginManager, *, overwrite: bool = False) -> dict[str, Any]:
    """Run ``config`` into ``out_dir`` and return the summary (also ``out_dir/summary.json``).

    A directory that holds a run already is refused (:class:`~evoens.rundir.RunDirError`), or with
    ``overwrite`` moved aside once the new run is built; nothing is created before the run is
    built, so a start-up that fails leaves no directory behind."""
    out = Path(out_dir)
    busy = rundir.holder(out)
    if busy:
        raise rundir.RunDirLocked(busy)
    rundir.refuse_file(out)
    if not overwrite:
        rundir.refuse_existing(out)
    with torch_threads(config.threads):
        return _execute(config, out, pm, overwrite)


def _execute(config: RunConfig, out: Path, pm: PluginManager, overwrite: bool) -> dict[str, Any]:
    pm.hook.evoens_configure.call_historic(kwargs={"config": config})
    run = build_run(config, out, pm)
    try:
        lock = rundir.claim(out, overwrite=overwrite)
    except BaseException:
        remove_entries(run.stash.get(ADDED, []))
        raise
    with lock:
        try:
            _write_config(out, config)
        except BaseException:
            remove_entries(run.stash.get(ADDED, []))
            raise
        return _drive(run)


def resume(out_dir: str | Path, pm: PluginManager, overrides: list[str] | None = None) -> dict[str, Any]:
    """Continue the run in ``out_dir`` from its newest usable checkpoint, holding its lock.

    Overrides that change what the checkpoint fixes are refused; the others are recorded in
    ``config.toml``. A run that already reached ``generations`` raises :class:`~evoens.rundir.NothingToDo`
    and changes nothing."""
    out = Path(out_dir)
    if not (out / "config.toml").is_file():
        raise rundir.RunDirError(f"{out} is not a run directory: it has no config.toml (`evoens run CONFIG --out DIR`)")
    recorded = load_config(out / "config.toml")
    config = load_config(out / "config.toml", overrides or [])
    rundir.check_resume_overrides(recorded, config)
    with torch_threads(config.threads), rundir.RunLock.acquire(out, "resume"):
        _nothing_to_do_by_summary(out, config)
        if not rundir.checkpoint_files(out):
            raise CheckpointError(
                f"{out} has no checkpoints (expected {out / 'checkpoints'}/gen-*.pt): nothing to resume; start it "
                f"again with `evoens run {out / 'config.toml'} --out {out} --overwrite`"
            )
        pm.hook.evoens_configure.call_historic(kwargs={"config": config})
        run = build_run(config, out, pm)
        try:
            path = _restore_latest(run)
        except BaseException:
            remove_entries(run.stash.get(ADDED, []))
            raise
        if config != recorded:  # honoured, and kept for a later plain `evoens resume`
            try:
                _write_config(out, config)
            except BaseException:
                remove_entries(run.stash.get(ADDED, []))
                raise
        log.info("resuming %s at generation %d from %s", out, run.generation, path.name)
        return _drive(run)


def _nothing_to_do_by_summary(out: Path, config: RunConfig) -> None:
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return
    done = summary.get("generations") if isinstance(summary, dict) else None
    if summary.get("status") == "finished" and isinstance(done, int) and done >= config.generations:
        raise rundir.NothingToDo(
            f"nothing to do: {out} finished at generation {done} and generations = {config.generations}; "
            f"summary.json is unchanged (extend it with `evoens resume {out} --set generations=N`, N > {done})"
        )


def _restore_latest(run: Run) -> Path:
    """Restore the newest checkpoint that fits; a mismatch with the config is one line."""
    fresh = run.trainer.state_dict()

    def check(path: Path, state: dict[str, Any]) -> None:
        if isinstance(state.get("config"), dict):
            rundir.check_checkpoint_matches(path, state["config"], run.config)
        if isinstance(fresh, dict) and isinstance(state["trainer"], dict):
            missing = [k for k in fresh if k not in state["trainer"]]
            if missing:
                raise CheckpointError(f"checkpoint {path} lacks the trainer's {', '.join(map(repr, missing))}")
        if state["generation"] >= run.config.generations:
            raise rundir.NothingToDo(
                f"nothing to do: the newest checkpoint of {run.out_dir} is at generation {state['generation']}, "
                f"at or past generations = {run.config.generations}; summary.json is unchanged (extend it "
                f"with `evoens resume {run.out_dir} --set generations=N`, N > {state['generation']})"
            )

    path, state = load_latest(run.out_dir, check)
    try:
        restore_run(run, state)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit the run built from {run.out_dir / 'config.toml'}: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from exc
    return path


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename; the temp file never stays."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # a full disk shows here, not after the rename
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _final_evaluation(run: Run) -> dict[str, Any]:
    try:
        return final_evaluation(run)
    except Exception as exc:
        failure = explain(run.context, exc, f"in the final evaluation after generation {run.generation}")
        if failure is not None:
            raise failure from exc
        raise


def _write_config(out: Path, config: RunConfig) -> None:
    path = out / "config.toml"
    try:
        _write_atomic(path, dump_toml(config))
    except OSError as err:
        raise RunError(f"cannot write {path}: {err.strerror or err}; nothing ran") from err


def _drive(run: Run) -> dict[str, Any]:
    try:
        call_hook(run, "evoens_run_start", run=run)
        result = call_hook(run, "evoens_run_loop", run=run)
        if result is None:
            raise PluginError("no plugin provides evoens_run_loop (is the 'loop' plugin disabled?): nothing ran")
        summary = {"status": "finished", **result, **_final_evaluation(run)}
        for extra in reversed(call_hook(run, "evoens_summary", run=run)):
            summary.update(extra or {})
    except BaseException as exc:  # leave a record and close the plugins' files, then re-raise
        status = getattr(exc, "status", "failed")  # a RunError may say more precisely ("diverged")
        try:
            _finish(run, {"status": status, "error": f"{type(exc).__name__}: {exc}", "generations": run.generation})
        except SummaryUnwritten as unwritten:  # one line saying both
            raise RunError(f"{exc}; {unwritten}") from exc
        raise
    try:
        _finish(run, summary)
    except SummaryUnwritten as unwritten:
        raise RunError(
            f"the run reached generation {run.generation}, but {unwritten}; the run itself is saved: its "
            "final checkpoint and metrics.jsonl are intact"
        ) from unwritten
    return summary


__all__ = ["Run", "execute", "resume", "evoens_run_loop"]
