"""The contract: every hook documented, and the exact order of hook calls in a two-generation run."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from evoens import hookimpl, hookspecs
from evoens.testing import HookRecorder, make_plugin_manager, run_inline, tiny_config

SPECS = sorted(n for n in dir(hookspecs) if n.startswith("evoens_"))


class RecordEverything:
    """An inline plugin implementing every hook; each records its own call."""

    def __init__(self) -> None:
        self.calls: list[str] = []


def _recorder(name: str) -> Any:
    argnames = list(inspect.signature(getattr(hookspecs, name)).parameters)

    def impl(self: RecordEverything, *args: Any, **kwargs: Any) -> None:  # pluggy < 1.7 passes args positionally
        self.calls.append(name)

    # pluggy reads the argument names of the function: give each impl the spec's signature
    impl.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in argnames]
    )
    return hookimpl(impl)


for _name in SPECS:
    setattr(RecordEverything, _name, _recorder(_name))

PER_GENERATION = [
    "evoens_generation_start",
    "evoens_after_ask",
    "evoens_evaluate",
    "evoens_after_evaluate",
    "evoens_after_tell",
    "evoens_report",
    "evoens_should_stop",
]
EXPECTED = [
    "evoens_addhooks",
    "evoens_configure",
    "evoens_register_providers",
    "evoens_run_start",
    "evoens_run_loop",
    *PER_GENERATION,
    *PER_GENERATION,
    "evoens_summary",
    "evoens_run_end",
]


@pytest.mark.parametrize("trainer", ["evolution", "gradient"])
def test_exact_hook_order_of_a_two_generation_run(tmp_path: Any, trainer: str) -> None:
    plugin = RecordEverything()
    config = tiny_config(generations=2, trainer={"name": trainer, "popsize": 4})
    summary = run_inline(config, tmp_path, ("recorder", plugin))
    assert plugin.calls == EXPECTED
    assert summary["generations"] == 2


def test_every_hook_is_documented_and_recorded_by_the_test_plugin() -> None:
    for name in SPECS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc.split()) >= 8, f"{name} needs a docstring saying when it is called and what to return"
    assert set(EXPECTED) == set(SPECS), "the pinned order must cover every hook of the contract"


def test_monitor_sees_the_same_generation_phases(tmp_path: Any) -> None:
    pm = make_plugin_manager()
    recorder = HookRecorder(pm)
    from evoens.engine import execute

    execute(tiny_config(generations=1), tmp_path, pm)
    names = recorder.names()
    assert names[names.index("evoens_generation_start") :][: len(PER_GENERATION) - 2] == PER_GENERATION[:-2]


def test_a_plugin_can_replace_the_default_loop(tmp_path: Any) -> None:
    class OneShot:
        @hookimpl
        def evoens_run_loop(self, run: Any) -> dict[str, Any]:
            run.trainer.step(0)
            run.generation = 1
            return {"generations": 1, "best_fitness": -1.0, "replaced": True}

    summary = run_inline(tiny_config(generations=5), tmp_path, OneShot())
    assert summary["replaced"] is True and summary["generations"] == 1


def test_evaluate_is_firstresult_so_a_plugin_can_override_fitness(tmp_path: Any) -> None:
    import torch

    class ConstantFitness:
        @hookimpl(tryfirst=True)
        def evoens_evaluate(self, population: Any) -> torch.Tensor:
            return torch.arange(population.size, dtype=torch.float32)

    summary = run_inline(tiny_config(generations=2), tmp_path, ConstantFitness())
    assert summary["best_fitness"] == pytest.approx(7.0)  # popsize 8 -> best is 7


def test_wrapper_hooks_see_every_evaluation(tmp_path: Any) -> None:
    class Timer:
        def __init__(self) -> None:
            self.n = 0

        @hookimpl(wrapper=True)
        def evoens_evaluate(self) -> Any:
            self.n += 1
            return (yield)

    timer = Timer()
    run_inline(tiny_config(generations=3), tmp_path, timer)
    assert timer.n == 3


@pytest.mark.parametrize("trainer", ["evolution", "gradient"])
def test_statistics_returned_by_plugins_reach_the_reporters(tmp_path: Any, trainer: str) -> None:
    reported: list[dict[str, Any]] = []

    class Extra:
        @hookimpl
        def evoens_after_evaluate(self, generation: int, fitness: Any) -> dict[str, float]:
            return {"spread": float(fitness.max() - fitness.min()), "seen_generation": generation}

        @hookimpl
        def evoens_after_tell(self, stats: dict[str, Any]) -> dict[str, float]:
            return {"spread_twice": 2 * stats["spread"]}

        @hookimpl
        def evoens_report(self, stats: dict[str, Any]) -> None:
            reported.append(stats)

    run_inline(tiny_config(generations=2, trainer={"name": trainer}), tmp_path, Extra())
    assert [s["seen_generation"] for s in reported] == [0, 1]
    assert all(s["spread_twice"] == pytest.approx(2 * s["spread"]) for s in reported)
