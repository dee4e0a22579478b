"""Every EvoTorch internal that evoens relies on still holds (see evoens/_evotorch_compat.py).

Each test checks real EvoTorch objects (a tiny Problem and the six searchers evoens offers) and
fails with "EvoTorch X changed <thing>; update evoens/_evotorch_compat.py" when an internal
moves, is renamed or stops being called, so an override cannot silently become dead code.
"""

from __future__ import annotations

import copy
import inspect
import re
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import evotorch
import evotorch.core
import pytest
import torch
from evotorch import Problem, SolutionBatch
from evotorch.algorithms import CEM, CMAES, PGPE, SNES, XNES, GeneticAlgorithm
from evotorch.distributions import (
    Distribution,
    ExpGaussian,
    ExpSeparableGaussian,
    SeparableGaussian,
    SymmetricSeparableGaussian,
)
from evotorch.operators import GaussianMutation, SimulatedBinaryCrossOver
from packaging.specifiers import SpecifierSet

from evoens import _evotorch_compat as compat
from evoens.checkpoint import object_state

REPO = Path(__file__).resolve().parents[1]
D = 4  # solution length
SEPARABLE = {"snes": ExpSeparableGaussian, "pgpe": SymmetricSeparableGaussian, "cem": SeparableGaussian}
DISTRIBUTIONS: dict[str, type | None] = {**SEPARABLE, "xnes": ExpGaussian, "cmaes": None, "ga": None}


def changed(thing: str) -> str:
    return f"EvoTorch {compat.EVOTORCH_VERSION} changed {thing}; update evoens/_evotorch_compat.py"


def _problem() -> Problem:
    return Problem(
        "max", lambda x: -(x**2).sum(-1), solution_length=D, initial_bounds=(-1, 1), vectorized=True, seed=0
    )


def _searcher(name: str, problem: Problem) -> Any:
    """The searcher ``name`` over ``problem``, configured as evoens's defaults configure it."""
    center = torch.zeros(D)
    with compat.quiet_construction():
        if name == "snes":
            return SNES(problem, popsize=6, stdev_init=0.1, center_init=center)
        if name == "xnes":
            return XNES(problem, popsize=6, stdev_init=0.1, center_init=center)
        if name == "pgpe":
            return PGPE(
                problem,
                popsize=6,
                center_learning_rate=0.01,
                stdev_learning_rate=0.1,
                stdev_init=0.1,
                optimizer="adam",
                center_init=center,
            )
        if name == "cem":
            return CEM(problem, popsize=6, stdev_init=0.1, parenthood_ratio=0.5, center_init=center)
        if name == "cmaes":
            return CMAES(problem, popsize=6, stdev_init=0.1, center_init=center)
    operators = [SimulatedBinaryCrossOver(problem, tournament_size=2, eta=5.0), GaussianMutation(problem, stdev=0.1)]
    return GeneticAlgorithm(problem, operators=operators, popsize=6)


@pytest.fixture(scope="module")
def stepped() -> tuple[Problem, dict[str, Any]]:
    """One problem and every searcher over it, each after one step."""
    problem = _problem()
    searchers = {name: _searcher(name, problem) for name in DISTRIBUTIONS}
    for searcher in searchers.values():
        searcher.step()
    return problem, searchers


def _graph_attribs(roots: list[Any]) -> dict[str, list[Any]]:
    """Every attribute name of the EvoTorch objects reachable from ``roots`` -> its values."""
    found: dict[str, list[Any]] = {}
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or not compat.is_evotorch_object(obj):
            continue
        seen.add(id(obj))
        for key, value in vars(obj).items():
            found.setdefault(key, []).append(value)
            todo.extend(value if isinstance(value, (list, tuple)) else [value])
    return found


def _params(func: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(func).parameters)


# --- the pin -------------------------------------------------------------------------------------


