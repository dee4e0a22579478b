"""Run configs: TOML files validated into small dataclasses.

A run config is a TOML document whose tables mirror the dataclasses below::

    seed = 1
    generations = 500

    [trainer]
    popsize = 128
    searcher = "snes"

    [extra.myplugin]        # free-form table for third-party plugins
    alpha = 0.5

Validation is generic: one walker reads each dataclass's fields, their type hints and the
constraints in their metadata (``ge``/``gt``/``le``/``lt`` bounds, ``finite``, ``choices`` and a
one-line ``help``), so adding a knob is one line. Every error is a one-line :class:`ConfigError` naming the
dotted key, the bad value and what is allowed, e.g.::

    unknown key 'trainer.popsze' (did you mean 'popsize'?); allowed keys in [trainer]: name, ...
    trainer.popsize = 'ten': expected an integer
    trainer.lr = -1.0: must be > 0

Provider names (datasets, searchers, reporters, forward strategies, activations, optimizers, ...)
are free strings here: the registry checks them when the run is built, against what the plugins
registered, with the same one-line "did you mean" errors. Writing a config back as TOML lives in
:mod:`evoens.toml_writer` (``dump_toml`` and ``config_to_dict`` are re-exported here).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import operator
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from evoens.errors import ConfigError, did_you_mean
from evoens.errors import show as _show
from evoens.toml_writer import config_to_dict, dump_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PluginsConfig",
    "RayConfig",
    "RunConfig",
    "TrainerConfig",
    "WatchdogConfig",
    "config_from_dict",
    "config_to_dict",
    "dump_toml",
    "load_config",
    "loads_config",
    "option",
    "parse_options",
]


def _opt(default: Any, help: str, **constraints: Any) -> Any:
    """A dataclass field: its default, a one-line help text and constraints (ge/gt/le/lt, finite, choices)."""
    meta = {"help": help, **constraints}
    if isinstance(default, type):  # a nested section
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which dataset, and how it is split and batched."""

    name: str = _opt("digits", "dataset provider name (digits, mnist1d, gaussian, mnist, ...)")
    batch_size: int = _opt(0, "examples per generation; 0 = the whole training split", ge=0)
    val_fraction: float = _opt(0.1, "fraction of the data held out for validation", ge=0, lt=0.9)
    test_fraction: float = _opt(0.2, "fraction of the data held out for testing", gt=0, lt=0.9)
    data_dir: str | None = _opt(None, "directory with (or for downloaded) dataset files")
    options: dict[str, Any] = _opt({}, "provider-specific options, passed through unchanged")


@dataclass
class ModelConfig:
    """The architecture every individual of the population shares."""

    name: str = _opt("mlp", "model provider name")
    hidden: list[int] = _opt([32], "hidden layer widths", ge=1)
    activation: str = _opt("tanh", "hidden activation: an 'activation' provider (relu, tanh, sigmoid, gelu, ...)")
    options: dict[str, Any] = _opt({}, "provider-specific options, passed through unchanged")


@dataclass
class TrainerConfig:
    """How the population is searched or trained."""

    name: str = _opt("evolution", "trainer provider name (checked by the registry)")
    popsize: int = _opt(64, "number of individuals in the population", ge=1)
    searcher: str = _opt("pgpe", "search algorithm name (e.g. snes, xnes, pgpe, cmaes, cem, ga)")
    fitness: str = _opt("neg_cross_entropy", "fitness evaluator name")
    searcher_options: dict[str, Any] = _opt({}, "keyword arguments for the searcher")
    optimizer: str = _opt("adam", "torch optimizer of gradient-trained populations: an 'optimizer' provider")
    lr: float = _opt(0.01, "learning rate of that optimizer", gt=0, finite=True)
    weight_decay: float = _opt(0.0, "weight decay of that optimizer", ge=0, finite=True)
    num_actors: int | str = _opt(
        0,
        "parallel (Ray) actors: 0 = in-process, N, or max/num_cpus/num_gpus/num_devices",
        ge=0,
        choices=("max", "num_cpus", "num_gpus", "num_devices"),
    )
    max_chunk: int | None = _opt(None, "most individuals evaluated at once (default: automatic)", ge=1)
    strategy: str = _opt("auto", "population forward: auto, or a 'strategy' provider (loop, vmap, bmm, ...)")
    options: dict[str, Any] = _opt({}, "the trainer provider's own options (validated by its options class)")


@dataclass
class PluginsConfig:
    """Which plugins a run must not load, and which it cannot run without."""

    disable: list[str] = _opt([], "plugin names to block")
    require: list[str] = _opt([], "plugin names that must load (an import failure is an error)")


@dataclass
class CheckpointConfig:
    """When checkpoints are written into the run directory."""

    every: int = _opt(0, "write a checkpoint every N generations; 0 = only at the end", ge=0)
    keep: int = _opt(2, "number of most recent checkpoints kept", ge=1)


@dataclass
class WatchdogConfig:
    """When a run whose fitness is no longer finite is stopped as diverged (evoens.builtins.watchdog)."""

    diverge_after: int = _opt(
        3, "stop as 'diverged' after N generations in a row without a finite fitness; 0 = never", ge=0
    )


