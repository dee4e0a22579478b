"""evoens_benchmarks: the benchmark suites behind ``evoens bench NAME``.

An ordinary plugin, installed with evoens and registered in the entry-point group ``evoens`` as
``benchmarks``; ``hooks`` registers one ``benchmark`` provider per suite without importing the
suites, so building a registry (which every ``evoens run`` does) loads no benchmark code. Suites:
``throughput``, ``generation``, ``evojax_mnist``, ``binary_estimators`` (helpers
``binary_estimators_report``, ``binary_handover``), ``binary_mnist`` and ``morph`` (helpers
``morph_train``, ``morph_ne``). Each suite module also runs as a script:
``python -m evoens_benchmarks.throughput --quick``. The harness (timing, JSON and markdown) is
the core's :mod:`evoens.bench`.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(name: str, argv: Sequence[str]) -> int:
    """``evoens bench NAME ARGV...``: what ``python -m evoens_benchmarks.NAME ARGV...`` runs."""
    from evoens.cli import main as cli_main

    return cli_main(["bench", name, *argv])
