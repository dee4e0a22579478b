"""EvoTorch's search algorithms as ``searcher`` providers.

Each factory takes ``(problem, popsize, options, center)`` and returns an EvoTorch
``SearchAlgorithm``; ``options`` (the config's ``trainer.searcher_options``) override the
defaults below and pass straight to the EvoTorch constructor, so every EvoTorch keyword is
available. Distribution-based searchers start centred on the template network's own
initialisation ``center`` (D,). SNES, PGPE and CEM sample from a shared noise table and SNES
and PGPE compute their search gradients in cache-sized chunks (:mod:`evoens.noise`);
``noise_table = false`` in the options restores EvoTorch's own sampling and gradient code.

The options are checked against the EvoTorch constructor's signature before anything is built:
an unknown key (with "did you mean"), a value of the wrong type, a stdev or learning rate that is
not > 0 and finite, or an odd popsize for PGPE's symmetric sampling is one :class:`ConfigError`.

References: SNES/XNES — Wierstra et al., "Natural Evolution Strategies", JMLR 2014; PGPE —
Sehnke et al., Neural Networks 2010 (ClipUp: Toklu et al., PPSN 2020); CMA-ES — Hansen &
Ostermeier 2001; CEM — Rubinstein 1999.
"""

from __future__ import annotations

import inspect
import math
import numbers
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from evotorch import Problem
from evotorch.algorithms import CEM, CMAES, PGPE, SNES, XNES, GeneticAlgorithm
from evotorch.operators import GaussianMutation, SimulatedBinaryCrossOver
from evotorch.tools.ranking import rankers

from evoens import Provider, hookimpl
from evoens import _evotorch_compat as compat
from evoens.config import ConfigError
from evoens.errors import did_you_mean, show
from evoens.noise import use_noise_table

KEY = "trainer.searcher_options"
#: Constructor keywords evoens passes itself, and where the user sets them instead.
SET_BY_EVOENS = {
    "problem": "evoens builds the problem from the model and the data",
    "popsize": "set trainer.popsize instead",
    "center_init": "the search starts at the model's own initialisation",
}
#: evoens's own searcher options (not EvoTorch keywords), with their annotation.
OWN_OPTIONS: dict[str, Any] = {"noise_table": bool | int}
_Check = tuple[Callable[[float], bool], str]
_POSITIVE: _Check = (lambda v: math.isfinite(v) and v > 0, "> 0 and finite")
#: Ranges that can be told without running: a stdev or learning rate of 0, NaN or inf cannot work.
RANGES: dict[str, _Check] = {
    "stdev_init": _POSITIVE,
    "radius_init": _POSITIVE,
    "center_learning_rate": _POSITIVE,
    "stdev_learning_rate": _POSITIVE,
    "mutation_stdev": _POSITIVE,
    "crossover_eta": _POSITIVE,
    "parenthood_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "stdev_min": (lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),
    "stdev_max": _POSITIVE,
    "stdev_max_change": _POSITIVE,
    "tournament_size": (lambda v: v >= 1, ">= 1"),
    "num_interactions": (lambda v: v >= 1, ">= 1"),
    "popsize_max": (lambda v: v >= 1, ">= 1"),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "ranking_method": tuple(rankers),
    "optimizer": ("adam", "clipup", "clipsgd", "clipsga", "sgd", "sga"),
}


def accepted_options(cls: type) -> dict[str, Any]:
    """The keywords of an EvoTorch searcher's constructor a config may set, with their
    annotations (``inspect.signature``), plus evoens's own; without those evoens sets itself."""
    hints = typing.get_type_hints(cls.__init__)
    params = inspect.signature(cls.__init__).parameters
    names = [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD]
    return {**{n: hints.get(n, Any) for n in names if n not in SET_BY_EVOENS}, **OWN_OPTIONS}


