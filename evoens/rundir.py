"""Run directories: one run per directory, one process writing it at a time.

A directory *holds a run* once it has a ``config.toml``, a ``summary.json``, a ``metrics.jsonl``
or a checkpoint file. ``evoens run`` refuses such a directory unless told ``--overwrite``, which
moves the old run aside (``DIR.old-<UTC timestamp>``), never deletes it; ``evoens resume``
continues it. While a run or resume writes a directory it holds ``DIR/.evoens.lock``: an
``fcntl.flock`` the kernel releases when the process ends however it ends, and a JSON line
saying who holds it (pid, host, since when, command). A second process is refused with that
line; a lock left by a process that no longer runs is taken over with a warning.

Which config keys ``evoens resume --set`` may change is decided here too (:func:`check_resume_overrides`):
the checkpointed state (population, searcher, optimizer, RNGs, data cursor) fixes the rest.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evoens.config import RunConfig, config_to_dict
from evoens.errors import UserError, show

log = logging.getLogger("evoens")
LOCK_NAME = ".evoens.lock"
MARKERS = ("config.toml", "summary.json", "metrics.jsonl")
"""Files whose presence means a directory holds a run (besides checkpoint files)."""


class RunDirError(UserError):
    """A run directory that cannot be used as asked (one line: the directory and what to do)."""


class RunDirLocked(RunDirError):
    """Another process is writing the run directory."""


class NothingToDo(Exception):
    """``evoens resume`` of a run that already reached its target: nothing was changed."""


# ---------------------------------------------------------------------------------------------
# What a directory holds
# ---------------------------------------------------------------------------------------------


def checkpoint_files(directory: Path) -> list[Path]:
    folder = directory / "checkpoints"
    return sorted(p for p in folder.glob("gen-*.pt") if p.is_file()) if folder.is_dir() else []


def holds_run(directory: Path) -> bool:
    return directory.is_dir() and (any((directory / m).exists() for m in MARKERS) or bool(checkpoint_files(directory)))


def describe(directory: Path) -> str:
    """What the run in ``directory`` is, for one-line messages: ``finished at generation 6, 2 checkpoints``."""
    parts = []
    try:
        summary = json.loads((directory / "summary.json").read_text())
        parts.append(f"{summary.get('status', 'unknown')} at generation {summary.get('generations', '?')}")
    except (OSError, ValueError, AttributeError):
        parts.append("no summary")
    count = len(checkpoint_files(directory))
    parts.append(f"{count} checkpoint{'s' if count != 1 else ''}")
    return ", ".join(parts)


def refuse_existing(directory: Path) -> None:
    """A run directory for a new run must not hold a run already."""
    if holds_run(directory):
        resumable = bool(checkpoint_files(directory))
        how = f"continue it with `evoens resume {directory}`, " if resumable else "it has no checkpoint to resume: "
        raise RunDirError(
            f"{directory} already holds a run ({describe(directory)}): {how}choose a fresh directory with --out, "
            "or pass --overwrite to move it aside"
        )


def refuse_file(directory: Path) -> None:
    """``directory`` (or a folder above it) must not be a file: a run directory cannot be made there."""
    blocking = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        what = "is" if blocking == directory else f"(a folder above {directory}) is"
        raise RunDirError(f"cannot make the run directory {directory}: {blocking} {what} a file; choose another --out")


def move_aside(directory: Path) -> Path:
    """Rename ``directory`` to ``DIR.old-<UTC timestamp>`` (a free name) and return the new path."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = directory.with_name(f"{directory.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = directory.with_name(f"{directory.name}.old-{stamp}-{n}")
    directory.rename(target)
    return target


# ---------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_info(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        info = json.loads(raw.decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _who(info: dict[str, Any]) -> str:
    if not info:
        return "another process"
    command = f", `evoens {info['command']}`" if info.get("command") else ""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('since', '?')}{command}"