def test_installed_evotorch_is_in_the_tested_range_that_setup_py_pins() -> None:
    assert compat.EVOTORCH_VERSION == evotorch.__version__
    assert compat.EVOTORCH_VERSION in SpecifierSet(compat.TESTED_RANGE), (
        f"EvoTorch {compat.EVOTORCH_VERSION} is outside the tested range {compat.TESTED_RANGE}: check every item "
        "of evoens/_evotorch_compat.py against it, then widen TESTED_RANGE and setup.py"
    )
    pins = re.findall(r'"evotorch([^"]*)"', (REPO / "setup.py").read_text())
    assert pins == [compat.TESTED_RANGE], f"setup.py pins evotorch{pins}, the compat module {compat.TESTED_RANGE}"


# --- Problem (evoens.evolution) ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(compat.PROBLEM_HOOKS))
def test_problem_still_has_the_private_methods_evoens_overrides(name: str) -> None:
    assert callable(getattr(Problem, name, None)), changed(f"Problem.{name} (gone: an override would be dead)")
    assert _params(getattr(Problem, name)) == compat.PROBLEM_HOOKS[name], changed(f"the signature of Problem.{name}")


def test_problem_nonserialized_attribs_is_still_a_list_property() -> None:
    for name in compat.PROBLEM_PROPERTIES:
        assert isinstance(inspect.getattr_static(Problem, name, None), property), changed(f"Problem.{name}")
    assert isinstance(_problem()._nonserialized_attribs, list), changed("Problem._nonserialized_attribs")


