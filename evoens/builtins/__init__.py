"""The built-in plugins. Each module is an ordinary plugin, registered through the entry-point
group ``evoens`` in setup.py exactly as a third-party package would be; ``CORE_PLUGINS`` names
them for code that builds a plugin manager without entry points (tests, embedding)."""

from __future__ import annotations

CORE_PLUGINS: dict[str, str] = {
    "core": "evoens.builtins.core",
    "searchers": "evoens.builtins.searchers",
    "reporters": "evoens.builtins.reporters",
    "checkpoint": "evoens.builtins.checkpointing",
    "watchdog": "evoens.builtins.watchdog",
    "loop": "evoens.engine",
}
