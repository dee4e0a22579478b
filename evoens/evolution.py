"""The evolutionary trainer: EvoTorch search algorithms over a batched population.

EvoTorch's stock ``SupervisedNE`` evaluates one solution at a time (``fill_parameters`` into one
network, a Python loop). Here the whole ``(N, D)`` batch of sampled solutions becomes one
:class:`~evoens.population.Population` and is evaluated in a single batched forward, while the
search itself (SNES, XNES, PGPE, CMA-ES, CEM, GA, ranking, optimizers) stays EvoTorch's own.
With ``trainer.num_actors`` the evaluation runs in EvoTorch's Ray ``EvaluationActor``s, on this
machine or a cluster: :mod:`evoens.distributed` starts them at the first generation (the plugins
that take part in evaluation run inside them, or the run refuses actors) and splits each
generation's solutions over them; the main process still runs ``evoens_after_ask`` before and
``evoens_after_evaluate`` after it (without outputs, which stay in the actors).

Reference: Toklu et al., "EvoTorch: Scalable Evolutionary Computation in Python", 2023
(arXiv:2302.12600).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from evotorch import Problem, SolutionBatch
from torch import nn

from evoens import _evotorch_compat as compat
from evoens.candidates import Candidates, Evaluation
from evoens.checkpoint import object_state, restore_object
from evoens.datasets import Batcher
from evoens.errors import UserError
from evoens.fitness import FitnessFn, fitness_stats, sanitize
from evoens.phases import Batch, Evaluate, Phases
from evoens.population import Population, module_to_flat

logging.getLogger("evotorch").setLevel(logging.WARNING)  # one INFO line per Problem otherwise

SearcherFactory = Callable[[Problem, int, Mapping[str, Any], torch.Tensor], Any]


@dataclass
class Remote:
    """The Ray side of a problem (never checkpointed: a plain object, skipped by the walker)."""

    wanted: int | str = 0  # trainer.num_actors
    pool: Any = None  # in the main process: the running evoens.distributed.ActorPool
    actor: Any = None  # inside an actor: its plugins, run view and device (evoens.distributed.ActorSide)

    def __getstate__(self) -> dict[str, Any]:
        return {"wanted": self.wanted, "pool": None, "actor": None}  # actors get no handles


class PopulationProblem(Problem):
    """A vectorized EvoTorch ``Problem`` whose batch evaluation is one population forward.

    The EvoTorch private methods it overrides are listed in ``evoens._evotorch_compat.PROBLEM_HOOKS``
    (tests fail when EvoTorch renames one).

    ``fitness_fn`` maps ``(N, B, C)`` outputs and ``(B,)`` targets to ``(N,)`` (maximised).
    ``batch`` is the current ``(x, y)`` minibatch, shared by all solutions of a generation and
    sent to Ray actors through EvoTorch's sync mechanism. ``evaluate`` (main process only) is the
    generation's :class:`~evoens.phases.Evaluate` (the plugin phases); without it the default
    evaluation runs. ``remote`` holds the Ray side (:class:`Remote`).
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
        self.evaluate_phases: Evaluate | None = None
        self.remote = Remote(num_actors or 0)
        self.generation = 0
        super().__init__(
            "max",
            solution_length=sum(p.numel() for p in template.parameters()),
            initial_bounds=(-0.1, 0.1),
            dtype=torch.float32,
            device=device,
            seed=seed,
            num_actors=None,  # evoens.distributed runs the actors (EvoTorch's EvaluationActor)
            store_solution_stats=False,  # EvoTorch's best/worst tracking syncs with the host; see below
        )
        self.best_eval = torch.tensor(float("-inf"), device=self.device)  # () best fitness seen
        self.best_values = torch.zeros(self.solution_length, device=self.device)  # (D,) its solution

    @property
    def _nonserialized_attribs(self) -> list[str]:
        # what an actor must not receive: the main process's phases and actors, and the fitness
        # function and minibatch (an actor builds the former from its plugins, gets the latter per share)
        return compat.nonserialized_attribs(super(), "evaluate_phases", "fitness_fn", "batch")

    def seed(self, seed: int | None = None) -> None:
        """EvoTorch's Ray actors call ``problem.seed()``; see ``evoens._evotorch_compat.seed_problem``."""
        compat.seed_problem(self, seed)

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

    def setup_actor(self, manifest: Any, config: Any) -> str:
        """Inside a Ray actor, once: its plugins, threads, device (evoens.distributed)."""
        from evoens import distributed

        return distributed.setup_actor(self, manifest, config)

    def evaluate_share(self, values: torch.Tensor, batch: Any, generation: int) -> tuple[torch.Tensor, float]:
        """Inside a Ray actor: the sanitized ``(n,)`` fitness of ``(n, D)`` solutions, through the
        plugins' ``evoens_evaluate`` (the core's applies the configured fitness), and the seconds it took."""
        from evoens.phases import as_evaluation

        started = time.perf_counter()
        if not isinstance(batch, tuple):  # a Ray object reference, resolved once per share
            import ray

            batch = ray.get(batch)
        device = self.remote.actor.device
        x, y = (t.to(device) for t in batch)
        candidates = self.candidates_of(values.to(device))
        with torch.no_grad():
            result = self.remote.actor.pm.hook.evoens_evaluate(
                run=self.remote.actor.run, generation=generation, candidates=candidates, batch=(x, y)
            )
            clean = sanitize(as_evaluation(result).fitness.detach())[0]  # (n,)
        return clean.to("cpu", values.dtype), time.perf_counter() - started

    def candidates_of(self, values: torch.Tensor) -> Candidates:
        """The ``(N, D)`` solutions as one species of the template (a view: no copy)."""
        return Candidates([Population(self.template, values, strategy=self.strategy, max_chunk=self.max_chunk)])

    def default_evaluate(self, candidates: Candidates, batch: Batch) -> Evaluation:
        return candidates.evaluate(self.fitness_fn, batch)  # (N,)

    def _fill(self, values: torch.Tensor) -> None:
        # GA and other population-based searchers start from P freshly initialised networks
        # (PyTorch's default init), not from uniform noise.
        fresh = Population.from_module(self.template, values.shape[0], generator=self.generator)
        values.copy_(fresh.flat)

    def _evaluate_all(self, batch: SolutionBatch) -> None:
        pool = self.remote.pool
        if pool is None:
            super()._evaluate_all(batch)
            return
        values = batch.values.as_subclass(torch.Tensor)  # (N, D)
        phases = self.evaluate_phases if isinstance(self.evaluate_phases, Phases) else None
        candidates = self.candidates_of(values)
        if phases is not None:
            phases.after_ask(candidates)  # may edit the values in place, before they are sent
        clean = pool.evaluate(values, self.batch, self.generation)  # (N,) sanitized in the actors
        if phases is not None:
            phases.after_evaluate(candidates, Evaluation(clean), self.batch)  # type: ignore[arg-type]
        batch.set_evals(clean.to(values.dtype))

    def _evaluate_batch(self, batch: SolutionBatch) -> None:
        if self.batch is None:
            raise RuntimeError("PopulationProblem.batch is unset: set it before each generation")
        values = batch.values.as_subclass(torch.Tensor)  # (N, D), EvoTorch's ReadOnlyTensor unwrapped
        candidates = self.candidates_of(values)
        x, y = (t.to(values.device, non_blocking=True) for t in self.batch)
        with torch.no_grad():
            if self.evaluate_phases is not None:
                clean = self.evaluate_phases(candidates, (x, y)).clean  # (N,)
            else:
                clean = sanitize(self.default_evaluate(candidates, (x, y)).fitness.detach())[0]
        batch.set_evals(clean.to(values.dtype))


