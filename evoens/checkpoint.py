"""Checkpoints: everything needed to continue a run bit-for-bit.

A checkpoint is a plain nested dict of tensors and Python scalars (so it loads with
``torch.load(weights_only=True)``): the generation counter, the loop's best fitness, the
trainer's state, the batcher's cursor and every RNG. Files are written atomically (temp file +
rename) as ``DIR/checkpoints/gen-000123.pt``. Each one carries a sha256 over its tensors' bytes
and its other values, in a fixed order (``"checksum"``), verified on load: a file that cannot be
read, fails its checksum or lacks an entry is reported and the previous one is used.

EvoTorch searchers have no state_dict, so :func:`object_state` walks their attributes (and
their distribution's, optimizer's and population's) and :func:`restore_object` writes the
values back into a freshly built searcher of the same configuration.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evoens import _evotorch_compat as compat
from evoens.errors import UserError

log = logging.getLogger("evoens")
FORMAT = 2
LEGACY = (1,)  # formats still read (no checksum)
REQUIRED = ("generation", "best_fitness", "trainer", "batcher", "rng")
SKIP = {"problem", "template", "fitness_fn", "evaluate_phases", *compat.SKIP_ATTRIBS}
"""Attributes never walked: evoens's own links and callables, and EvoTorch's (see the compat module)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used (one line: the file and what is wrong)."""


def _capture(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().as_subclass(torch.Tensor).clone()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)  # numpy scalars are not weights_only data; same IEEE double value
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state()}
    if isinstance(value, torch.optim.Optimizer):
        return {"__optimizer__": value.state_dict()}
    if isinstance(value, dict):
        return {k: _capture(v) for k, v in value.items() if isinstance(k, str)}
    if isinstance(value, (list, tuple)):
        return [_capture(v) for v in value]
    if compat.is_evotorch_object(value) and not compat.is_hook(value):
        return {"__object__": object_state(value)}
    return {"__skipped__": True}


def object_state(obj: Any) -> dict[str, Any]:
    """Tensors, scalars, generators and optimizers reachable from ``obj``'s attributes."""
    return {k: _capture(v) for k, v in vars(obj).items() if k not in SKIP}


def _restore(current: Any, saved: Any) -> Any:
    """The value to store for ``saved``; tensors and containers are updated in place when possible."""
    if isinstance(saved, dict) and "__skipped__" in saved:
        return current
    if isinstance(saved, dict) and "__generator__" in saved:
        current.set_state(saved["__generator__"])
        return current
    if isinstance(saved, dict) and "__optimizer__" in saved:
        current.load_state_dict(saved["__optimizer__"])
        return current
    if isinstance(saved, dict) and "__object__" in saved:
        restore_object(current, saved["__object__"])
        return current
    if isinstance(saved, torch.Tensor):
        if isinstance(current, torch.Tensor) and current.device == saved.device:
            # In place, so every alias (an optimizer's params, a Solution's view) sees the value.
            # Strides steer kernels' rounding, so a plain tensor also takes the saved layout.
            with torch.no_grad():
                if type(current) is torch.Tensor and current.stride() != saved.stride():
                    current.set_(saved.clone())
                elif (current.shape, current.dtype) == (saved.shape, saved.dtype):
                    current.as_subclass(torch.Tensor).copy_(saved)
                else:
                    return saved
            return current
        return saved.to(current.device) if isinstance(current, torch.Tensor) else saved
    if isinstance(saved, dict) and isinstance(current, dict):
        for key, value in saved.items():
            current[key] = _restore(current.get(key), value)
        return current
    if isinstance(saved, list) and isinstance(current, (list, tuple)) and len(current) == len(saved):
        restored = [_restore(c, s) for c, s in zip(current, saved)]
        return type(current)(restored) if isinstance(current, tuple) else restored
    return saved


def restore_object(obj: Any, state: dict[str, Any]) -> None:
    """Write :func:`object_state` back into an object of the same structure."""
    for key, saved in state.items():
        setattr(obj, key, _restore(getattr(obj, key, None), saved))
    compat.clear_status_cache(obj)  # EvoTorch's status cache: recomputed from the restored state


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def checksum(state: dict[str, Any]) -> str:
    """sha256 over every tensor's dtype, shape and bytes and every other value's repr, in the order
    of sorted keys (the ``"checksum"`` entry itself left out)."""
    digest = hashlib.sha256()
    _feed(digest, "", {k: v for k, v in state.items() if k != "checksum"})
    return digest.hexdigest()


def _feed(digest: Any, path: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().as_subclass(torch.Tensor).cpu().contiguous()
        digest.update(f"{path}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"{path}:dict:{len(value)}\n".encode())
        for key in sorted(value, key=repr):
            _feed(digest, f"{path}/{key!r}", value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{path}:{type(value).__name__}:{len(value)}\n".encode())
        for index, item in enumerate(value):
            _feed(digest, f"{path}/{index}", item)
    else:
        digest.update(f"{path}={type(value).__name__}:{value!r}\n".encode())


def write_file(path: Path, data: bytes | memoryview) -> None:
    """``data`` into ``path``, on the disk (fsync) before returning: a full disk is an OSError here."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save(run_dir: Path, generation: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``generation``; keep the newest ``keep``."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gen-{generation:06d}.pt"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    payload = {"format": FORMAT, **state}
    payload["checksum"] = checksum(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # in memory first: torch's writer reports a full disk as a RuntimeError
    try:
        with buffer.getbuffer() as view:  # released before the buffer is (else a BufferError at collection)
            write_file(tmp, view)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err  # named by the checkpoint's own name
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file is no checkpoint; the previous ones stay
        raise
    for old in sorted(folder.glob("gen-*.pt"))[:-keep]:
        old.unlink()
    return path


def load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, *LEGACY):
        raise CheckpointError(f"checkpoint {path} is not an evoens checkpoint of format {FORMAT}")
    missing = [key for key in (*REQUIRED, *(("checksum",) if state["format"] == FORMAT else ())) if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(map(repr, missing))}")
    if state["format"] == FORMAT and checksum(state) != state["checksum"]:
        raise CheckpointError(f"checkpoint {path} fails its checksum (its contents changed after it was written)")
    return state


def load_latest(
    run_dir: Path, check: Callable[[Path, dict[str, Any]], None] | None = None
) -> tuple[Path, dict[str, Any]]:
    """The newest usable checkpoint: one that is unreadable, fails its checksum, lacks an entry, or
    that ``check`` rejects with a :class:`CheckpointError`, is reported and the previous one tried."""
    paths = sorted((p for p in checkpoint_dir(run_dir).glob("gen-*.pt") if p.is_file()), reverse=True)
    if not paths:
        raise CheckpointError(f"{run_dir} has no checkpoints (expected {checkpoint_dir(run_dir)}/gen-*.pt)")
    for path in paths:
        try:
            state = load(path)
            if check is not None:
                check(path, state)
            return path, state
        except CheckpointError as exc:
            log.warning("%s; trying the previous checkpoint", str(exc).replace("\n", " "))
    raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)} is usable; the run must start over")
