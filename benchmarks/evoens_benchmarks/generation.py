"""Suite ``generation``: whole search generations, not just forwards.

SNES and PGPE over an MLP 40-100-10 on a Gaussian-teacher task (batch 256), three ways: evoens's
batched :class:`~evoens.evolution.PopulationProblem`, EvoTorch's stock ``SupervisedNE`` (one
network per solution) and a hand-vectorized EvoTorch ``Problem`` (``vmap(functional_call)``).
For evoens it splits a generation into the population forward, the rest of the evaluation
(batch handling, fitness, NaN guard) and the search itself (sampling, ranking, update), with
EvoTorch's own sampling and gradients and with evoens's lean search (:mod:`evoens.noise`: a
shared noise table and chunked gradients, the default). Runs as a script:
``python -m evoens_benchmarks.generation [--quick] [--out DIR] [--device cpu|cuda]``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from evotorch import Problem
from torch import nn
from torch.func import functional_call

from evoens.bench import BenchResult, cells, synchronize
from evoens.builtins.searchers import evoens_register_providers as searcher_providers
from evoens.datasets import Batcher, make_gaussian
from evoens.evolution import PopulationProblem
from evoens.fitness import neg_cross_entropy
from evoens.models import mlp
from evoens.population import Population, module_to_flat

SEARCHERS = {p.name: p.factory for p in searcher_providers()}
OPTIONS = {"snes": {}, "pgpe": {"center_learning_rate": 0.01, "stdev_learning_rate": 0.1}}


class VmapProblem(Problem):
    """What a user writes by hand today: a vectorized Problem with vmap(functional_call)."""

    def __init__(self, template: nn.Module, batcher: Batcher, device: torch.device) -> None:
        self.template, self.batcher = template, batcher
        self.shapes = [(n, p.shape) for n, p in template.named_parameters()]
        super().__init__(
            "max",
            solution_length=sum(p.numel() for p in template.parameters()),
            initial_bounds=(-0.1, 0.1),
            device=device,
            seed=0,
        )

    def _evaluate_batch(self, batch: Any) -> None:
        values = batch.values.as_subclass(torch.Tensor)
        params, offset = {}, 0
        for name, shape in self.shapes:
            params[name] = values[:, offset : offset + shape.numel()].reshape(-1, *shape)
            offset += shape.numel()
        x, y = self.batcher.next()
        out = torch.vmap(lambda p: functional_call(self.template, p, (x,)))(params)  # (P, B, C)
        batch.set_evals(neg_cross_entropy(out, y))


def _stock(template: nn.Module, data: Any, device: torch.device) -> Problem:
    from evotorch.neuroevolution import SupervisedNE

    dataset = torch.utils.data.TensorDataset(data.train.x.cpu(), data.train.y.cpu())
    return SupervisedNE(
        dataset, template, nn.CrossEntropyLoss(), minibatch_size=256, common_minibatch=True, device=device
    )


class _Timed:
    """Wraps the population forward and the whole evaluation to measure their share."""

    def __init__(self, problem: PopulationProblem, device: torch.device) -> None:
        self.forward = self.evaluate = 0.0
        self.device = device
        inner_eval = problem._evaluate_batch
        forward = Population.forward

        def timed_forward(pop: Population, *args: Any, **kw: Any) -> Any:
            synchronize(device)
            t0 = time.perf_counter()
            out = forward(pop, *args, **kw)
            synchronize(device)
            self.forward += time.perf_counter() - t0
            return out

        def timed_eval(batch: Any) -> None:
            t0 = time.perf_counter()
            Population.__call__ = timed_forward  # type: ignore[method-assign]
            try:
                inner_eval(batch)
            finally:
                Population.__call__ = forward  # type: ignore[method-assign]
            self.evaluate += time.perf_counter() - t0

        problem._evaluate_batch = timed_eval  # type: ignore[method-assign]


def _per_generation(
    searcher: Any, generations: int, device: torch.device, before: Any = None, timed: _Timed | None = None
) -> float:
    searcher.step()  # warm-up: lazy set-up, auto strategy choice
    if timed is not None:
        timed.forward = timed.evaluate = 0.0
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(generations):
        if before:
            before()
        searcher.step()
    synchronize(device)
    return (time.perf_counter() - t0) / generations


def _row(name: str, P: int, path: str, seconds: float, stock: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "model": "",  # filled in by suite()
        "searcher": name,
        "P": P,
        "path": path,
        "ms_per_gen": seconds * 1e3,
        "gen_per_s": 1 / seconds,
        "x_stock": stock / seconds if stock else None,
        **extra,
    }


def _cell(name: str, P: int, generations: int, device: torch.device, in_dim: int = 40) -> list[dict[str, Any]]:
    data = make_gaussian(seed=0, in_dim=in_dim, n_train=8192).to(device)
    template = mlp((in_dim,), 10, [100 if in_dim == 40 else 64], "tanh").to(device)
    center = module_to_flat(template).to(device)
    make = SEARCHERS[name]
    stock = make(_stock(template, data, device), P, {**OPTIONS[name], "noise_table": False}, center)
    stock_s = _per_generation(stock, max(2, generations // 10), device)
    hand = make(
        VmapProblem(template, Batcher(data.train, 256, 0), device), P, {**OPTIONS[name], "noise_table": False}, center
    )
    hand_s = _per_generation(hand, generations, device)
    rows = [
        _row(name, P, "evotorch-SupervisedNE", stock_s, stock_s),
        _row(name, P, "evotorch-vmap-Problem", hand_s, stock_s),
    ]
    for path, table in (("evoens-evotorch-search", False), ("evoens", True)):
        rows.append(
            _ours(name, P, path, {**OPTIONS[name], "noise_table": table}, template, data, generations, device, stock_s)
        )
    return rows


def _ours(
    name: str,
    P: int,
    path: str,
    options: dict[str, Any],
    template: nn.Module,
    data: Any,
    generations: int,
    device: torch.device,
    stock_s: float,
) -> dict[str, Any]:
    """evoens's batched problem; the forward and the whole evaluation timed separately."""
    problem = PopulationProblem(template, neg_cross_entropy, device=device, seed=0)
    batcher = Batcher(data.train, 256, 0)
    ours = SEARCHERS[name](problem, P, options, module_to_flat(template).to(device))
    timed = _Timed(problem, device)

    def next_batch() -> None:
        problem.batch = batcher.next()

    next_batch()
    ours_s = _per_generation(ours, generations, device, next_batch, timed)
    forward, evaluate = timed.forward / generations, timed.evaluate / generations
    return _row(
        name,
        P,
        path,
        ours_s,
        stock_s,
        forward_share=forward / ours_s,
        other_eval_share=(evaluate - forward) / ours_s,
        search_share=1 - evaluate / ours_s,
    )