class _Hooked(Problem):
    """A Problem overriding every private evoens overrides, recording what EvoTorch calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.secret = "not cloned"
        super().__init__("max", solution_length=D, initial_bounds=(-1, 1), seed=0)

    @property
    def _nonserialized_attribs(self) -> list[str]:
        return compat.nonserialized_attribs(super(), "secret")

    def _fill(self, values: torch.Tensor) -> None:
        self.calls.append("_fill")
        super()._fill(values)

    def _evaluate_batch(self, batch: SolutionBatch) -> None:
        self.calls.append("_evaluate_batch")
        batch.set_evals(batch.values.as_subclass(torch.Tensor).sum(-1))

    def _get_best_and_worst(self, batch: SolutionBatch) -> dict[str, Any]:
        self.calls.append("_get_best_and_worst")
        return {"probe": 7}


def test_problem_calls_the_overridden_privates_during_generation_and_evaluation() -> None:
    problem = _Hooked()
    batch = problem.generate_batch(4)
    assert problem.calls == ["_fill"], changed("how generate_batch creates values (Problem._fill)")
    problem.evaluate(batch)
    assert problem.calls[1:] == ["_evaluate_batch", "_get_best_and_worst"], changed(
        "how Problem.evaluate calls _evaluate_batch / _get_best_and_worst"
    )
    assert problem.status.get("probe") == 7, changed("how Problem.evaluate merges _get_best_and_worst into status")


def test_nonserialized_attribs_are_left_out_of_copies() -> None:
    problem = _Hooked()
    assert "secret" in problem._nonserialized_attribs
    clone = copy.deepcopy(problem)
    assert clone.secret is None and problem.secret == "not cloned", changed(
        "how Problem copies honour _nonserialized_attribs"
    )


def test_ray_sync_still_goes_through_the_overridden_pair() -> None:
    source = inspect.getsource(Problem._sync_before)
    assert "self._make_sync_data_for_actors()" in source and '"_use_sync_data_from_main"' in source, changed(
        "Problem._sync_before (actors no longer receive _make_sync_data_for_actors via _use_sync_data_from_main)"
    )


def test_ray_actors_still_call_problem_seed_which_problem_lacks() -> None:
    assert not hasattr(Problem, "seed"), changed("Problem: it now has seed(); the alias in evoens.evolution may clash")
    assert "self._problem.seed(" in inspect.getsource(evotorch.core), changed(
        "EvaluationActor: it no longer calls problem.seed(); the alias in evoens.evolution may be dead"
    )
    problem = _problem()
    compat.seed_problem(problem, 5)
    want = torch.Generator().manual_seed(5).get_state()
    assert torch.equal(problem.generator.get_state(), want), changed("Problem.manual_seed")


def test_population_problem_overrides_only_the_listed_privates() -> None:
    from evoens.evolution import PopulationProblem

    overridden = {n for n in vars(PopulationProblem) if n.startswith("_") and not n.startswith("__")}
    unlisted = {n for n in overridden if hasattr(Problem, n)} - {*compat.PROBLEM_HOOKS, *compat.PROBLEM_PROPERTIES}
    assert not unlisted, f"PopulationProblem overrides EvoTorch privates {unlisted}: list them in the compat module"


# --- searchers and distributions (evoens.noise) --------------------------------------------------


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_gaussian_searchers_keep_their_distribution_where_evoens_looks(
    stepped: tuple[Problem, dict[str, Any]], name: str
) -> None:
    dist = compat.search_distribution(stepped[1][name])
    want = DISTRIBUTIONS[name]
    if want is None:
        assert dist is None
        return
    assert type(dist) is want, changed(f"{name.upper()}'s search distribution (searcher.{compat.DISTRIBUTION_ATTR})")
    assert compat.uses_elites(dist) == (name == "cem"), changed(f"the {compat.ELITE_RATIO!r} parameter of CEM")
    if name in SEPARABLE:
        mu, sigma = dist.parameters["mu"], dist.parameters["sigma"]
        assert mu.shape == sigma.shape == (D,), changed(f"{want.__name__}.parameters mu/sigma")
        assert dist.mu is mu and dist.sigma is sigma, changed(f"{want.__name__}.mu/.sigma")


@pytest.mark.parametrize("cls", [SeparableGaussian, SymmetricSeparableGaussian, ExpSeparableGaussian])
def test_distributions_still_have_the_private_methods_the_noise_table_overrides(cls: type) -> None:
    for name, params in compat.DISTRIBUTION_HOOKS.items():
        assert name in vars(cls) or name in vars(SeparableGaussian), changed(f"{cls.__name__}.{name} (gone)")
        assert _params(getattr(cls, name)) == params, changed(f"the signature of {cls.__name__}.{name}")
    divide = getattr(cls, "_divide_grad", None)
    assert divide is not None and _params(divide) == ("self", "param_name", "grad", "weights"), changed(
        f"{cls.__name__}._divide_grad"
    )


def test_noise_table_overrides_only_the_listed_privates() -> None:
    from evoens.noise import _TableFill

    overridden = {n for n in vars(_TableFill) if n.startswith("_") and not n.startswith("__")}
    unlisted = {n for n in overridden if hasattr(SeparableGaussian, n)} - set(compat.DISTRIBUTION_HOOKS)
    assert not unlisted, f"evoens.noise overrides EvoTorch privates {unlisted}: list them in the compat module"


def test_divide_grad_applies_pgpes_num_directions_option() -> None:
    dist = compat.search_distribution(_searcher("pgpe", _problem()))
    assert dist is not None and dist.parameters.get("divide_mu_grad_by") == "num_directions"
    grad, weights = torch.ones(D), torch.ones(6)
    torch.testing.assert_close(compat.divide_grad(dist, "mu", grad, weights), grad / 3, msg=changed("_divide_grad"))


class _Recording:
    """Mixin recording EvoTorch's calls of the distribution methods evoens.noise overrides."""

    calls: list[tuple[str, Any]]

    def _fill(self, out: torch.Tensor, *, generator: Any = None) -> None:
        self.calls.append(("_fill", generator))
        super()._fill(out, generator=generator)  # type: ignore[misc]

    def _compute_gradients(self, samples: torch.Tensor, weights: torch.Tensor, ranking_used: Any) -> dict:
        self.calls.append(("_compute_gradients", ranking_used))
        return super()._compute_gradients(samples, weights, ranking_used)  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(SEPARABLE))
