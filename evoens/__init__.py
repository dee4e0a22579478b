"""evoens: plugin-based neuroevolution and meta-learning for PyTorch.

Plugin authors need only::

    from evoens import hookimpl, Provider

Running from Python::

    import evoens

    config = evoens.load_config("examples/quickstart.toml")
    summary = evoens.execute(config, "runs/quickstart", evoens.create_plugin_manager())

``import evoens`` loads pluggy and nothing else: every name below but ``hookimpl`` and
``__version__`` is imported from its module on first use (PEP 562), so a plugin that imports
``hookimpl`` does not pay for torch. ``evoens.testing`` holds the helpers for plugin tests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("evoens")
"""Marker for plugin hook implementations (``@hookimpl``, ``@hookimpl(tryfirst=True)``, ...)."""

#: Public name -> the module that defines it, imported on first access.
_LAZY: dict[str, str] = {
    "Provider": "evoens.registry",
    "load_config": "evoens.config",
    "RunConfig": "evoens.config",
    "create_plugin_manager": "evoens.manager",
    "PluginManager": "evoens.manager",
    "execute": "evoens.engine",
    "resume": "evoens.engine",
    "Run": "evoens.run",
    "RunContext": "evoens.run",
    "StashKey": "evoens.stash",
    "Population": "evoens.population",
    "Candidates": "evoens.candidates",
    "Evaluation": "evoens.candidates",
    "UserError": "evoens.errors",
    "ConfigError": "evoens.errors",
    "PluginError": "evoens.errors",
    "RegistryError": "evoens.errors",
    "RunError": "evoens.errors",
}
#: Submodules reachable as attributes of the package without an import of their own.
_SUBMODULES = frozenset({"testing"})

__all__ = [
    "__version__",
    "hookimpl",
    "Provider",
    "load_config",
    "RunConfig",
    "create_plugin_manager",
    "PluginManager",
    "execute",
    "resume",
    "Run",
    "RunContext",
    "StashKey",
    "Population",
    "Candidates",
    "Evaluation",
    "UserError",
    "ConfigError",
    "PluginError",
    "RegistryError",
    "RunError",
    "testing",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from evoens.candidates import Candidates, Evaluation
    from evoens.config import RunConfig, load_config
    from evoens.engine import execute, resume
    from evoens.errors import ConfigError, PluginError, RegistryError, RunError, UserError
    from evoens.manager import PluginManager, create_plugin_manager
    from evoens.population import Population
    from evoens.registry import Provider
    from evoens.run import Run, RunContext
    from evoens.stash import StashKey