def suite(quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
    grid = [(40, 256)] if quick else [(40, 256), (40, 1024), (784, 256)]  # (input width, P)
    generations = 10 if quick else 40
    rows = []
    searchers = [(in_dim, P, name) for in_dim, P in grid for name in ("snes", "pgpe")]
    for in_dim, P, name in cells(searchers, lambda cell: f"{cell[2]} input {cell[0]} P={cell[1]}"):
        for row in _cell(name, P, generations, device, in_dim):
            rows.append({**row, "model": "MLP 40-100-10" if in_dim == 40 else "MLP 784-64-10"})
    return BenchResult(
        title="generation: whole search generations (batch 256)",
        columns=[
            "model",
            "searcher",
            "P",
            "path",
            "ms_per_gen",
            "gen_per_s",
            "x_stock",
            "forward_share",
            "other_eval_share",
            "search_share",
        ],
        rows=rows,
        notes=_notes(rows),
    )


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = ["## Target: the forward is at least half of a generation at P=256, batch 256", ""]
    by_key = {(r["model"], r["searcher"], r["P"], r["path"]): r for r in rows}
    for (model, name, P, path), row in by_key.items():
        if path != "evoens":
            continue
        verdict = "met" if row["forward_share"] >= 0.5 else "missed"
        plain = by_key[(model, name, P, "evoens-evotorch-search")]
        notes.append(
            f"- {model}, {name} P={P}: forward {100 * row['forward_share']:.0f}% of {row['ms_per_gen']:.1f} ms, "
            f"search {100 * row['search_share']:.0f}% ({verdict}); {row['x_stock']:.1f}x EvoTorch SupervisedNE; "
            f"with EvoTorch's own sampling and gradients a generation takes "
            f"{plain['ms_per_gen'] / row['ms_per_gen']:.2f}x as long (search share {100 * plain['search_share']:.0f}%)"
        )
    return notes


if __name__ == "__main__":
    from evoens_benchmarks import main

    sys.exit(main("generation", sys.argv[1:]))
