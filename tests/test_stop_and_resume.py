"""A run that stops early ends with a checkpoint of its last generation, and the state plugins
keep in ``run.persisted`` (the watchdog's streak) travels in checkpoints: resuming such a run ends
exactly as the uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evoens.cli import main
from evoens.rundir import checkpoint_files

CONFIG = """
seed = 4
generations = {generations}
eval_every = 3
reporters = ["jsonl"]
progress_seconds = 0
[data]
name = "digits"
batch_size = 64
[model]
hidden = [8]
[trainer]
searcher = "snes"
popsize = 8
strategy = "bmm"
fitness = "{fitness}"
[checkpoint]
every = 0
[watchdog]
diverge_after = 4
"""
PLUGINS = {
    "stopper.py": """
from evoens import hookimpl

@hookimpl
def evoens_should_stop(generation):
    return True if generation == 1 else None  # early stopping after the second generation
""",
    "nanfit.py": """
import torch
from evoens import Provider, hookimpl

def nan_fitness(logits, y):
    return torch.full(logits.shape[:1], float("nan"), device=logits.device)  # (P,)

@hookimpl
def evoens_register_providers():
    yield Provider("fitness", "nan", lambda: nan_fitness, "NaN for every member")
""",
}
COMPARED = ("status", "best_fitness", "test_accuracy", "val_accuracy", "generations", "final_stats", "selected")


@pytest.fixture()
def plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, text in PLUGINS.items():
        (folder / name).write_text(text)
    return folder


def _config(tmp_path: Path, generations: int, fitness: str = "neg_cross_entropy") -> Path:
    path = tmp_path / f"{fitness}-{generations}.toml"
    path.write_text(CONFIG.format(generations=generations, fitness=fitness))
    return path


def _summary(out: Path, keys: tuple[str, ...] = COMPARED) -> dict[str, Any]:
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary.get(k) for k in keys}


def test_an_early_stopped_run_ends_with_a_checkpoint_and_resumes_exactly(tmp_path: Path, plugins: Path) -> None:
    config = _config(tmp_path, generations=5)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["run", str(config), "--out", str(ref), "--plugins-dir", str(plugins), "-p", "no:stopper"]) == 0
    assert main(["run", str(config), "--out", str(out), "--plugins-dir", str(plugins)]) == 0
    assert _summary(out, ("status", "generations")) == {"status": "finished", "generations": 2}
    # checkpoint.every = 0 writes one only at the end: here the end came early
    assert [p.name for p in checkpoint_files(out)] == ["gen-000002.pt"]
    assert main(["resume", str(out), "--plugins-dir", str(plugins), "-p", "no:stopper"]) == 0
    assert _summary(out) == _summary(ref)


def test_the_watchdogs_streak_is_checkpointed_so_a_resumed_run_diverges_where_the_whole_one_does(
    tmp_path: Path, plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, generations=9, fitness="nan")
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["run", str(config), "--out", str(ref), "--plugins-dir", str(plugins), "-p", "no:stopper"]) == 1
    whole = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no member had a finite fitness in generations 0-3 (4 in a row" in whole
    assert main(["run", str(config), "--out", str(out), "--plugins-dir", str(plugins)]) == 0  # stops after 2 of 4
    assert main(["resume", str(out), "--plugins-dir", str(plugins), "-p", "no:stopper"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == whole.replace(str(ref), str(out))
    keys = ("status", "generations", "error")
    expected = _summary(ref, keys)
    assert _summary(out, keys) == {**expected, "error": expected["error"].replace(str(ref), str(out))}