def check_options(searcher: str, accepted: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """Every key of ``options`` is one ``accepted`` (name -> annotation) with a value of that type
    and, where :data:`RANGES` or :data:`CHOICES` know one, in range; else one-line ConfigError."""
    for key, value in options.items():
        path = f"{KEY}.{key}"
        if key in SET_BY_EVOENS:
            raise ConfigError(f"{path}: searcher '{searcher}' gets {key} from evoens ({SET_BY_EVOENS[key]})")
        if key not in accepted:
            raise ConfigError(
                f"unknown key {path!r}{did_you_mean(key, accepted)}; searcher '{searcher}' accepts: "
                + ", ".join(sorted(accepted))
            )
        expected = _expected(accepted[key], value)
        if expected:
            raise ConfigError(f"{path} = {show(value)}: expected {expected}")
        _check_value(path, key, value)


def _check_value(path: str, key: str, value: Any) -> None:
    choices = CHOICES.get(key)
    if isinstance(value, str) and choices and value not in choices:
        raise ConfigError(f"{path} = {show(value)}: must be one of {', '.join(choices)}{did_you_mean(value, choices)}")
    numbers_ = [value] if _is_number(value) else list(value) if isinstance(value, (list, tuple)) else []
    check = RANGES.get(key)
    if check and any(_is_number(v) and not check[0](v) for v in numbers_):
        raise ConfigError(f"{path} = {show(value)}: must be {check[1]}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_DESCRIPTIONS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}


def _expected(annotation: Any, value: Any) -> str:
    """'' when ``value`` fits ``annotation`` (or the annotation says too little to tell), else
    what was expected. Unions accept any arm; ``Iterable[float]`` takes a list of numbers."""
    arms = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, type(int | str)) else ()
    if arms:
        results = [_expected(a, value) for a in arms if a is not type(None)]
        return "" if value is None or "" in results else " or ".join(dict.fromkeys(results))
    origin = typing.get_origin(annotation) or annotation
    if origin is bool:
        ok = isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin in (float, numbers.Real):
        ok, origin = _is_number(value), float
    elif origin is str:
        ok = isinstance(value, str)
    elif origin in (dict, Mapping):
        ok, origin = isinstance(value, Mapping), dict
    elif origin is Iterable:
        return "" if isinstance(value, (list, tuple)) and all(_is_number(v) for v in value) else "a list of numbers"
    elif origin is not Any and isinstance(origin, type):  # a tensor, an optimizer class, ...
        return "" if isinstance(value, origin) else f"a {origin.__name__}"
    else:  # no annotation, or one too elaborate to check here
        return ""
    return "" if ok else _DESCRIPTIONS[origin]


def check_popsize(searcher: str, cls: type, popsize: int, options: Mapping[str, Any]) -> None:
    """PGPE samples symmetric pairs (unless ``symmetric = false``): an odd popsize cannot work."""
    symmetric = options.get("symmetric", inspect.signature(cls.__init__).parameters.get("symmetric"))
    if isinstance(symmetric, inspect.Parameter):
        symmetric = symmetric.default
    if symmetric is True and popsize % 2:
        raise ConfigError(
            f"trainer.popsize = {popsize}: searcher '{searcher}' samples symmetric pairs and needs an even popsize "
            f"(use {popsize + 1}, or set {KEY}.symmetric = false)"
        )


def _distribution(cls: type, defaults: dict[str, Any], description: str, table: bool = False) -> Provider:
    """``table``: the searcher samples from the shared noise table unless the options say
    ``noise_table = false`` (an int sets the table's size)."""

    name = cls.__name__.lower()
    accepted = accepted_options(cls)

    def factory(problem: Problem, popsize: int, options: Mapping[str, Any], center: torch.Tensor) -> Any:
        check_options(name, accepted, options)  # one line before EvoTorch's own traceback
        opts = {**defaults, **options}
        check_popsize(name, cls, popsize, opts)
        noise = opts.pop("noise_table", table)
        if not (isinstance(noise, bool) or noise >= 0):
            raise ConfigError(f"{KEY}.noise_table = {noise!r}: expected true, false or a table size (int > 0)")
        with compat.quiet_construction():  # EvoTorch's CMAES set-up mixes numpy and torch: harmless noise
            searcher = cls(problem, popsize=popsize, center_init=center, **opts)
        if noise is True:
            return use_noise_table(searcher)
        if noise is False or noise == 0:
            return searcher
        return use_noise_table(searcher, noise)

    return Provider("searcher", name, factory, description)


#: The GA's options (evoens's own composition of EvoTorch operators), with their annotations.
GA_OPTIONS: dict[str, Any] = {"mutation_stdev": float, "crossover_eta": float | None, "tournament_size": int,
                              "elitist": bool}  # fmt: skip


def _ga(problem: Problem, popsize: int, options: Mapping[str, Any], center: torch.Tensor) -> Any:
    check_options("ga", GA_OPTIONS, options)
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
