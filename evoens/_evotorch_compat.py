"""Every EvoTorch internal that evoens relies on, in one place.

EvoTorch has no public API for a few things evoens needs: the search distribution of a Gaussian
searcher (:mod:`evoens.noise` swaps in a subclass), the Problem methods a batched problem
overrides (:mod:`evoens.evolution`), and the attributes a checkpoint must not walk
(:mod:`evoens.checkpoint`). Each item below says which EvoTorch versions it was checked against
and what it relies on. ``tests/test_evotorch_compat.py`` checks every item on real EvoTorch
objects and fails with "EvoTorch X changed <thing>; update evoens/_evotorch_compat.py" when one
no longer holds; ``setup.py`` pins :data:`TESTED_RANGE`.

Importing this module does not import EvoTorch (:mod:`evoens.checkpoint` uses it, and the CLI
and gradient runs never load EvoTorch): functions import EvoTorch's classes when they are given
EvoTorch objects, by which time EvoTorch is loaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from evotorch import Problem
    from evotorch.distributions import Distribution

__all__ = [
    "CHECKED_AGAINST",
    "DISTRIBUTION_ATTR",
    "DISTRIBUTION_HOOKS",
    "ELITE_RATIO",
    "EVOTORCH_VERSION",
    "LAZY_REPORTER_ATTRIBS",
    "PROBLEM_HOOKS",
    "PROBLEM_PROPERTIES",
    "SKIP_ATTRIBS",
    "TESTED_RANGE",
    "clear_status_cache",
    "divide_grad",
    "is_evotorch_object",
    "is_hook",
    "nonserialized_attribs",
    "quiet_construction",
    "retyped_distribution",
    "sampling_generator",
    "search_distribution",
    "seed_problem",
    "set_search_distribution",
    "uses_elites",
]

EVOTORCH_VERSION: str = version("evotorch")
TESTED_RANGE = ">=0.6,<0.7"
"""The EvoTorch versions ``setup.py`` accepts: those this module was checked against."""
CHECKED_AGAINST: tuple[str, ...] = ("0.6.1",)
"""EvoTorch releases the whole module (every item below) was checked against."""

# --- Problem: the private methods evoens.evolution.PopulationProblem overrides -----------------

PROBLEM_HOOKS: dict[str, tuple[str, ...]] = {
    "_evaluate_all": ("self", "batch"),
    "_evaluate_batch": ("self", "batch"),
    "_fill": ("self", "values"),
    "_get_best_and_worst": ("self", "batch"),
    "_make_sync_data_for_actors": ("self",),
    "_use_sync_data_from_main": ("self", "received"),
}
"""Private ``Problem`` methods a subclass overrides, with the parameters EvoTorch calls them with.

Checked against 0.6.1: ``evaluate`` -> ``_evaluate_all(batch)`` (after ``before_eval_hook``, before
``after_eval_hook``; evoens's Ray actors take over here) -> ``_evaluate_batch(batch)`` (no Ray
actors); ``generate_batch`` -> ``generate_values`` -> ``_fill(values)``; ``evaluate`` merges the
dict ``_get_best_and_worst(batch)`` returns into ``problem.status`` (main process only);
``_sync_before`` sends ``_make_sync_data_for_actors()`` to every actor's
``_use_sync_data_from_main(received)`` before a Ray evaluation. If EvoTorch renames one, an
override silently stops being called.
"""

PROBLEM_PROPERTIES: tuple[str, ...] = ("_nonserialized_attribs",)
"""Private ``Problem`` properties a subclass overrides.

