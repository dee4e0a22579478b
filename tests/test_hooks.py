"""The contract: every hook documented, and the exact order of hook calls in a two-generation run."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from evoens import hookimpl, hookspecs
from evoens.testing import HookRecorder, make_plugin_manager, run_inline, tiny_config, tiny_options

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
    "evoens_generation_end",
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


REGISTRY = make_plugin_manager(entry_points=True).registry  # the core and every installed plugin
# Trainer kinds that legitimately skip a per-generation hook (evoens/phases.py): none so far.
SKIPS: dict[str, set[str]] = {}


@pytest.mark.parametrize("trainer", REGISTRY.names("trainer"))
def test_exact_hook_order_of_a_two_generation_run(tmp_path: Any, trainer: str) -> None:
    plugin = RecordEverything()
    options = tiny_options(REGISTRY, "trainer", trainer)
    config = tiny_config(generations=2, trainer={"name": trainer, "popsize": 4, "options": options})
    summary = run_inline(config, tmp_path, ("recorder", plugin), entry_points=True)
    skipped = SKIPS.get(trainer, set())
    assert plugin.calls == [c for c in EXPECTED if c not in skipped]
    assert summary["generations"] == 2


def test_every_hook_is_documented_and_recorded_by_the_test_plugin() -> None:
    for name in SPECS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc.split()) >= 8, f"{name} needs a docstring saying when it is called and what to return"
    assert set(EXPECTED) == set(SPECS), "the pinned order must cover every hook of the contract"


def test_monitor_sees_every_hook_call_including_reports_and_providers(tmp_path: Any) -> None:
    """Every hook goes through pluggy, so hook-call monitoring (and EVOENS_TRACE_PLUGINS) sees all
    of them; only evoens_addhooks is over before a recorder can be attached."""
    pm = make_plugin_manager()
    recorder = HookRecorder(pm)
    from evoens.engine import execute

    execute(tiny_config(generations=2), tmp_path, pm)
    assert recorder.names() == [n for n in EXPECTED if n != "evoens_addhooks"]


def test_a_plugin_can_replace_the_default_loop(tmp_path: Any) -> None:
    class OneShot:
        @hookimpl
        def evoens_run_loop(self, run: Any) -> dict[str, Any]:
            from evoens.engine import run_generation

            run_generation(run, 0)  # one generation, every phase in order
            assert run.generation == 1
            return {"generations": 1, "best_fitness": -1.0, "replaced": True}

    summary = run_inline(tiny_config(generations=5), tmp_path, OneShot())
    assert summary["replaced"] is True and summary["generations"] == 1


def test_evaluate_is_firstresult_so_a_plugin_can_override_fitness(tmp_path: Any) -> None:
    import torch

    class ConstantFitness:
        @hookimpl(tryfirst=True)
        def evoens_evaluate(self, candidates: Any) -> torch.Tensor:
            return torch.arange(candidates.size, dtype=torch.float32)

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


@pytest.mark.parametrize("trainer", REGISTRY.names("trainer"))
def test_after_evaluate_sees_exactly_the_outputs_the_fitness_came_from(tmp_path: Any, trainer: str) -> None:
    import torch

    from evoens.fitness import neg_cross_entropy

    seen: list[tuple[Any, Any]] = []

    class Spy:
        @hookimpl(wrapper=True)
        def evoens_evaluate(self, batch: Any) -> Any:
            evaluation = yield
            seen.append((evaluation, batch))
            return evaluation

        @hookimpl
        def evoens_after_evaluate(self, candidates: Any, fitness: Any, outputs: Any) -> None:
            evaluation, (x, y) = seen[-1]
            assert len(outputs) == len(candidates.species) and all(
                torch.equal(a, b) for a, b in zip(outputs, evaluation.outputs)
            )
            torch.testing.assert_close(fitness, neg_cross_entropy(candidates.gather(outputs), y))
            assert torch.equal(candidates.gather(outputs), candidates.logits(x))  # no other forward differs
            seen.append(("checked", None))

    options = tiny_options(REGISTRY, "trainer", trainer)
    config = tiny_config(generations=2, trainer={"name": trainer, "popsize": 4, "options": options})
    run_inline(config, tmp_path, Spy(), entry_points=True)
    assert sum(1 for s in seen if s[0] == "checked") >= 2


def test_report_hooks_run_through_pluggy_in_tryfirst_trylast_order_and_can_be_wrapped(tmp_path: Any) -> None:
    calls: list[str] = []

    class Early:
        @hookimpl(tryfirst=True)
        def evoens_report(self, generation: int) -> None:
            calls.append(f"first{generation}")

    class Late:
        @hookimpl(trylast=True)
        def evoens_report(self, generation: int) -> None:
            calls.append(f"last{generation}")

    class Wrap:
        @hookimpl(wrapper=True)
        def evoens_report(self, generation: int) -> Any:
            calls.append(f"enter{generation}")
            result = yield
            calls.append(f"exit{generation}")
            return result

    run_inline(tiny_config(generations=2), tmp_path, Late(), Early(), Wrap())
    assert calls == ["enter0", "first0", "last0", "exit0", "enter1", "first1", "last1", "exit1"]


def test_a_failing_report_hook_is_named_once_and_costs_only_its_own_output(tmp_path: Any) -> None:
    reached: list[int] = []

    class Broken:
        @hookimpl(tryfirst=True)
        def evoens_report(self) -> None:
            raise RuntimeError("no ink")

    class Fine:
        @hookimpl
        def evoens_report(self, generation: int) -> None:
            reached.append(generation)

    summary = run_inline(tiny_config(generations=3), tmp_path, ("broken", Broken()), Fine())
    assert reached == [0, 1, 2] and summary["status"] == "finished"
    assert summary["reporter_errors"] == ["broken: RuntimeError('no ink')"]


def test_register_providers_runs_through_pluggy_so_a_wrapper_can_edit_the_list() -> None:
    from evoens import Provider

    class Extra:
        @hookimpl
        def evoens_register_providers(self) -> list[Provider]:
            return [Provider("fitness", "zero", lambda: None, "always zero")]

    class Hide:
        @hookimpl(wrapper=True)
        def evoens_register_providers(self) -> Any:
            lists = yield
            return [[p for p in provided if p.name != "accuracy"] for provided in lists]

    pm = make_plugin_manager(("extra", Extra()), ("hide", Hide()))
    recorder = HookRecorder(pm)
    registry = pm.registry
    assert registry.get("fitness", "zero").plugin == "extra"  # tagged with the plugin that registered it
    assert "accuracy" not in registry.names("fitness") and "neg_mse" in registry.names("fitness")
    assert recorder.names() == ["evoens_register_providers"]


class Stateless:
    """The rest of a trainer (evoens.kinds.Trainer) for the broken ones below: never reached."""

    def candidates(self) -> Any:
        raise AssertionError("not reached")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def test_a_trainer_that_never_evaluates_is_an_error_naming_it(tmp_path: Any) -> None:
    from evoens import Provider
    from evoens.errors import PluginError

    class Lazy(Stateless):
        def step(self, generation: int, evaluate: Any) -> dict[str, Any]:
            return {"best_fitness": 0.0}

    class Plugin:
        @hookimpl
        def evoens_register_providers(self) -> list[Provider]:
            return [Provider("trainer", "lazy", lambda run, options: Lazy(), "never evaluates")]

    with pytest.raises(PluginError, match="trainer 'lazy' finished generation 0 without evaluating"):
        run_inline(tiny_config(generations=1, trainer={"name": "lazy"}), tmp_path, Plugin())


def test_a_failing_trainer_step_names_the_trainer_and_its_plugin(tmp_path: Any) -> None:
    import json

    from evoens import Provider
    from evoens.errors import PluginError

    class Broken(Stateless):
        def step(self, generation: int, evaluate: Any) -> dict[str, Any]:
            raise ZeroDivisionError("oops")

    class Plugin:
        @hookimpl
        def evoens_register_providers(self) -> list[Provider]:
            return [Provider("trainer", "broken", lambda run, options: Broken(), "raises")]

    with pytest.raises(PluginError, match=r"trainer 'broken' \(plugin 'mine'\) failed in step at generation 0: Zero"):
        run_inline(tiny_config(generations=1, trainer={"name": "broken"}), tmp_path, ("mine", Plugin()))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_a_run_without_a_loop_provider_is_an_error(tmp_path: Any) -> None:
    from evoens.errors import PluginError

    with pytest.raises(PluginError, match="no plugin provides evoens_run_loop"):
        run_inline(tiny_config(), tmp_path, disable=["loop"])
