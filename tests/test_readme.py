"""The README's promises kept: its example trainer and dataset plugins run as written, and its hook
tables list every hook of the contract."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from evoens import Provider, hookimpl, hookspecs
from evoens.testing import run_inline, tiny_config

README = (Path(__file__).parent.parent / "README.md").read_text()


def _block_defining(name: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    return next(b for b in blocks if f"class {name}" in b or f"def {name}(" in b)


def test_the_readme_trainer_example_runs_as_a_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = types.ModuleType("readme_trainer")
    monkeypatch.setitem(sys.modules, "readme_trainer", plugin)  # dataclasses look their module up
    exec(compile(_block_defining("HillClimber"), "README.md", "exec"), plugin.__dict__)  # noqa: S102
    trainer = {"name": "hill_climb", "popsize": 8, "options": {"sigma": 0.05}}
    config = tiny_config(generations=6, data={"batch_size": 0}, trainer=trainer)  # one batch: elitism shows
    summary = run_inline(config, tmp_path, ("readme_trainer", plugin))
    assert summary["status"] == "finished" and summary["selected"] == "elite"
    finals = summary["final_stats"]
    assert finals["best_fitness"] >= summary["best_fitness"] - 1e-6  # elitism: the best is never lost
    assert 0.0 <= summary["test_accuracy"] <= 1.0


def test_the_readme_dataset_example_runs_as_a_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("readme_dataset")
    monkeypatch.setitem(sys.modules, "readme_dataset", module)
    exec(compile(_block_defining("load_my_splits"), "README.md", "exec"), module.__dict__)  # noqa: S102

    class Plugin:
        @hookimpl
        def evoens_register_providers(self) -> list[Provider]:
            return [Provider("dataset", "my_data", module.load_my_splits, "xor", options=module.MyDataOptions)]

    data = {"name": "my_data", "batch_size": 64, "options": {"n_samples": 400}}
    summary = run_inline(tiny_config(generations=2, data=data), tmp_path, ("readme_dataset", Plugin()))
    assert summary["status"] == "finished" and 0.0 <= summary["test_accuracy"] <= 1.0


def test_the_readme_hook_tables_list_every_hook() -> None:
    table = "\n".join(line for line in README.splitlines() if line.startswith("| "))
    rows = set(re.findall(r"`(evoens_\w+)`", table))
    specs = {name for name in dir(hookspecs) if name.startswith("evoens_")}
    assert specs <= rows, sorted(specs - rows)