Checked against 0.6.1: ``_nonserialized_attribs`` (a list of attribute names) is read by
``Problem._get_cloned_state``, which ``copy.deepcopy``, pickling and the copies sent to Ray
actors use; the listed attributes become ``None`` in the copy.
"""


def nonserialized_attribs(parent: Any, *extra: str) -> list[str]:
    """The inherited non-serialized attribute names plus ``extra``.

    ``parent`` is ``super()`` inside a Problem subclass's ``_nonserialized_attribs`` property
    (checked against 0.6.1, where ``Problem``'s own list is empty).
    """
    return [*getattr(parent, "_nonserialized_attribs", []), *extra]


def seed_problem(problem: Problem, seed: int | None = None) -> None:
    """What ``problem.seed(seed)`` must do: EvoTorch 0.6.1's Ray ``EvaluationActor`` calls
    ``problem.seed(...)`` when the problem has its own generator, but ``Problem`` defines only
    ``manual_seed``; a subclass's ``seed`` method forwards here so seeded problems can start
    actors. Checked against 0.6.1."""
    problem.manual_seed(seed)


# --- Gaussian searchers and their distributions (evoens.noise) --------------------------------

DISTRIBUTION_ATTR = "_distribution"
"""Where a Gaussian searcher keeps its search distribution.

Checked against 0.6.1: ``GaussianSearchAlgorithm`` (SNES, PGPE, CEM, XNES) sets
``self._distribution`` in ``__init__``, samples from it in ``_step`` and replaces it with the copy
``update_parameters`` returns; there is no public getter or setter. CMAES and GA have none.
"""


def search_distribution(searcher: Any) -> Distribution | None:
    """The search distribution of an EvoTorch Gaussian searcher; ``None`` for other searchers."""
    from evotorch.distributions import Distribution

    dist = getattr(searcher, DISTRIBUTION_ATTR, None)
    return dist if isinstance(dist, Distribution) else None


def set_search_distribution(searcher: Any, dist: Distribution) -> None:
    """Make ``searcher`` sample from and update ``dist`` (see :data:`DISTRIBUTION_ATTR`)."""
    setattr(searcher, DISTRIBUTION_ATTR, dist)


def retyped_distribution(dist: Distribution, cls: type[Distribution]) -> Distribution:
    """A copy of ``dist`` as ``cls`` (a subclass of its class): same parameters, dtype, device.

    Checked against 0.6.1: the separable Gaussians are built as ``cls(parameters, dtype=...,
    device=...)``, and ``modified_copy`` (called by every ``update_parameters``) rebuilds the
    distribution from ``self.__class__``, so the subclass survives every update.
    """
    return cls(dict(dist.parameters), dtype=dist.dtype, device=dist.device)


DISTRIBUTION_HOOKS: dict[str, tuple[str, ...]] = {
    "_fill": ("self", "out", "generator"),
    "_compute_gradients": ("self", "samples", "weights", "ranking_used"),
}
"""Private ``Distribution`` methods :mod:`evoens.noise` overrides, with their parameters.

Checked against 0.6.1: ``sample(out=..., generator=...)`` calls ``_fill(out, generator=...)``;
``compute_gradients(samples, fitnesses, ...)`` ranks the fitnesses and calls
``_compute_gradients(samples, weights, ranking_used)``; SNES, PGPE and CEM reach both.
"""

ELITE_RATIO = "parenthood_ratio"
"""The parameter that marks CEM's elite-based update (0.6.1: ``SeparableGaussian`` and
``SymmetricSeparableGaussian`` then compute ``_compute_gradients_via_parenthood_ratio``)."""


def uses_elites(dist: Distribution) -> bool:
    """Whether ``dist`` updates from its elites (CEM) instead of a search gradient."""
    return ELITE_RATIO in dist.parameters


def divide_grad(dist: Distribution, name: str, grad: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``grad`` divided as the option ``divide_<name>_grad_by`` of ``dist`` asks (PGPE sets
    ``"num_directions"`` for ``mu`` and ``sigma``). Checked against 0.6.1:
    ``SeparableGaussian._divide_grad(param_name, grad, weights)``, private."""
    return dist._divide_grad(name, grad, weights)  # type: ignore[attr-defined]


def sampling_generator(generator: Any) -> torch.Generator | None:
    """The torch generator behind the ``generator`` a distribution's ``_fill`` receives.

    Checked against 0.6.1: ``GaussianSearchAlgorithm`` calls ``sample(..., generator=problem)``
    and ``sample`` passes the Problem on unchanged; ``problem.generator`` is its own
    ``torch.Generator`` (``None``: the global one). A torch generator or ``None`` passes through.
    """
    return getattr(generator, "generator", generator)


# --- Checkpoints (evoens.checkpoint) -----------------------------------------------------------

LAZY_REPORTER_ATTRIBS: tuple[str, ...] = ("_LazyReporter__getters", "_LazyReporter__computed")
"""``LazyReporter``'s name-mangled status getters (bound methods) and cache, in every searcher's
``vars``. Checked against 0.6.1 (``self.__getters``, ``self.__computed`` in
``LazyReporter.__init__``)."""

SKIP_ATTRIBS: frozenset[str] = frozenset(
    {
        "_problem",  # searchers and operators: the link back to the Problem, saved on its own
        "_step",  # GaussianSearchAlgorithm: the bound step method picked in __init__
        "DISTRIBUTION_TYPE",  # PGPE: set per instance (symmetric or not)
        *LAZY_REPORTER_ATTRIBS,
        "_first_step_datetime",  # SearchAlgorithm: wall clock of the first step
        "_actors",  # Problem: Ray actor handles (unused: evoens.distributed runs its own pool)
        "_actor_pool",
    }
)
"""EvoTorch attributes a checkpoint leaves alone: links, bound methods, Ray handles, clocks and
caches, all rebuilt by constructing the same configuration. Checked against 0.6.1."""


def is_evotorch_object(value: Any) -> bool:
    """Whether ``value`` is an instance of an EvoTorch class (subclasses included) with a
    ``__dict__``. Relies on EvoTorch's classes living in the ``evotorch`` package (0.6.1)."""
    evotorch_class = any(cls.__module__.split(".")[0] == "evotorch" for cls in type(value).__mro__)
    return evotorch_class and hasattr(value, "__dict__")


def is_hook(value: Any) -> bool:
    """Whether ``value`` is an EvoTorch hook list (``before_eval_hook``, ``after_step_hook``, ...:
    ``evotorch.tools.hook.Hook`` in 0.6.1), which holds callables, not state."""
    if not is_evotorch_object(value):
        return False
    from evotorch.tools.hook import Hook

    return isinstance(value, Hook)


def clear_status_cache(obj: Any) -> None:
    """Forget the status values a searcher has computed, so they are recomputed from restored
    state. 0.6.1: ``LazyReporter.clear_status`` empties ``_LazyReporter__computed``."""
    if not is_evotorch_object(obj):
        return
    from evotorch.algorithms.searchalgorithm import LazyReporter

    if isinstance(obj, LazyReporter):
        obj.clear_status()


# --- Searcher construction (evoens.builtins.searchers) -----------------------------------------


@contextmanager
def quiet_construction() -> Iterator[None]:
    """Silence the harmless warnings EvoTorch 0.6.1's CMAES set-up raises: ``torch.tensor`` of a
    tensor (``UserWarning``) and NumPy 2's ``__array_wrap__`` deprecation, from mixing NumPy and
    torch in ``CMAES.__init__``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
        warnings.filterwarnings("ignore", "__array_wrap__ must accept context", DeprecationWarning)
        yield