@dataclass
class RayConfig:
    """Where Ray actors run when ``trainer.num_actors`` > 0 and what each gets (evoens.distributed)."""

    address: str | None = _opt(
        None, "Ray cluster to join: 'auto' (Ray's: RAY_ADDRESS or the cluster `ray start` runs here) or "
        "HOST:PORT; unset: RAY_ADDRESS, else a local Ray instance"
    )
    threads_per_actor: int = _opt(0, "torch threads (and Ray CPUs) of each actor; 0: the cluster's CPUs / actors", ge=0)
    num_gpus_per_actor: float | str = _opt(
        0.0, "GPUs of each actor (fractional ok), 'max' (split all) or 'all' (every GPU)", ge=0, choices=("max", "all")
    )
    max_restarts: int = _opt(3, "dead actors replaced (their share re-evaluated) per run before it stops", ge=0)
    start_timeout: float = _opt(120.0, "seconds an actor may take to start and import the plugins", gt=0, finite=True)
    timeout: float = _opt(1800.0, "seconds an actor may take to return its share (a dead one is noticed at once)",
                          gt=0, finite=True)  # fmt: skip


@dataclass
class RunConfig:
    """A whole run: the top level of a config file."""

    seed: int = _opt(0, "seed of every random number generator", ge=0)
    generations: int = _opt(100, "number of generations", ge=1)
    device: str = _opt("auto", "where the population is evaluated", choices=("auto", "cpu", "cuda"))
    eval_every: int = _opt(10, "evaluate on the validation split every N generations", ge=1)
    reporters: list[str] = _opt(["jsonl", "tensorboard", "plot"], "reporter names")
    threads: int = _opt(0, "torch intra-op threads for the run (torch.set_num_threads); 0: torch's default", ge=0)
    progress_seconds: float = _opt(
        30.0, "without a terminal, a progress line on stderr every N seconds (0: none)", ge=0
    )
    data: DataConfig = _opt(DataConfig, "the dataset")
    model: ModelConfig = _opt(ModelConfig, "the architecture")
    trainer: TrainerConfig = _opt(TrainerConfig, "the search / training")
    plugins: PluginsConfig = _opt(PluginsConfig, "plugin selection")
    checkpoint: CheckpointConfig = _opt(CheckpointConfig, "checkpointing")
    watchdog: WatchdogConfig = _opt(WatchdogConfig, "divergence watch")
    ray: RayConfig = _opt(RayConfig, "Ray actors: cluster address and per-actor resources")
    extra: dict[str, Any] = _opt({}, "free-form tables for third-party plugins: [extra.NAME]")


# ---------------------------------------------------------------------------------------------
# Validation: one generic walker over dataclass fields and type hints
# ---------------------------------------------------------------------------------------------

_T = TypeVar("_T")
_NoneType = type(None)
_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "ge": operator.ge,
    "gt": operator.gt,
    "le": operator.le,
    "lt": operator.lt,
}
_SINGULAR = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def config_from_dict(d: Mapping[str, Any]) -> RunConfig:
    """Validate a parsed TOML document (nested mappings) into a :class:`RunConfig`.

    Missing keys take their defaults; the input is not modified and never aliased.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"a run config must be a table of keys, got {_show(d)}")
    return _build(RunConfig, d, "")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parse_options(cls: type[_T], table: Mapping[str, Any], key: str) -> _T:
    """A provider's options dataclass from its config table (``key`` names it: ``trainer.options``),
    validated by the same rules as the rest of the config: unknown keys with a "did you mean",
    types, ranges and choices from each field's metadata (:func:`option`)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{key} = {_show(table)}: expected a table")
    return _build(cls, table, key + ".")


def option(default: Any, help: str, **constraints: Any) -> Any:
    """A field of a provider's options dataclass: default, one-line help, constraints
    (``ge``/``gt``/``le``/``lt`` bounds, ``finite``, ``choices``), as in the run config's own sections."""
    return _opt(default, help, **constraints)