def test_a_swapped_in_subclass_samples_updates_and_survives_the_step(name: str) -> None:
    problem = _problem()
    searcher = _searcher(name, problem)
    dist = compat.search_distribution(searcher)
    assert dist is not None
    cls = type(f"Recording{type(dist).__name__}", (_Recording, type(dist)), {"calls": []})
    copied = compat.retyped_distribution(dist, cls)
    assert type(copied) is cls and copied.dtype == dist.dtype and copied.device == dist.device
    assert all(torch.equal(copied.parameters[k], v) for k, v in dist.parameters.items() if torch.is_tensor(v))
    compat.set_search_distribution(searcher, copied)
    searcher.step()  # the first step only samples and evaluates
    searcher.step()  # later ones update from the last population, then sample
    assert [c[0] for c in cls.calls] == ["_fill", "_compute_gradients", "_fill"], changed(
        f"how {name.upper()} samples and updates (Distribution._fill / _compute_gradients): {cls.calls}"
    )
    assert cls.calls[0][1] is problem, changed("the generator searchers pass to Distribution.sample (the Problem)")
    assert compat.sampling_generator(problem) is problem.generator, changed("Problem.generator")
    assert isinstance(compat.sampling_generator(problem), torch.Generator), changed("Problem.generator")
    assert type(compat.search_distribution(searcher)) is cls, changed(
        "update_parameters/modified_copy: the distribution's class is not kept across updates"
    )


def test_quiet_construction_silences_cmaes_setup() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _searcher("cmaes", _problem())  # raises if a warning the compat module filters changed its text


# --- checkpoints (evoens.checkpoint) -------------------------------------------------------------


def test_every_skipped_attribute_still_exists_with_the_expected_kind(stepped: tuple[Problem, dict[str, Any]]) -> None:
    problem, searchers = stepped
    found = _graph_attribs([problem, *searchers.values()])
    missing = sorted(compat.SKIP_ATTRIBS - set(found))
    assert not missing, changed(f"the attributes {missing} (a checkpoint would now walk their replacements)")
    assert all(v is problem for v in found["_problem"]), changed("searchers' and operators' _problem")
    assert all(inspect.ismethod(v) for v in found["_step"]), changed("GaussianSearchAlgorithm._step")
    assert all(isinstance(v, type) for v in found["DISTRIBUTION_TYPE"]), changed("PGPE.DISTRIBUTION_TYPE")
    assert all(isinstance(v, datetime) for v in found["_first_step_datetime"]), changed("_first_step_datetime")
    assert found["_actors"] == found["_actor_pool"] == [None], changed("Problem._actors/_actor_pool")


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_lazy_reporter_keeps_its_name_mangled_status_dicts(stepped: tuple[Problem, dict[str, Any]], name: str) -> None:
    searcher = stepped[1][name]
    attribs = vars(searcher)
    for key in compat.LAZY_REPORTER_ATTRIBS:
        assert isinstance(attribs.get(key), dict), changed(f"LazyReporter's {key}")
    assert "iter" in attribs[compat.LAZY_REPORTER_ATTRIBS[1]], changed("LazyReporter's status cache")
    state = object_state(searcher)
    assert not set(state) & compat.SKIP_ATTRIBS


def test_clear_status_cache_empties_the_lazy_reporter_cache() -> None:
    searcher = _searcher("snes", _problem())
    searcher.step()
    assert searcher.is_status_computed("iter")
    compat.clear_status_cache(searcher)
    assert vars(searcher)[compat.LAZY_REPORTER_ATTRIBS[1]] == {}, changed("LazyReporter.clear_status")
    assert float(searcher.status["stdev"].mean()) > 0  # getters still recompute from state
    compat.clear_status_cache({"not": "evotorch"})  # anything else: nothing happens


def test_hooks_and_evotorch_objects_are_recognised(stepped: tuple[Problem, dict[str, Any]]) -> None:
    problem, searchers = stepped
    for hook in (problem.before_eval_hook, problem.after_eval_hook, searchers["snes"].after_step_hook):
        assert compat.is_hook(hook), changed(f"the hook class ({type(hook).__module__}.{type(hook).__name__})")
    dist = compat.search_distribution(searchers["snes"])
    subclass = type("Sub", (type(dist),), {})
    for obj in (problem, *searchers.values(), dist, compat.retyped_distribution(dist, subclass)):
        assert compat.is_evotorch_object(obj), changed(f"the module of {type(obj).__name__}")
    assert isinstance(dist, Distribution)
    for other in (torch.zeros(2), {"a": 1}, [problem], None):
        assert not compat.is_evotorch_object(other) and not compat.is_hook(other)
