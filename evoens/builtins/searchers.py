"""EvoTorch's search algorithms as ``searcher`` providers.

Each factory takes ``(problem, popsize, options, center)`` and returns an EvoTorch
``SearchAlgorithm``; ``options`` (the config's ``trainer.searcher_options``) override the
defaults below and pass straight to the EvoTorch constructor, so every EvoTorch keyword is
available. Distribution-based searchers start centred on the template network's own
initialisation ``center`` (D,).

References: SNES/XNES — Wierstra et al., "Natural Evolution Strategies", JMLR 2014; PGPE —
Sehnke et al., Neural Networks 2010 (ClipUp: Toklu et al., PPSN 2020); CMA-ES — Hansen &
Ostermeier 2001; CEM — Rubinstein 1999.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from evotorch import Problem
from evotorch.algorithms import CEM, CMAES, PGPE, SNES, XNES, GeneticAlgorithm
from evotorch.operators import GaussianMutation, SimulatedBinaryCrossOver

from evoens import Provider, hookimpl


def _distribution(cls: type, defaults: dict[str, Any], description: str) -> Provider:
    def factory(problem: Problem, popsize: int, options: Mapping[str, Any], center: torch.Tensor) -> Any:
        with warnings.catch_warnings():  # EvoTorch's CMAES set-up mixes numpy and torch: harmless noise
            warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
            warnings.filterwarnings("ignore", "__array_wrap__ must accept context", DeprecationWarning)
            return cls(problem, popsize=popsize, center_init=center, **{**defaults, **options})

    return Provider("searcher", cls.__name__.lower(), factory, description)


def _ga(problem: Problem, popsize: int, options: Mapping[str, Any], center: torch.Tensor) -> Any:
    opts = {"mutation_stdev": 0.02, "crossover_eta": None, "tournament_size": 4, "elitist": True, **options}
    operators: list[Any] = []
    if opts["crossover_eta"] is not None:
        operators.append(
            SimulatedBinaryCrossOver(problem, tournament_size=opts["tournament_size"], eta=opts["crossover_eta"])
        )
    operators.append(GaussianMutation(problem, stdev=opts["mutation_stdev"]))
    return GeneticAlgorithm(problem, operators=operators, popsize=popsize, elitist=opts["elitist"])


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    yield _distribution(SNES, {"stdev_init": 0.05}, "separable natural evolution strategy (EvoTorch SNES)")
    yield _distribution(XNES, {"stdev_init": 0.05}, "exponential NES, full covariance (EvoTorch XNES; small D only)")
    yield _distribution(
        PGPE,
        {"center_learning_rate": 0.01, "stdev_learning_rate": 0.1, "stdev_init": 0.05, "optimizer": "adam"},
        "policy gradients with parameter-based exploration (EvoTorch PGPE, Adam on the center)",
    )
    yield _distribution(CMAES, {"stdev_init": 0.05}, "covariance matrix adaptation ES (EvoTorch CMAES)")
    yield _distribution(CEM, {"stdev_init": 0.05, "parenthood_ratio": 0.25}, "cross-entropy method (EvoTorch CEM)")
    yield Provider("searcher", "ga", _ga, "genetic algorithm: Gaussian mutation (+ SBX crossover if crossover_eta)")
