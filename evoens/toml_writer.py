"""Writing configs back as TOML: ``dump_toml`` turns a config dataclass (or a mapping) into text
that ``evoens.config.loads_config`` reads back to an equal config. Run directories keep the
resolved config this way (``config.toml``). Standard library only."""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from collections.abc import Mapping
from typing import Any

from evoens.errors import ConfigError
from evoens.errors import show as _show

__all__ = ["config_to_dict", "dump_toml"]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as nested plain dicts (a deep copy; None values kept)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict expects a config dataclass instance, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


def dump_toml(cfg: Any) -> str:
    """TOML text for a config dataclass or a mapping; None values are omitted.

    ``loads_config(dump_toml(cfg)) == cfg`` for every valid :class:`RunConfig` (no Optional field
    has a non-None default, so omitting None loses nothing).
    """
    data = config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    if not isinstance(data, Mapping):
        raise TypeError(f"dump_toml expects a config dataclass or a mapping, got {type(cfg).__name__}")
    lines: list[str] = []
    _write_table(lines, [], data)
    return "\n".join(lines) + "\n"


def _write_table(lines: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    """Key/value lines first, then one [header] per non-empty sub-table (empty ones stay inline)."""
    inline = [(k, v) for k, v in table.items() if v is not None and not (isinstance(v, Mapping) and v)]
    nested = [(k, v) for k, v in table.items() if isinstance(v, Mapping) and v]
    if inline and path:
        lines += [""] if lines else []
        lines.append(f"[{'.'.join(map(_toml_key, path))}]")
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in inline]
    for key, sub in nested:
        _write_table(lines, [*path, key], sub)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_key(key: Any) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"cannot write key {_show(key)} as TOML: keys must be strings")
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    def escape(c: str) -> str:
        if c in _ESCAPES:
            return _ESCAPES[c]
        return f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c

    return '"' + "".join(map(escape, text)) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, Mapping):
        items = (f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise ConfigError(f"cannot write {_show(value)} ({type(value).__name__}) as TOML")
