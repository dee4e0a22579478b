"""The evolutionary trainer: EvoTorch search algorithms over a batched population.

EvoTorch's stock ``SupervisedNE`` evaluates one solution at a time (``fill_parameters`` into one
network, a Python loop). Here the whole ``(N, D)`` batch of sampled solutions becomes one
:class:`~evoens.population.Population` and is evaluated in a single batched forward, while the
search itself (SNES, XNES, PGPE, CMA-ES, CEM, GA, ranking, optimizers) stays EvoTorch's own.
EvoTorch's ``num_actors`` passes straight through, so Ray spreads evaluation over processes and
machines; inside an actor the evaluation is the pure-torch default (plugin hooks run in the
main process only).

Reference: Toklu et al., "EvoTorch: Scalable Evolutionary Computation in Python", 2023
(arXiv:2302.12600).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from evotorch import Problem, SolutionBatch
from torch import nn

from evoens.bridge import Batch, Evaluator, GenerationHooks, attach_searcher
from evoens.checkpoint import object_state, restore_object
from evoens.datasets import Batcher
from evoens.fitness import FitnessFn, fitness_stats, sanitize
from evoens.population import Population, module_to_flat

logging.getLogger("evotorch").setLevel(logging.WARNING)  # one INFO line per Problem otherwise

SearcherFactory = Callable[[Problem, int, Mapping[str, Any], torch.Tensor], Any]


class PopulationProblem(Problem):
    """A vectorized EvoTorch ``Problem`` whose batch evaluation is one population forward.

    ``fitness_fn`` maps ``(N, B, C)`` outputs and ``(B,)`` targets to ``(N,)`` (maximised).
    ``batch`` is the current ``(x, y)`` minibatch, shared by all solutions of a generation and
    sent to Ray actors through EvoTorch's sync mechanism. ``evaluator`` (main process only)
    replaces the default evaluation, e.g. by the plugin hook ``evoens_evaluate``.
    """

    def __init__(
        self,
        template: nn.Module,
        fitness_fn: FitnessFn,
        *,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        num_actors: int | str | None = None,
        strategy: str = "auto",
        max_chunk: int | None = None,
    ) -> None:
        self.template = template.to(device).eval()
        self.fitness_fn = fitness_fn
        self.strategy = strategy
        self.max_chunk = max_chunk
        self.batch: Batch | None = None
        self.evaluator: Evaluator | None = None
        self.nonfinite = torch.zeros((), dtype=torch.long)
        super().__init__(
            "max",
            solution_length=sum(p.numel() for p in template.parameters()),
            initial_bounds=(-0.1, 0.1),
            dtype=torch.float32,
            device=device,
            seed=seed,
            num_actors=num_actors or None,
            store_solution_stats=False,  # EvoTorch's best/worst tracking syncs with the host; see below
        )
        self.best_eval = torch.tensor(float("-inf"), device=self.device)  # () best fitness seen
        self.best_values = torch.zeros(self.solution_length, device=self.device)  # (D,) its solution

    @property
    def _nonserialized_attribs(self) -> list[str]:
        return [*super()._nonserialized_attribs, "evaluator"]

    def seed(self, seed: int | None = None) -> None:
        """EvoTorch 0.6.1's ``EvaluationActor`` calls ``problem.seed()``, which ``Problem`` lacks
        (it has ``manual_seed``): without this alias a seeded problem cannot start Ray actors."""
        self.manual_seed(seed)

    def _get_best_and_worst(self, batch: SolutionBatch) -> dict[str, torch.Tensor]:
        """The best solution so far, tracked on the device without a host sync (EvoTorch's own
        tracking compares in Python; it is off on GPUs, which left no "best" in the status).
        Runs in the main process after every evaluation, also with Ray actors."""
        evals = batch.evals[:, 0].as_subclass(torch.Tensor)  # (N,) already sanitized
        pick = evals.argmax().view(1)  # (1,)
        candidate = evals.index_select(0, pick)[0]  # ()
        better = candidate > self.best_eval  # () bool, stays on the device
        self.best_eval = torch.where(better, candidate, self.best_eval)
        values = batch.values.as_subclass(torch.Tensor).index_select(0, pick)[0]  # (D,)
        self.best_values = torch.where(better, values, self.best_values)
        return {"best": self.best_values, "best_eval": self.best_eval}

    def _make_sync_data_for_actors(self) -> Any:
        return self.batch

    def _use_sync_data_from_main(self, received: Any) -> None:
        self.batch = received

    def default_evaluate(self, population: Population, batch: Batch) -> torch.Tensor:
        x, y = batch
        return self.fitness_fn(population(x), y)  # (N,)

    def _fill(self, values: torch.Tensor) -> None:
        # GA and other population-based searchers start from P freshly initialised networks
        # (PyTorch's default init), not from uniform noise.
        fresh = Population.from_module(self.template, values.shape[0], generator=self.generator)
        values.copy_(fresh.flat)

    def _evaluate_batch(self, batch: SolutionBatch) -> None:
        if self.batch is None:
            raise RuntimeError("PopulationProblem.batch is unset: set it before each generation")
        values = batch.values.as_subclass(torch.Tensor)  # (N, D), EvoTorch's ReadOnlyTensor unwrapped
        population = Population(self.template, values, strategy=self.strategy, max_chunk=self.max_chunk)
        x, y = (t.to(values.device, non_blocking=True) for t in self.batch)
        with torch.no_grad():
            fitness = (self.evaluator or self.default_evaluate)(population, (x, y))  # (N,)
        clean, bad = sanitize(fitness.detach().to(values.dtype))
        self.nonfinite = self.nonfinite.to(bad.device) + bad
        batch.set_evals(clean)


class EvolutionTrainer:
    """One generation = draw a minibatch, then one EvoTorch ``searcher.step()``."""

    def __init__(self, problem: PopulationProblem, searcher: Any, batcher: Batcher, hooks: GenerationHooks) -> None:
        self.problem = problem
        self.searcher = searcher
        self.batcher = batcher
        problem.evaluator = hooks.evaluate
        self.extras: dict[str, Any] = {}  # statistics returned by plugin hooks this generation
        attach_searcher(searcher, hooks, self._stats, self.extras)

    def _stats(self) -> dict[str, Any]:
        population = self.searcher.population
        evals = population.evals[:, 0].as_subclass(torch.Tensor)  # (P,)
        return {
            **fitness_stats(evals),
            "best_ever_fitness": self.problem.best_eval,
            "nonfinite": self.problem.nonfinite,
            "diversity": population.values.std(dim=0, correction=0).mean(),  # mean per-weight std
        }

    def step(self, generation: int) -> dict[str, Any]:
        self.problem.nonfinite = torch.zeros((), dtype=torch.long)
        self.problem.batch = self.batcher.next()
        self.extras.clear()
        self.searcher.step()
        return {**self._stats(), **self.extras}

    def state_dict(self) -> dict[str, Any]:
        return {"searcher": object_state(self.searcher), "problem": object_state(self.problem)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore into this freshly built trainer. One silent priming step first creates what
        EvoTorch builds lazily (population, optimizer state), so every saved value has a home;
        the caller restores the batcher and RNGs afterwards, which undoes the step's draws."""
        hooks = [self.problem.before_eval_hook, self.problem.after_eval_hook, self.searcher.after_step_hook]
        saved = [list(h) for h in hooks]
        evaluator, self.problem.evaluator = self.problem.evaluator, None
        try:
            for h in hooks:
                h.clear()
            self.problem.batch = self.batcher.next()
            self.searcher.step()
        finally:
            for h, funcs in zip(hooks, saved):
                h.extend(funcs)
            self.problem.evaluator = evaluator
        restore_object(self.searcher, state["searcher"])
        restore_object(self.problem, state["problem"])

    def candidates(self) -> dict[str, torch.Tensor]:
        """Flat ``(D,)`` parameter vectors worth testing as the run's final model."""
        found = {"best": self.problem.best_values}
        status = self.searcher.status
        if "center" in status:  # distribution-based searchers: their mean
            found["center"] = status["center"]
        return {k: v.as_subclass(torch.Tensor).detach().clone() for k, v in found.items()}


def build_evolution(
    template: nn.Module,
    fitness_fn: FitnessFn,
    searcher_factory: SearcherFactory,
    batcher: Batcher,
    hooks: GenerationHooks,
    *,
    popsize: int,
    options: Mapping[str, Any],
    device: torch.device,
    seed: int,
    num_actors: int | str | None = None,
    strategy: str = "auto",
    max_chunk: int | None = None,
) -> EvolutionTrainer:
    """The problem, the searcher (centred on the template's own initialisation) and the trainer."""
    problem = PopulationProblem(
        template, fitness_fn, device=device, seed=seed, num_actors=num_actors, strategy=strategy, max_chunk=max_chunk
    )
    center = module_to_flat(template).to(device)  # (D,)
    searcher = searcher_factory(problem, popsize, options, center)
    return EvolutionTrainer(problem, searcher, batcher, hooks)
