"""The scaling suite's model of N machines (benchmarks/evoens_benchmarks/scaling.py): fitted to
the measured runs it reproduces them, and its break-even popsizes are where the curves cross."""

from __future__ import annotations

import pytest

scaling = pytest.importorskip("evoens_benchmarks.scaling")

# measured seconds per generation (as measure_run reports them) for 0, 1 and 2 actors
FOUND = {
    0: {"seconds": 0.40},
    1: {"seconds": 0.50, "remote": 0.45, "compute": 0.40, "threads": 2},
    2: {"seconds": 0.30, "remote": 0.26, "compute": 0.20, "threads": 1},
}
P, D, B, CORES = 256, 11274, 2e-9, 2


def test_the_model_reproduces_the_measured_two_actor_generation() -> None:
    fit = scaling.model(FOUND, P, D, B, CORES)
    assert fit["t"](2) == pytest.approx(FOUND[2]["seconds"], rel=1e-12)
    assert fit["r"] == pytest.approx((P / 2) / FOUND[2]["compute"])
    # the Ray part grows by c1 per actor: measured overheads 0.05 (1 actor) and 0.06 (2 actors)
    assert fit["c1"] == pytest.approx(0.01) and fit["t"](4) > fit["t"](2) - FOUND[2]["compute"]


def test_a_further_machine_pays_from_the_reported_popsize() -> None:
    fit = scaling.model(FOUND, P, D, B, CORES)
    star = fit["second_machine_pays_from"]
    one, two = CORES, 2 * CORES  # actors on one machine, on two
    assert fit["t"](two, star + 1) < fit["t"](one, star + 1)
    assert fit["t"](two, star - 2) > fit["t"](one, star - 2)


def test_two_machines_beat_this_one_without_ray_from_the_reported_popsize() -> None:
    fit = scaling.model(FOUND, P, D, B, CORES)
    star = fit["ray_beats_local_from"]
    local = FOUND[0]["seconds"] / P  # seconds per solution without Ray
    assert star is not None
    assert fit["t"](2 * CORES, star + 1) < local * (star + 1)
    assert fit["t"](2 * CORES, max(star - 2, 1)) > local * max(star - 2, 1)


def test_no_popsize_when_a_solution_costs_more_to_send_than_to_evaluate_here() -> None:
    fast_here = {**FOUND, 0: {"seconds": 1e-6}}
    assert scaling.model(fast_here, P, D, B, CORES)["ray_beats_local_from"] is None
