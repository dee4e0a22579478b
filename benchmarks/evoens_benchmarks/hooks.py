"""Registers the benchmark suites as ``benchmark`` providers.

A suite module is imported only when its suite runs: the factory registered here is a
:func:`functools.partial` of :func:`run` that imports ``evoens_benchmarks.<name>`` and calls its
``suite(quick, device, env)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from evoens import Provider, hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from evoens.bench import BenchResult

SUITES: dict[str, str] = {
    "throughput": "population forward: loop vs vmap vs bmm/grouped conv vs auto vs EvoTorch SupervisedNE",
    "generation": "whole SNES/PGPE generations: evoens vs EvoTorch SupervisedNE vs a hand-vectorized Problem",
    "evojax_mnist": "EvoJAX MNIST: PGPE pop 64, batch 1024, ConvNet; test accuracy and ms/generation",
    "binary_estimators": "binarized toy MLPs: STE family / NES / CDG / STE-guided NES vs CDG (cosine, loss decrease)",
    "binary_mnist": "binarized MLP/CNN on MNIST: each STE (gradient) and PGPE/SNES (evolution); test accuracy",
    "morph": "function-preserving transforms: preservation table, grow-mid-training vs scratch on MNIST, NE",
    "ensemble": "ensembles: sum vs mean loss, ensemble vs wide net, effective robustness, calibration, speed",
    "sizing": "learning layer size: sparsifier table, variance/mixture/PCA metrics, gated frontier, grow-and-shrink",
    "scaling": "Ray actors: generations/s with 0/1/2 actors (MLP, EvoJAX ConvNet P=256), Ray share, N-machine model",
    "hypernet": "vq-ensemble on MNIST beside the seed (baselines, mlp/bias refiners), code search, meta-step speed",
}


def run(name: str, quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
    """Import the suite module ``name`` and run it (the factory of each ``benchmark`` provider)."""
    module = importlib.import_module(f"evoens_benchmarks.{name}")
    return module.suite(quick=quick, device=device, env=env)


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    for name, description in SUITES.items():
        yield Provider("benchmark", name, partial(run, name), description)
