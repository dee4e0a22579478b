"""Registers the built-in benchmark suites as ``benchmark`` providers."""

from __future__ import annotations

from collections.abc import Iterator

from evoens import Provider, hookimpl


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    from evoens_bench import evojax_mnist, generation, throughput

    yield Provider("benchmark", "throughput", throughput.suite, throughput.DESCRIPTION)
    yield Provider("benchmark", "generation", generation.suite, generation.DESCRIPTION)
    yield Provider("benchmark", "evojax-mnist", evojax_mnist.suite, evojax_mnist.DESCRIPTION)
