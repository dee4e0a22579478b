"""Helpers for plugin authors' tests (and evoens's own).

from evoens.testing import make_plugin_manager, HookRecorder, tiny_config, run_inline

def test_my_plugin_reports(tmp_path):
    summary = run_inline(tiny_config(generations=2), tmp_path, my_plugin)
    assert summary["generations"] == 2
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evoens.builtins import CORE_PLUGINS
from evoens.config import RunConfig, config_from_dict
from evoens.manager import PluginManager, create_plugin_manager
from evoens.population import Population
from evoens.registry import Registry


def core_plugins() -> list[tuple[str, Any]]:
    """The built-in plugins as ``(name, module)`` pairs, for a manager without entry points."""
    return [(name, importlib.import_module(module)) for name, module in CORE_PLUGINS.items()]


def make_plugin_manager(
    *plugins: Any, builtins: bool = True, entry_points: bool = False, disable: Iterable[str] = (), trace: bool = False
) -> PluginManager:
    """A fresh manager: the built-ins (unless ``builtins=False``), then ``plugins`` (objects or
    ``(name, object)`` pairs). Installed entry points are ignored unless ``entry_points=True``."""
    own = core_plugins() if builtins and not entry_points else []  # blocked ones are skipped by name
    return create_plugin_manager(
        plugins=[*own, *plugins], disable=disable, entry_points=entry_points, trace=trace, env={}
    )


class HookRecorder:
    """Records every hook call on a manager as ``(hook name, kwargs)``, in call order."""

    def __init__(self, pm: PluginManager) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._undo = pm.add_hookcall_monitoring(self._before, lambda *args: None)

    def _before(self, hook_name: str, hook_impls: Any, kwargs: dict[str, Any]) -> None:
        self.calls.append((hook_name, dict(kwargs)))

    def names(self, prefix: str = "evoens_") -> list[str]:
        return [name for name, _ in self.calls if name.startswith(prefix)]

    def undo(self) -> None:
        self._undo()


def tiny_config(**overrides: Any) -> RunConfig:
    """A run that finishes in about a second: digits, a small MLP, SNES, no file reporters.

    Keyword arguments replace top-level fields; nested ones with ``trainer={...}`` style dicts.
    """
    base: dict[str, Any] = {
        "seed": 0,
        "generations": 3,
        "eval_every": 1,
        "reporters": [],
        "data": {"name": "digits", "batch_size": 128},
        "model": {"name": "mlp", "hidden": [8]},
        "trainer": {"name": "evolution", "searcher": "snes", "popsize": 8},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(base)


def tiny_options(registry: Registry, kind: str, name: str) -> dict[str, Any]:
    """The ``tiny()`` preset of provider ``name``'s options as a config table ({} without one)."""
    cls = registry.get(kind, name).options
    preset = getattr(cls, "tiny", None)
    return dataclasses.asdict(preset()) if preset is not None else {}


def run_inline(config: RunConfig, out_dir: str | Path, *plugins: Any, **manager_kw: Any) -> dict[str, Any]:
    """Execute ``config`` with the built-ins plus ``plugins`` registered inline; return the summary."""
    from evoens.engine import execute

    return execute(replace(config), out_dir, make_plugin_manager(*plugins, **manager_kw))


def toy_population(size: int = 4, sizes: tuple[int, ...] = (5, 8, 3), seed: int = 0) -> Population:
    """P freshly initialised tanh MLPs with layer widths ``sizes``."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    template = nn.Sequential(*layers[:-1])
    return Population.from_module(template, size, generator=torch.Generator().manual_seed(seed))


def write_distribution(
    site_dir: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str] | None = None
) -> Path:
    """Make ``site_dir`` look like an installed distribution: a ``*.dist-info`` with the given
    ``evoens`` entry points (``name -> "module"`` or ``"module:attr"``) and module sources.
    Put ``site_dir`` on ``sys.path`` (``monkeypatch.syspath_prepend``) to make it visible."""
    site_dir.mkdir(parents=True, exist_ok=True)
    for module, source in (modules or {}).items():
        (site_dir / f"{module}.py").write_text(source)
    info = site_dir / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[evoens]\n{lines}")
    importlib.invalidate_caches()
    return info
