"""Named providers, contributed by plugins through ``evoens_register_providers``.

Configs and the CLI choose every component by name (``trainer.searcher = "snes"``); this module
holds the table from ``(kind, name)`` to a factory, and makes an unknown or duplicate name a
clear one-line error that lists the known names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from evoens.config import parse_options
from evoens.errors import ConfigError, PluginError, RegistryError, RunError, UserError, did_you_mean


@dataclass(frozen=True)
class Provider:
    """One named provider. ``factory`` builds it; its signature depends on the kind
    (:mod:`evoens.kinds`). ``options``: the dataclass of its config options (``[trainer.options]``,
    ``[model.options]``, ``[data.options]``), validated before the factory is called; a
    ``tiny()`` classmethod on it gives the small preset the conformance tests run."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str = ""
    plugin: str = ""  # filled in by the registry: the plugin that registered it
    options: type | None = None


def require_provider(provider: object, plugin: str) -> None:
    """A clear error when a plugin hands the registry something that is not a :class:`Provider`."""
    if not isinstance(provider, Provider):
        raise RegistryError(
            f"plugin '{plugin}' registered {provider!r}: evoens_register_providers must return evoens.Provider objects"
        )


class Registry:
    """``(kind, name) -> Provider``, filled once from all plugins."""

    def __init__(self) -> None:
        self._providers: dict[tuple[str, str], Provider] = {}
        self.absent: dict[str, str] = {}  # plugin name -> why it is not loaded (named by unknown-name errors)

    def add(self, provider: Provider, plugin: str = "") -> None:
        """Register ``provider`` on behalf of ``plugin``; a duplicate name is an error."""
        require_provider(provider, plugin)
        key = (provider.kind, provider.name)
        if key in self._providers:
            other = self._providers[key].plugin
            raise RegistryError(
                f"{provider.kind} '{provider.name}' is registered twice: by plugin '{other}' and "
                f"by plugin '{plugin}'; disable one of them with -p no:NAME"
            )
        self._providers[key] = replace(provider, plugin=plugin)

    def get(self, kind: str, name: str) -> Provider:
        """The provider ``name`` of ``kind``; unknown names raise with the known ones listed."""
        try:
            return self._providers[(kind, name)]
        except KeyError:
            known = self.names(kind)
            listing = ", ".join(known) if known else "none registered"
            off = "".join(f"; not loaded in this run: plugin '{p}' ({why})" for p, why in sorted(self.absent.items()))
            raise RegistryError(f"unknown {kind} '{name}'{did_you_mean(name, known)}; known: {listing}{off}") from None

    def options(self, kind: str, name: str, table: dict[str, Any], key: str) -> Any:
        """Provider ``name``'s options from config ``table`` (at dotted ``key``): an instance of
        its options dataclass; a provider without one takes no options."""
        provider = self.get(kind, name)
        if provider.options is None or not dataclasses.fields(provider.options):
            if table:
                raise ConfigError(f"{key}: {kind} '{name}' takes no options, got {', '.join(sorted(table))}")
            return None if provider.options is None else provider.options()
        return parse_options(provider.options, table, key)

    def create(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """Shorthand for ``get(kind, name).factory(*args, **kwargs)``."""
        return self.get(kind, name).factory(*args, **kwargs)

    def build(self, kind: str, name: str, *args: Any, like: type | None = None) -> Any:
        """:meth:`create` for a run: what the factory returns, checked by :func:`checked`; a
        factory that raises is one line naming the provider and its plugin (:func:`factory_failure`)."""
        provider = self.get(kind, name)
        try:
            made = provider.factory(*args)
        except Exception as exc:
            raise_as(factory_failure(provider, exc), exc)
        return checked(provider, made, like)

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self._providers if k == kind)

    def by_plugin(self, plugin: str) -> list[Provider]:
        return sorted(
            (p for p in self._providers.values() if p.plugin == plugin),
            key=lambda p: (p.kind, p.name),
        )

    def __iter__(self) -> Iterator[Provider]:
        return iter(sorted(self._providers.values(), key=lambda p: (p.kind, p.name)))

    def __len__(self) -> int:
        return len(self._providers)


# --- a provider's factory gone wrong, as one line ------------------------------------------


def factory_failure(provider: Provider, exc: Exception) -> Exception:
    """``exc``, raised by ``provider``'s factory, as the error to raise: evoens's own one-line
    errors as they are, anything else as one line naming the provider and its plugin."""
    if isinstance(exc, (UserError, RunError)):
        return exc
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return PluginError(
        f"{provider.kind} '{provider.name}' (plugin '{provider.plugin}') failed to build: {type(exc).__name__}: "
        f"{first}; fix its factory (the signature of each kind: evoens.kinds) or choose another {provider.kind} "
        "(--debug shows the traceback)"
    )


def raise_as(error: Exception, cause: Exception) -> NoReturn:
    """Raise ``error`` from ``cause`` (``cause`` itself as it was, when they are one)."""
    if error is cause:
        raise cause
    raise error from cause


def checked(provider: Provider, made: Any, like: type | None) -> Any:
    """``made`` if it is a ``like`` (a callable where ``like`` is None); else one line naming the provider."""
    lacks = []
    if getattr(like, "_is_protocol", False):  # duck-typed, also through __getattr__ (Python 3.12's isinstance is not)
        wanted = [n for n in [*vars(like), *getattr(like, "__annotations__", {})] if not n.startswith("_")]
        lacks = [n for n in dict.fromkeys(wanted) if not hasattr(made, n)]
        fits = not lacks
    else:
        fits = callable(made) if like is None else isinstance(made, like)
    if not fits:
        expected = "a callable" if like is None else f"{like.__module__}.{like.__qualname__}"
        expected += f" (it lacks {', '.join(lacks)})" if lacks else ""
        raise PluginError(
            f"{provider.kind} '{provider.name}' (plugin '{provider.plugin}') returned {type(made).__name__}, not "
            f"{expected}; fix its factory (the signature of each kind: evoens.kinds)"
        )
    return made