class EvolutionTrainer:
    """One generation = draw a minibatch, then one EvoTorch ``searcher.step()``, whose evaluation
    of the sampled solutions is the generation's evaluation phases."""

    ray_actors = True  # evaluates in Ray actors with trainer.num_actors (evoens.kinds.Trainer)

    def __init__(self, problem: PopulationProblem, searcher: Any, batcher: Batcher) -> None:
        self.problem = problem
        self.searcher = searcher
        self.batcher = batcher

    def _start_actors(self, evaluate: Evaluate) -> None:
        """With ``trainer.num_actors``, start the Ray actors at the first generation (the run's
        plugins and config come with the engine's phases); the last generation closes them."""
        if not isinstance(evaluate, Phases):
            raise UserError(
                f"trainer.num_actors = {self.problem.remote.wanted!r} needs a run (evoens run): the actors import "
                "its plugins"
            )
        from evoens import distributed

        self.problem.remote.pool = distributed.start(self.problem, evaluate.run)

    def close(self) -> None:
        """Stop the Ray actors, if any (the run's last generation does it, so does the next run)."""
        if self.problem.remote.pool is not None:
            self.problem.remote.pool.close()
            self.problem.remote.pool = None

    def _stats(self) -> dict[str, Any]:
        population = self.searcher.population
        evals = population.evals[:, 0].as_subclass(torch.Tensor)  # (P,)
        return {
            **fitness_stats(evals),
            "best_ever_fitness": self.problem.best_eval,
            "diversity": population.values.std(dim=0, correction=0).mean(),  # mean per-weight std
        }

    def step(self, generation: int, evaluate: Evaluate) -> dict[str, Any]:
        self.problem.batch = self.batcher.next()
        self.problem.generation = generation
        if self.problem.remote.wanted and self.problem.remote.pool is None:
            self._start_actors(evaluate)
        self.problem.evaluate_phases = evaluate
        try:
            self.searcher.step()
        finally:
            self.problem.evaluate_phases = None
        if isinstance(evaluate, Phases) and generation + 1 >= evaluate.run.config.generations:
            self.close()
        return self._stats()

    def state_dict(self) -> dict[str, Any]:
        return {"searcher": object_state(self.searcher), "problem": object_state(self.problem)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore into this freshly built trainer. One silent priming step first creates what
        EvoTorch builds lazily (population, optimizer state), so every saved value has a home;
        the caller restores the batcher and RNGs afterwards, which undoes the step's draws."""
        self.problem.batch = self.batcher.next()
        self.searcher.step()  # no phases attached: plugins see nothing of it
        restore_object(self.searcher, state["searcher"])
        restore_object(self.problem, state["problem"])

    def candidates(self) -> Candidates:
        """The solutions worth testing as the run's final model: the best so far (and, for
        distribution-based searchers, the mean)."""
        found = {"best": self.problem.best_values}
        status = self.searcher.status
        if "center" in status:
            found["center"] = status["center"]
        rows = torch.stack([v.as_subclass(torch.Tensor).detach().clone() for v in found.values()])  # (K, D)
        return Candidates([self.problem.candidates_of(rows).species[0]], names=list(found))


def build_evolution(
    template: nn.Module,
    fitness_fn: FitnessFn,
    searcher_factory: SearcherFactory,
    batcher: Batcher,
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
    return EvolutionTrainer(problem, searcher, batcher)
