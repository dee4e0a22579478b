"""evoens: plugin-based neuroevolution and meta-learning for PyTorch.

Plugin authors need only::

    from evoens import hookimpl, Provider
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("evoens")
"""Marker for plugin hook implementations (``@hookimpl``, ``@hookimpl(tryfirst=True)``, ...)."""

from evoens.registry import Provider  # noqa: E402  (after hookimpl: registry-using plugins import both)

__all__ = ["__version__", "hookimpl", "Provider"]