def _build(cls: type[_T], table: Mapping[str, Any], prefix: str) -> _T:
    """One section: every key must be a field of ``cls``; ``prefix`` is its dotted path + '.'."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(_unknown_key(cls, str(key), prefix))
        kwargs[key] = _convert(value, _hints(cls)[key], prefix + key, fields[key].metadata)
    return cls(**kwargs)


def _convert(value: Any, tp: Any, path: str, meta: Mapping[str, Any], others: Sequence[Any] = ()) -> Any:
    """Check ``value`` against type ``tp`` and the field's constraints; return a fresh copy.

    ``others``: the other arms of the union ``tp`` was picked from, named when a choice is wrong.
    """
    if not _accepts(value, tp):
        raise ConfigError(f"{path} = {_show(value)}: expected {_describe(tp)}")
    if _is_union(tp):
        if value is None:
            return None
        arm = next(a for a in typing.get_args(tp) if a is not _NoneType and _accepts(value, a))
        others = [a for a in typing.get_args(tp) if a not in (arm, _NoneType)]
        return _convert(value, arm, path, meta, others)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path + ".")  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}[{i}]", meta) for i, v in enumerate(value)]
    if origin is dict or tp is Any:
        return copy.deepcopy(dict(value) if origin is dict else value)
    return _check(float(value) if tp is float else value, path, meta, others)


def _check(value: Any, path: str, meta: Mapping[str, Any], others: Sequence[Any]) -> Any:
    """Apply the field's range (to numbers) and choices (to strings)."""
    choices = meta.get("choices")
    if isinstance(value, str) and choices is not None and value not in choices:
        alt = "".join(f" or {_describe(a)} {_range_text(meta)}".rstrip() for a in others)
        raise ConfigError(
            f"{path} = {_show(value)}: must be one of {', '.join(choices)}{alt}{did_you_mean(value, choices)}"
        )
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    # written as `not op(...)` so that NaN fails every bound
    bad = is_number and any(not op(value, meta[k]) for k, op in _BOUNDS.items() if k in meta)
    if bad or (is_number and meta.get("finite") and not math.isfinite(value)):
        raise ConfigError(f"{path} = {_show(value)}: must be {_range_text(meta)}")
    return value


def _accepts(value: Any, tp: Any) -> bool:
    """Shallow type check: TOML types, int accepted for float, bool never taken for a number."""
    if tp is Any:
        return True
    if _is_union(tp):
        return any(_accepts(value, a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is list:
        return isinstance(value, (list, tuple))
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _describe(tp: Any) -> str:
    if _is_union(tp):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not _NoneType)
    if typing.get_origin(tp) is list:
        return f"a list of {_PLURAL.get(typing.get_args(tp)[0], 'values')}"
    if typing.get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "a table"
    return _SINGULAR.get(tp, "any value")


def _range_text(meta: Mapping[str, Any]) -> str:
    """'>= 0', '> 0', 'in [0, 0.9)', '> 0 and finite', ... or '' when the field has no bounds."""
    lo = next(((k, meta[k]) for k in ("ge", "gt") if k in meta), None)
    hi = next(((k, meta[k]) for k in ("le", "lt") if k in meta), None)
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    if lo and hi:
        bounds = f"in {'[' if lo[0] == 'ge' else '('}{lo[1]}, {hi[1]}{']' if hi[0] == 'le' else ')'}"
    else:
        bounds = " ".join(f"{symbols[b[0]]} {b[1]}" for b in (lo, hi) if b)
    if meta.get("finite"):
        return f"{bounds} and finite" if bounds else "finite"
    return bounds


def _unknown_key(cls: type, key: str, prefix: str) -> str:
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    # a key put in the wrong section ('popsize' at the top level) is a common slip
    elsewhere = [
        f"{prefix}{name}.{key}"
        for name, tp in _hints(cls).items()
        if dataclasses.is_dataclass(tp) and key in _hints(tp)
    ]
    hint = f" (did you mean {' or '.join(map(repr, elsewhere))}?)" if elsewhere else did_you_mean(key, names)
    where = f"in [{prefix[:-1]}]" if prefix else "at the top level"
    return f"unknown key {prefix + key!r}{hint}; allowed keys {where}: {', '.join(names)}"


# ---------------------------------------------------------------------------------------------
# Reading: files, text, overrides
# ---------------------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML run config, apply ``key=value`` overrides (dotted keys), validate it.

    An override's value is parsed as a TOML value (``model.hidden=[64,32]``, ``trainer.lr=0.1``),
    falling back to a plain string (``data.name=mnist``); quote it to force a string
    (``data.name='"true"'``).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config path is a directory, not a TOML file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {_one_line(err)}") from err
    return loads_config(text, overrides, source=str(path))


def loads_config(text: str, overrides: Sequence[str] = (), *, source: str = "<string>") -> RunConfig:
    """Like :func:`load_config`, from TOML text; ``source`` names it in syntax errors."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: invalid TOML: {_one_line(err)}") from err
    if isinstance(overrides, str):  # a lone "k=v" would otherwise be split into characters
        overrides = [overrides]
    for item in overrides:
        _apply_override(table, item)
    return config_from_dict(table)


def _apply_override(table: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"malformed override {item!r}: expected KEY=VALUE, e.g. trainer.popsize=128")
    parts = _parse_key(key.strip(), item)
    node = table
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])} = {_show(child)} is not a table")
        node = child
    node[parts[-1]] = _parse_value(raw.strip())


def _parse_key(key: str, item: str) -> list[str]:
    """'trainer.popsize' -> ['trainer', 'popsize'], with TOML's rules (quoted parts allowed)."""
    try:
        doc: Any = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"malformed override {item!r}: {key!r} is not a (dotted) key") from None
    parts = []
    while isinstance(doc, dict):
        ((part, doc),) = doc.items()
        parts.append(part)
    return parts


def _parse_value(raw: str) -> Any:
    try:
        doc = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    return doc["v"] if len(doc) == 1 else raw


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
