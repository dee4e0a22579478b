"""Suite ``scaling``: generations per second with 0, 1 and 2 Ray actors, where the time of an
actor generation goes, and a model of the curve for N machines.

Two workloads: a small MLP on digits (64-32-10, P = 256, batch 256: the evaluation is cheap, so
actor overhead dominates) and the EvoJAX MNIST ConvNet (11,274 parameters, P = 256, batch 1024:
the evaluation dominates; MNIST from the data directory, ``EVOENS_DATA_DIR``). Each is an
ordinary ``evoens run`` (PGPE, the installed plugins) with ``trainer.num_actors`` = 0, 1, 2 on a
local Ray instance; actors get the default ``threads_per_actor`` (cores / actors). The first
generation (actor start-up) and the last (final evaluation) are not timed.

Per actor generation the actor pool records the wall time from dispatch to the last share back
(``remote``) and the slowest actor's own evaluation time (``compute``): ``remote - compute`` is
the Ray part (the minibatch put once, the population's parameters out, scheduling, the fitness
vectors back), reported as its share of the generation. A separate echo actor measures the
transfer itself: latency ``a`` and seconds per byte ``b`` of sending ``(n, D)`` float32 rows and
getting ``(n,)`` back. The model of one generation with K one-thread actors (``cores`` per
machine), each evaluating ``r`` solutions/s as measured in the 2-actor run::

    T(K) = T_main + c0 + c1 * K + b * P * D * 4 + P / (K * r)

with ``T_main`` the main process's own time (sampling, the searcher update) and the Ray part
``c0 + c1 K`` fitted to the measured 1- and 2-actor overheads. Machine m+1 pays when
``P / r * (1/K - 1/(K + cores)) > c1 * cores`` (K = m * cores), i.e. from ``P = c1 r K (K + cores)``;
two machines beat this one without Ray where ``T(2 cores) < T_local``. On 2 shared cores the
measured rows cannot show machines, only overhead and thread effects; the model gives the curve.
Runs as a script: ``python -m evoens_benchmarks.scaling [--quick]``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from evoens.bench import BenchResult, cells
from evoens.config import config_from_dict
from evoens.manager import create_plugin_manager

WORKLOADS: dict[str, dict[str, Any]] = {
    "mlp": {
        "data": {"name": "digits", "batch_size": 256},
        "model": {"name": "mlp", "hidden": [32], "activation": "tanh"},
    },
    "convnet": {
        "data": {"name": "mnist", "batch_size": 1024, "val_fraction": 0.1},
        "model": {"name": "convnet", "activation": "relu"},
    },
}


def run_config(workload: str, actors: int, popsize: int, generations: int) -> dict[str, Any]:
    return {
        "seed": 0,
        "generations": generations,
        "device": "cpu",
        "eval_every": generations,
        "reporters": ["jsonl"],
        **WORKLOADS[workload],
        "trainer": {"name": "evolution", "searcher": "pgpe", "popsize": popsize, "num_actors": actors,
                    "strategy": "auto"},
    }  # fmt: skip


def measure_run(workload: str, actors: int, popsize: int, generations: int) -> dict[str, Any]:
    """One run: median generations/s of the timed generations and, with actors, the pool's timing."""
    from evoens import distributed
    from evoens.engine import execute

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict(run_config(workload, actors, popsize, generations))
        execute(cfg, tmp, create_plugin_manager())
        metrics = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    seconds = [1.0 / m["generations_per_second"] for m in metrics[1:-1]]  # (start-up, final evaluation)
    found: dict[str, Any] = {"seconds": statistics.median(seconds)}
    pool = distributed.last_pool()
    if actors and pool is not None:
        timed = pool.timing.history[1:-1] or pool.timing.history
        found["remote"] = statistics.median(r for r, _ in timed)
        found["compute"] = statistics.median(c for _, c in timed)
        found["threads"] = pool.manifest.threads
    return found


