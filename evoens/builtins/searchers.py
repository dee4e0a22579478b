"""EvoTorch's search algorithms as ``searcher`` providers.

Each factory takes ``(problem, popsize, options, center)`` and returns an EvoTorch
``SearchAlgorithm``; ``options`` (the config's ``trainer.searcher_options``) override the
defaults below and pass straight to the EvoTorch constructor, so every EvoTorch keyword is
available. Distribution-based searchers start centred on the template network's own
initialisation ``center`` (D,). SNES, PGPE and CEM sample from a shared noise table and SNES
and PGPE compute their search gradients in cache-sized chunks (:mod:`evoens.noise`);
``noise_table = false`` in the options restores EvoTorch's own sampling and gradient code.

References: SNES/XNES — Wierstra et al., "Natural Evolution Strategies", JMLR 2014; PGPE —
Sehnke et al., Neural Networks 2010 (ClipUp: Toklu et al., PPSN 2020); CMA-ES — Hansen &
Ostermeier 2001; CEM — Rubinstein 1999.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from evotorch import Problem
from evotorch.algorithms import CEM, CMAES, PGPE, SNES, XNES, GeneticAlgorithm
from evotorch.operators import GaussianMutation, SimulatedBinaryCrossOver

from evoens import Provider, hookimpl
from evoens import _evotorch_compat as compat
from evoens.config import ConfigError
from evoens.noise import use_noise_table


def _distribution(cls: type, defaults: dict[str, Any], description: str, table: bool = False) -> Provider:
    """``table``: the searcher samples from the shared noise table unless the options say
    ``noise_table = false`` (an int sets the table's size)."""

    def factory(problem: Problem, popsize: int, options: Mapping[str, Any], center: torch.Tensor) -> Any:
        opts = {**defaults, **options}
        noise = opts.pop("noise_table", table)
        with compat.quiet_construction():  # EvoTorch's CMAES set-up mixes numpy and torch: harmless noise
            searcher = cls(problem, popsize=popsize, center_init=center, **opts)
        if noise is True:
            return use_noise_table(searcher)
        if noise is False or noise == 0:
            return searcher
        if isinstance(noise, int) and noise > 0:
            return use_noise_table(searcher, noise)
        raise ConfigError(
            f"trainer.searcher_options.noise_table = {noise!r}: expected true, false or a table size (int > 0)"
        )

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
    yield _distribution(
        SNES, {"stdev_init": 0.05}, "separable natural evolution strategy (EvoTorch SNES, noise table)", table=True
    )
    yield _distribution(XNES, {"stdev_init": 0.05}, "exponential NES, full covariance (EvoTorch XNES; small D only)")
    yield _distribution(
        PGPE,
        {"center_learning_rate": 0.01, "stdev_learning_rate": 0.1, "stdev_init": 0.05, "optimizer": "adam"},
        "policy gradients with parameter-based exploration (EvoTorch PGPE, Adam, noise table)",
        table=True,
    )
    yield _distribution(CMAES, {"stdev_init": 0.05}, "covariance matrix adaptation ES (EvoTorch CMAES)")
    yield _distribution(
        CEM, {"stdev_init": 0.05, "parenthood_ratio": 0.25}, "cross-entropy method (EvoTorch CEM, noise table)", True
    )
    yield Provider("searcher", "ga", _ga, "genetic algorithm: Gaussian mutation (+ SBX crossover if crossover_eta)")