@dataclass
class RunLock:
    """The held lock of one run directory; :meth:`release` (or leaving the ``with``) frees it."""

    path: Path
    fd: int
    info: dict[str, Any]

    @classmethod
    def acquire(cls, directory: Path, command: str = "run") -> RunLock:
        """Lock ``directory`` (which exists) or raise :class:`RunDirLocked` naming the holder."""
        path = directory / LOCK_NAME
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                hint = "; copy the run to a writable place and resume it there" if err.errno == errno.EROFS else ""
                raise RunDirError(f"cannot lock the run directory {directory}: {err.strerror or err}{hint}") from None
            try:
                previous = _lock_fd(fd, path, directory)
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break  # else: released and unlinked by its holder between our open and flock
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        if previous and previous.get("pid") != os.getpid():
            log.warning("taking over the stale lock of %s: %s no longer runs", directory, _who(previous))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "command": command}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())
        return cls(path, fd, info)

    def release(self) -> None:
        """Unlink while still holding it (so no one locks a file about to vanish), then close."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                self.path.unlink()
        os.close(self.fd)
        self.fd = -1

    def moved_to(self, directory: Path) -> None:
        """The locked directory was renamed to ``directory`` (its lock file went with it)."""
        self.path = directory / LOCK_NAME

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_fd(fd: int, path: Path, directory: Path) -> dict[str, Any]:
    """flock ``fd`` without waiting; return what the previous holder wrote (a stale lock's info)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirLocked(_locked_message(directory, path, _read_info(fd))) from None
    except OSError as err:  # no kernel locks here (some network filesystems): trust the pid
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        info = _read_info(fd)
        pid = info.get("pid")
        elsewhere = info.get("host") not in (None, socket.gethostname())
        if info and pid != os.getpid() and (elsewhere or (isinstance(pid, int) and _pid_alive(pid))):
            raise RunDirLocked(_locked_message(directory, path, info)) from None
    return _read_info(fd)


def _locked_message(directory: Path, path: Path, info: dict[str, Any]) -> str:
    return (
        f"{directory} is in use by {_who(info)} (lock {path}): wait for it to end or stop it; "
        "the lock of a process that died is taken over by the next run"
    )


def holder(directory: Path) -> str | None:
    """Who holds the lock of ``directory`` right now (``None``: nobody), without taking it."""
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _locked_message(directory, path, _read_info(fd))
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def claim(directory: Path, *, overwrite: bool = False) -> RunLock:
    """The run directory for a new run, created, empty of any earlier run and locked (release the
    returned lock, e.g. by leaving ``with lock:``).

    An earlier run is refused, or with ``overwrite`` moved aside; whatever this call created is
    removed again when it fails, and nothing that was there before is ever removed."""
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    refuse_file(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        hint = "; choose a writable --out" if err.errno in (errno.EROFS, errno.EACCES, errno.ENOSPC) else ""
        raise RunDirError(f"cannot create the run directory {directory}: {err.strerror or err}{hint}") from None
    try:
        lock = RunLock.acquire(directory, "run")
        if holds_run(directory):
            if not overwrite:
                lock.release()
                refuse_existing(directory)
            aside = move_aside(directory)
            lock.moved_to(aside)
            lock.release()
            log.warning("the previous run in %s was moved aside to %s", directory, aside)
            directory.mkdir()
            lock = RunLock.acquire(directory, "run")
    except BaseException:
        remove_created(created)
        raise
    return lock


def remove_created(created: list[Path]) -> None:
    """Remove the folders of ``created`` (innermost first) that are empty: never anything else."""
    for path in created:
        with contextlib.suppress(OSError):
            path.rmdir()


# ---------------------------------------------------------------------------------------------
# What resume may change
# ---------------------------------------------------------------------------------------------

RESUMABLE = (
    "generations", "eval_every", "reporters", "checkpoint", "threads", "device", "progress_seconds",
    "plugins", "watchdog", "data.data_dir", "trainer.strategy", "trainer.max_chunk", "trainer.num_actors", "ray",
)  # fmt: skip
"""Keys (and tables) a resumed run may change: how long, where and how it runs and reports."""
WHY = {
    "seed": "the checkpoint's random number generators continue the seed the run started with",
    "model": "the checkpoint holds parameters of the configured architecture",
    "trainer": "the checkpoint holds the trainer's state (population, searcher, optimizer) as configured",
    "data": "the checkpoint's data cursor and splits belong to the configured dataset and batch size",
    "extra": "plugins' settings may be part of the checkpointed state",
}


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path.count(".") < 1:  # sections; option tables stay whole
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def frozen_settings(config: RunConfig) -> dict[str, Any]:
    """The config entries a checkpoint depends on (stored in it, compared on resume)."""
    return {k: v for k, v in _flatten(config_to_dict(config)).items() if not _resumable(k)}


def _reason(key: str) -> str:
    return WHY.get(key.split(".")[0], "it is part of the checkpointed state")


def check_resume_overrides(recorded: RunConfig, wanted: RunConfig) -> None:
    """Refuse the first override that changes a key the checkpointed state fixes."""
    before, after = frozen_settings(recorded), frozen_settings(wanted)
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            raise RunDirError(
                f"{key} cannot change on resume ({show(before.get(key))} -> {show(after.get(key))}): "
                f"{_reason(key)}; start a new run with `evoens run CONFIG --out NEW_DIR` instead"
            )


def check_checkpoint_matches(path: Path, saved: dict[str, Any], config: RunConfig) -> None:
    """A checkpoint written for other settings than the run's config.toml is a one-line error."""
    current = frozen_settings(config)
    for key in sorted(saved.keys() | current.keys()):
        if key in saved and key in current and saved[key] != current[key]:
            raise RunDirError(
                f"checkpoint {path} does not match the run's config: it was written with {key} = "
                f"{show(saved[key])}, config.toml says {show(current[key])} ({_reason(key)}); "
                "restore that setting or start a new run"
            )
