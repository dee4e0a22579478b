"""The evoens_morph plugin's hooks: registers its providers with evoens."""

from __future__ import annotations

from collections.abc import Iterator

from evoens import Provider, hookimpl


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    yield from ()
