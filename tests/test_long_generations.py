"""Long generations: a signal takes effect within seconds, not after the generation (between the
chunks of the population forward, and by a timer for work inside one chunk), dropping that
generation so the run resumes exactly; a first generation that will plainly take long says so
up front with its measured cost and the keys that make it shorter; the ``threads`` setting holds
however a run is started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from evoens import hookimpl
from evoens.builtins import reporters
from evoens.cli import main
from evoens.rundir import checkpoint_files
from evoens.testing import run_inline, tiny_config

CONFIG = """
seed = 5
generations = 4
eval_every = 2
reporters = ["jsonl"]
progress_seconds = 0
[data]
name = "digits"
batch_size = 64
[model]
name = "sleepy"
[trainer]
searcher = "snes"
popsize = 40
strategy = "loop"
max_chunk = 1
[checkpoint]
every = 1
"""
# A model whose forward sleeps from generation 1 on when SLEEP_S is set: SLEEP_S per chunk (one
# member per chunk: 40 x SLEEP_S per generation), or all in one chunk with SLEEP_ONCE.
SLEEPY = """
import os, time
from pathlib import Path
from torch import nn
from evoens import Provider, hookimpl

ACTIVE = [False]

class Sleepy(nn.Module):
    def forward(self, x):
        if ACTIVE[0]:
            time.sleep(float(os.environ["SLEEP_S"]))
        return x

@hookimpl
def evoens_generation_start(generation):
    if generation == 1 and os.environ.get("SLEEP_S"):
        ACTIVE[0] = True
        Path(os.environ["READY"]).touch()

@hookimpl
def evoens_register_providers():
    yield Provider("model", "sleepy", lambda shape, classes, cfg: nn.Sequential(
        Sleepy(), nn.Flatten(), nn.Linear(64, classes)))
"""
COMPARED = ("status", "best_fitness", "test_accuracy", "val_accuracy", "generations", "final_stats", "selected")


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "sleepy.py").write_text(SLEEPY)
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    return config, plugins


def _summary(out: Path) -> dict[str, Any]:
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary.get(k) for k in COMPARED}


@pytest.mark.parametrize(
    ("how", "sleep_s", "within_s"),
    [("between chunks", 1.0, 2.0), pytest.param("inside a chunk", 120, 4.0, marks=pytest.mark.slow)],
)
def test_sigterm_during_a_long_generation_stops_within_seconds_and_resumes_exactly(
    tmp_path: Path, setup: tuple[Path, Path], how: str, sleep_s: float, within_s: float
) -> None:
    config, plugins = setup
    ref, out, ready = tmp_path / "ref", tmp_path / "out", tmp_path / "ready"
    assert main(["run", str(config), "--out", str(ref), "--plugins-dir", str(plugins)]) == 0
    if how == "inside a chunk":  # one chunk of all members, sleeping 120 s: only the timer can stop it
        config.write_text(CONFIG.replace("max_chunk = 1", "max_chunk = 40"))
    env = {**os.environ, "SLEEP_S": str(sleep_s), "READY": str(ready)}
    cmd = [sys.executable, "-m", "evoens", "run", str(config), "--out", str(out), "--plugins-dir", str(plugins)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():  # generation 1 has begun: it would take 40 s (40 x 1) or 120 s
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 143, stderr
    # the grace period (2 s between chunks, 4 s by the timer) and one sleep, not the rest of the generation
    # (40 s between chunks, 120 s inside one): bounded by half of it, so a loaded machine cannot fail it
    generation_s = 40 * sleep_s if how == "between chunks" else sleep_s
    assert took < generation_s / 2, took
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"evoens: interrupted: SIGTERM stopped after {within_s:g} s generation 1, whose work")
    assert f"`evoens resume {out}` continues at generation 1 (its newest checkpoint)" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM" and summary["generations"] == 1
    assert [p.name for p in checkpoint_files(out)] == ["gen-000001.pt"]
    assert main(["resume", str(out), "--plugins-dir", str(plugins)]) == 0  # generation 1 runs again, whole
    assert _summary(out) == _summary(ref)
    generations = [json.loads(row)["generation"] for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert generations == [0, 1, 2, 3]


def test_a_first_generation_that_will_take_long_says_so_once_with_the_keys_to_lower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(generations=3, data={"batch_size": 64}, trainer={"max_chunk": 2, "strategy": "bmm"})
    run_inline(config, tmp_path / "short")
    assert "will take long" not in capsys.readouterr().err  # a short one says nothing
    monkeypatch.setattr(reporters, "LONG_SECONDS", 0.0)  # every generation counts as long
    run_inline(config, tmp_path / "long")
    lines = [line for line in capsys.readouterr().err.splitlines() if "will take long" in line]
    assert len(lines) == 1  # the first generation only, once
    assert lines[0].startswith("evoens long: generation 0 will take long: one forward of the population ")
    assert "(8 members x 64 samples) runs 4 chunks of about " in lines[0]  # 8 members, 2 per chunk
    assert lines[0].endswith("lower data.batch_size (now 64) or trainer.popsize (now 8) to make it shorter")


def test_threads_hold_inside_a_run_started_from_python_and_are_restored_after(tmp_path: Path) -> None:
    seen: list[int] = []

    class Probe:
        @hookimpl
        def evoens_generation_start(self) -> None:
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    run_inline(tiny_config(threads=wanted), tmp_path / "out", Probe())
    assert seen == [wanted] * 3
    assert torch.get_num_threads() == before
