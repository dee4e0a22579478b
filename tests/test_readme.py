"""The README's promises kept: its example trainer plugin runs as written, with the hook order of
every other trainer."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from evoens.testing import run_inline, tiny_config

README = (Path(__file__).parent.parent / "README.md").read_text()


def _block_defining(name: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    return next(b for b in blocks if f"class {name}" in b)


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