def transfer_cost(dims: list[int], popsize: int) -> tuple[float, float, list[dict[str, Any]]]:
    """Latency (s) and seconds per byte of (n, D) float32 rows out and (n,) back to one actor."""
    import ray

    @ray.remote(num_cpus=1)
    class Echo:
        def fitness(self, values: torch.Tensor) -> torch.Tensor:
            return values[:, 0].clone()  # (n,)

    echo = Echo.remote()
    ray.get(echo.fitness.remote(torch.zeros(1, 1)))
    points = []
    for dim in dims:
        for n in (1, popsize // 4, popsize):
            values = torch.randn(n, dim)
            times = []
            for _ in range(7):
                start = time.perf_counter()
                ray.get(echo.fitness.remote(values))
                times.append(time.perf_counter() - start)
            points.append({"bytes": n * dim * 4, "seconds": statistics.median(times)})
    ray.kill(echo)
    xs, ys = [p["bytes"] for p in points], [p["seconds"] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-30)
    slope = max(slope, 0.0)
    return max(my - slope * mx, 0.0), slope, points


def model(found: dict[int, dict[str, Any]], popsize: int, dim: int, b: float, cores: int) -> dict[str, Any]:
    """The per-generation model's parameters from the measured runs (see the module docstring)."""
    two = found[2]
    r = (popsize / 2) / max(two["compute"], 1e-9)  # solutions/s of one 1-thread actor
    overhead = {n: max(found[n]["remote"] - found[n]["compute"], 0.0) for n in (1, 2)}
    c1 = max(overhead[2] - overhead[1], 1e-4)  # each further actor: a call, a wait, a result
    c0 = max(overhead[1] - c1 - b * popsize * dim * 4, 0.0)  # per generation: put, dispatch
    t_main = max(two["seconds"] - two["remote"], 0.0)
    local = found[0]["seconds"]

    def t(k: int, p: int = popsize) -> float:
        return t_main + c0 + c1 * k + b * p * dim * 4 + p / (k * r)

    # machine m+1 (cores more actors) pays when p / r * (1/k - 1/(k + cores)) > cores * c1, k = m * cores
    k = cores
    second = math.ceil(cores * c1 * r * k * (k + cores) / cores)
    # two machines (2 cores actors) beat this machine without Ray when t(2 cores, p) < local * p / popsize
    gain = local / popsize - 1 / (2 * cores * r) - b * dim * 4
    fixed = t_main + c0 + c1 * 2 * cores
    over_local = math.ceil(fixed / gain) if gain > 0 else None
    return {"r": r, "c0": c0, "c1": c1, "t_main": t_main, "t": t, "second_machine_pays_from": second,
            "ray_beats_local_from": over_local}  # fmt: skip


def suite(quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
    from evoens import distributed

    logging.getLogger("evoens").setLevel(logging.WARNING)
    ray = distributed.connect(None)  # a local Ray instance: this machine's cores
    env["ray"] = ray.__version__
    env["ray_cpus"] = int(ray.cluster_resources().get("CPU", 0))
    env["load_average_start"] = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was
    plans = {"mlp": (256, 5 if quick else 10), "convnet": (64 if quick else 256, 4)}
    dims = {"mlp": 64 * 32 + 32 + 32 * 10 + 10, "convnet": 11274}
    rows: list[dict[str, Any]] = []
    measured: dict[str, dict[int, dict[str, Any]]] = {}
    grid = [(workload, n) for workload in plans for n in (0, 1, 2)]
    for workload, n in cells(grid, lambda c: f"{c[0]} P={plans[c[0]][0]}, {c[1]} actor{'s' * (c[1] != 1)}"):
        measured.setdefault(workload, {})[n] = measure_run(workload, n, *plans[workload])
    for workload, (popsize, _) in plans.items():
        for n, m in measured[workload].items():
            share = (m["remote"] - m["compute"]) / m["seconds"] if n else None
            rows.append({"workload": workload, "popsize": popsize, "machines": "this one", "actors": n,
                         "threads_per_actor": m.get("threads"), "gen_per_s": 1 / m["seconds"],
                         "ray_share": share, "source": "measured"})  # fmt: skip
    a, b, points = transfer_cost(sorted(dims.values()), 256)
    cores = env["ray_cpus"] or 2
    notes = [
        f"Transfer to one actor (echo, (n, D) float32 out, (n,) back): latency {a * 1e3:.2f} ms + "
        f"{b * 1e9:.3f} s/GB ({1 / max(b, 1e-30) / 1e9:.2f} GB/s), fitted over {len(points)} sizes.",
    ]
    for workload, (popsize, _) in plans.items():
        fit = model(measured[workload], popsize, dims[workload], b, cores)
        for machines in (1, 2, 4, 8, 16):
            k = machines * cores
            ray_part = fit["c0"] + fit["c1"] * k + b * popsize * dims[workload] * 4
            rows.append({"workload": workload, "popsize": popsize, "machines": machines, "actors": k,
                         "threads_per_actor": 1, "gen_per_s": 1 / fit["t"](k), "ray_share": ray_part / fit["t"](k),
                         "source": "model"})  # fmt: skip
        over = fit["ray_beats_local_from"]
        notes.append(
            f"{workload} (P = {popsize}): one 1-thread actor evaluates {fit['r']:.0f} solutions/s; Ray costs "
            f"{fit['c0'] * 1e3:.1f} ms per generation + {fit['c1'] * 1e3:.1f} ms per actor; the main process's own "
            f"part is {fit['t_main'] * 1e3:.1f} ms; a second {cores}-core machine pays from P = "
            f"{fit['second_machine_pays_from']}; two machines beat this one without Ray from "
            + (f"P = {over}." if over is not None else "no P (the transfer per solution costs more than the "
               "evaluation it spreads).")
        )  # fmt: skip
    env["load_average_end"] = round(os.getloadavg()[0], 2)
    notes.append(
        f"Model: T(K actors) = T_main + c0 + c1 K + b P D 4 + P / (K r), {cores} one-thread actors per machine, "
        "r, c0, c1 and T_main from the measured 1- and 2-actor runs, b from the echo; 'ray_share' is the Ray "
        "part (measured: remote - compute) of a generation. 2 actors on this 2-core machine share its cores "
        "with the main process, so the measured rows show overhead and thread effects, not machines."
    )
    return BenchResult(
        "scaling: generations/s with 0, 1, 2 Ray actors and a model for N machines",
        ["workload", "popsize", "machines", "actors", "threads_per_actor", "gen_per_s", "ray_share", "source"],
        rows,
        notes,
    )


if __name__ == "__main__":
    from evoens_benchmarks import main

    sys.exit(main("scaling", sys.argv[1:]))
