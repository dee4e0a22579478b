"""Typed per-run state for plugins: a :class:`Stash` keyed by :class:`StashKey` objects.

A plugin makes a module-level key and keeps its objects under it::

    COUNTS = StashKey[dict[str, int]]()

    @hookimpl
    def evoens_run_start(run):
        run.stash[COUNTS] = {}

Keys are compared by identity, so two plugins can never collide on a name, and a type checker
knows what ``run.stash[COUNTS]`` holds.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
D = TypeVar("D")

__all__ = ["Stash", "StashKey"]


class StashKey(Generic[T]):
    """A key of a :class:`Stash` whose value has type ``T``."""

    __slots__ = ()


class Stash:
    """``StashKey[T] -> T``; missing keys raise ``KeyError``."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._items[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._items[key])

    def get(self, key: StashKey[T], default: D) -> T | D:
        return cast(T, self._items[key]) if key in self._items else default

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._items.setdefault(key, default))

    def pop(self, key: StashKey[T], default: D) -> T | D:
        return cast(T, self._items.pop(key)) if key in self._items else default

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
