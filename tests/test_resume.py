"""Checkpoints and resume: a run killed at any point and resumed ends exactly like one that was
never interrupted (same seed, CPU); SIGTERM checkpoints and stops cleanly; a corrupted newest
checkpoint falls back to the previous one."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from evoens.checkpoint import load, object_state, restore_object
from evoens.cli import main

CONFIG = """
seed = 3
generations = 6
eval_every = 2
reporters = ["jsonl"]
progress_seconds = 0
[data]
name = "digits"
batch_size = 200
[model]
hidden = [8]
[trainer]
name = "{trainer}"
searcher = "{searcher}"
popsize = 8
strategy = "bmm"
[checkpoint]
every = 1
keep = 3
"""
KILLER = """
import os, signal
from evoens import hookimpl

def _maybe(hook, generation):
    if os.environ.get("KILL_HOOK") == hook and int(os.environ["KILL_AT"]) == generation:
        os.kill(os.getpid(), getattr(signal, os.environ["KILL_SIGNAL"]))

@hookimpl
def evoens_after_ask(generation):
    _maybe("after_ask", generation)

@hookimpl(tryfirst=True)
def evoens_report(generation):
    _maybe("report", generation)
"""
COMPARED = ("best_fitness", "test_accuracy", "val_accuracy", "generations", "final_stats", "selected")


def _setup(tmp_path: Path, trainer: str, searcher: str = "pgpe") -> tuple[Path, Path]:
    (tmp_path / "run.toml").write_text(CONFIG.format(trainer=trainer, searcher=searcher))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "killer.py").write_text(KILLER)
    return tmp_path / "run.toml", plugins


def _summary(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: summary[k] for k in COMPARED}


def _run_killed(config: Path, plugins: Path, out: Path, hook: str, at: int, sig: str) -> int:
    env = {**os.environ, "KILL_HOOK": hook, "KILL_AT": str(at), "KILL_SIGNAL": sig}
    cmd = [sys.executable, "-m", "evoens", "run", str(config), "--out", str(out), "--plugins-dir", str(plugins)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True).returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    found = {}
    for trainer in ("evolution", "gradient"):
        tmp = tmp_path_factory.mktemp(trainer)
        config, _ = _setup(tmp, trainer)
        assert main(["run", str(config), "--out", str(tmp / "ref")]) == 0
        found[trainer] = _summary(tmp / "ref")
    return found


SLOW = pytest.mark.slow  # the default suite kills each trainer at one place; tox -e slow at both


@pytest.mark.parametrize(
    ("trainer", "hook", "at"),
    [
        ("evolution", "after_ask", 2),
        ("gradient", "report", 4),
        pytest.param("evolution", "report", 4, marks=SLOW),
        pytest.param("gradient", "after_ask", 2, marks=SLOW),
    ],
)
def test_resume_after_kill_9_equals_an_uninterrupted_run(
    tmp_path: Path, reference: dict[str, Any], trainer: str, hook: str, at: int
) -> None:
    config, plugins = _setup(tmp_path, trainer)
    out = tmp_path / "killed"
    assert _run_killed(config, plugins, out, hook, at, "SIGKILL") == -9
    assert not (out / "summary.json").exists()
    assert main(["resume", str(out)]) == 0
    assert _summary(out) == reference[trainer]
    generations = [json.loads(line)["generation"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert generations == list(range(6))


def test_sigterm_checkpoints_stops_and_resumes_exactly(tmp_path: Path, reference: dict[str, Any]) -> None:
    config, plugins = _setup(tmp_path, "evolution")
    out = tmp_path / "stopped"
    assert _run_killed(config, plugins, out, "after_ask", 3, "SIGTERM") == 143  # 128 + SIGTERM
    assert not (out / ".evoens.lock").exists()  # released on this exit path too
    stopped = json.loads((out / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGTERM" and stopped["generations"] == 4
    assert main(["resume", str(out)]) == 0
    assert _summary(out) == reference["evolution"]


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, reference: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    config, plugins = _setup(tmp_path, "evolution")
    out = tmp_path / "corrupt"
    assert _run_killed(config, plugins, out, "after_ask", 4, "SIGKILL") == -9
    newest = sorted((out / "checkpoints").glob("gen-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    assert main(["resume", str(out)]) == 0
    assert f"checkpoint {newest} cannot be read" in caplog.text
    assert _summary(out) == reference["evolution"]


def test_checkpoints_load_with_weights_only_and_are_pruned(tmp_path: Path, reference: dict[str, Any]) -> None:
    config, _ = _setup(tmp_path, "evolution")
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 0
    paths = sorted((tmp_path / "r" / "checkpoints").glob("gen-*.pt"))
    assert [p.name for p in paths] == ["gen-000004.pt", "gen-000005.pt", "gen-000006.pt"]  # keep = 3
    state = load(paths[-1])  # torch.load(weights_only=True) inside
    assert state["generation"] == 6 and set(state) >= {"trainer", "batcher", "rng", "best_fitness"}


def test_resume_without_checkpoints_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.toml").write_text("")
    assert main(["resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no checkpoints" in err


def test_the_command_a_run_without_checkpoints_suggests_starts_it_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that failed before its first checkpoint: resume says how to start over, and that works."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.toml").write_text('generations = 2\nreporters = []\n[model]\nhidden = [8]\n[trainer]\npopsize = 8\n')
    (run / "summary.json").write_text('{"status": "failed", "generations": 0}')
    assert main(["resume", str(run)]) == 2
    command = capsys.readouterr().err.split("`")[1].split()
    assert command[:2] == ["evoens", "run"] and command[-1] == "--overwrite"
    assert main(command[1:]) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("searcher", ["snes", "xnes", "cmaes", "cem", "ga"])
def test_every_searcher_resumes_exactly(tmp_path: Path, searcher: str) -> None:
    config, plugins = _setup(tmp_path, "evolution", searcher)
    assert main(["run", str(config), "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "killed"
    assert _run_killed(config, plugins, out, "after_ask", 3, "SIGKILL") == -9
    assert main(["resume", str(out)]) == 0
    assert _summary(out) == _summary(tmp_path / "ref")


def test_object_state_is_plain_data_and_round_trips() -> None:
    from evoens.builtins.searchers import evoens_register_providers
    from evoens.evolution import PopulationProblem
    from evoens.fitness import neg_cross_entropy

    template = torch.nn.Linear(4, 3)
    batch = (torch.randn(16, 4), torch.randint(0, 3, (16,)))
    for provider in evoens_register_providers():
        searchers = []
        for steps in (3, 1):
            problem = PopulationProblem(template, neg_cross_entropy, seed=1)
            problem.batch = batch
            searcher = provider.factory(problem, 8, {}, torch.zeros(15))
            for _ in range(steps):
                searcher.step()
            searchers.append(searcher)
        a, b = searchers
        buffer = io.BytesIO()
        torch.save(object_state(a), buffer)
        saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        restore_object(b, saved)
        assert _tensors(object_state(b)) == _tensors(saved), provider.name


def _tensors(state: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else []
    for key, value in items:
        if isinstance(value, torch.Tensor):
            found[f"{prefix}{key}"] = (tuple(value.shape), value.flatten().tolist())
        elif isinstance(value, (dict, list)):
            found.update(_tensors(value, f"{prefix}{key}."))
    return found
