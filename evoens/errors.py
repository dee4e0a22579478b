"""User-facing errors: each one prints as ONE line saying what is wrong and how to fix it.

The CLI turns any :class:`UserError` into ``evoens: error: <message>`` and exit code 2;
tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Base of every error caused by input the user controls (configs, data, plugins, run dirs)."""


class ConfigError(UserError, ValueError):
    """A mistake in a run config. ``str(err)`` is one line: the key, the bad value, what is allowed."""


def show(value: object) -> str:
    """A value as error messages quote it: its repr (always one line), cut when long."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options`` (case-insensitive; an old kebab-case
    or dotted provider name finds its snake_case spelling), or ``""``."""
    lowered = {o.lower(): o for o in options}
    snake = word.lower().replace("-", "_").replace(".", "_")
    close = [snake] if snake in lowered else difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


class PluginError(UserError):
    """A plugin is broken: it failed to import, names an unknown hook or argument, or raised."""


class RegistryError(UserError, KeyError):
    """An unknown or duplicate provider name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunError(Exception):
    """The run cannot go on for a reason outside its inputs (a full disk, an unwritable directory).

    The CLI prints it as one line and exits with code 1; the run's summary says ``status`` (
    ``"failed"`` unless a subclass says more, e.g. ``"diverged"``) and what was saved before stays
    intact, so ``evoens resume`` continues once the cause is fixed."""

    status = "failed"
