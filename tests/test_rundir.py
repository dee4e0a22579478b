"""Run directories are never mixed or overwritten, one process writes one at a time, and resume
says what it does: refuses what cannot apply, records what it honours, verifies checksums."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from evoens import rundir
from evoens.checkpoint import checksum
from evoens.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
seed = 1
generations = {generations}
eval_every = 2
reporters = ["jsonl"]
progress_seconds = 0
[data]
name = "digits"
batch_size = 128
[model]
hidden = [8]
[trainer]
searcher = "snes"
popsize = 8
strategy = "bmm"
[checkpoint]
every = {every}
keep = 3
"""
HOLDER = """
import os, time
from evoens import hookimpl

@hookimpl
def evoens_generation_start(generation):
    if generation == int(os.environ.get("HOLD_AT", "-1")):
        open(os.environ["HOLD_READY"], "w").close()
        time.sleep(120)
"""
COMPARED = ("best_fitness", "test_accuracy", "val_accuracy", "generations", "final_stats", "selected")


def _config(tmp_path: Path, generations: int = 4, every: int = 1, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(CONFIG.format(generations=generations, every=every))
    return path


def _summary(out: Path) -> dict[str, Any]:
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary[k] for k in COMPARED}


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted 6-generation run."""
    tmp = tmp_path_factory.mktemp("reference")
    assert main(["run", str(_config(tmp, generations=6)), "--out", str(tmp / "ref")]) == 0
    return _summary(tmp / "ref")


# --- run directories are never mixed or overwritten ---------------------------------------


def test_a_second_run_into_a_run_directory_is_refused_and_overwrite_moves_the_old_one_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, out = _config(tmp_path, generations=2), tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert f"{out} already holds a run (finished at generation 2" in line
    assert f"evoens resume {out}" in line and "--out" in line and "--overwrite" in line
    assert _snapshot(out) == before  # untouched: no doubled metrics, no newer checkpoints

    assert main(["run", str(config), "--out", str(out), "--overwrite"]) == 0
    (aside,) = tmp_path.glob("out.old-*")
    assert _snapshot(aside) == before  # moved, never deleted
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (out / rundir.LOCK_NAME).exists() and not (aside / rundir.LOCK_NAME).exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [("trainer.popsze=3", "trainer.popsze"), ("data.name=nosuch", "nosuch"), ("model.name=nosuch", "nosuch")],
)
def test_a_failed_start_up_never_touches_a_run_and_leaves_no_directory_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    config, out = _config(tmp_path, generations=1), tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out), "--overwrite", "--set", override]) == 2
    assert message in _error_line(capsys)
    assert _snapshot(out) == before and not list(tmp_path.glob("out.old-*"))

    fresh = tmp_path / "new" / "deeper"
    assert main(["run", str(config), "--out", str(fresh), "--set", override]) == 2
    assert not (tmp_path / "new").exists()  # not even an empty folder or a lone config.toml


# --- one process per run directory ----------------------------------------------------------


def test_a_lock_is_exclusive_and_a_stale_one_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with rundir.RunLock.acquire(tmp_path, "resume") as lock:
        with pytest.raises(rundir.RunDirLocked, match=rf"in use by pid {os.getpid()} on host .* `evoens resume`"):
            rundir.RunLock.acquire(tmp_path)
        assert lock.info["host"] == socket.gethostname()
    assert not (tmp_path / rundir.LOCK_NAME).exists()  # released and removed
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "2026-01-01T00:00:00Z"}
    (tmp_path / rundir.LOCK_NAME).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="evoens"), rundir.RunLock.acquire(tmp_path) as lock:
        assert lock.info["pid"] == os.getpid()
    assert f"taking over the stale lock of {tmp_path}: pid {stale['pid']}" in caplog.text


def test_a_running_process_holds_its_directory_and_a_killed_ones_lock_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, reference: dict[str, Any]
) -> None:
    config, out, ready = _config(tmp_path, generations=6), tmp_path / "out", tmp_path / "ready"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "holder.py").write_text(HOLDER)
    env = {**os.environ, "HOLD_AT": "2", "HOLD_READY": str(ready)}
    cmd = [sys.executable, "-m", "evoens", "run", str(config), "--out", str(out), "--plugins-dir", str(plugins)]
    holder = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the holding run did not start"
            time.sleep(0.1)
        capsys.readouterr()
        assert main(["resume", str(out)]) == 2
        line = _error_line(capsys)
        assert f"{out} is in use by pid {holder.pid} on host {socket.gethostname()} since " in line
        assert main(["run", str(config), "--out", str(out), "--overwrite"]) == 2  # not moved aside either
        assert f"in use by pid {holder.pid}" in _error_line(capsys)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="evoens"):
        assert main(["resume", str(out)]) == 0
    assert f"taking over the stale lock of {out}: pid {holder.pid}" in caplog.text
    assert _summary(out) == reference
    assert not (out / rundir.LOCK_NAME).exists()


# --- resume says what it does ---------------------------------------------------------------


def test_resume_of_a_finished_run_or_below_its_checkpoint_has_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path, generations=3)), "--out", str(out)]) == 0
    before = _snapshot(out)
    for extra in ([], ["--set", "generations=2"], ["--set", "generations=3"]):
        capsys.readouterr()
        assert main(["resume", str(out), *extra]) == 0
        (line,) = capsys.readouterr().out.strip().splitlines()
        assert line.startswith(f"nothing to do: {out} finished at generation 3") and "summary.json is unchanged" in line
        assert _snapshot(out) == before
    (out / "summary.json").unlink()  # as after kill -9: only the checkpoint says how far it got
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["resume", str(out), "--set", "generations=2"]) == 0
    assert f"the newest checkpoint of {out} is at generation 3, at or past generations = 2" in capsys.readouterr().out
    assert _snapshot(out) == before


def test_overrides_that_apply_are_honoured_and_recorded(tmp_path: Path, reference: dict[str, Any]) -> None:
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path, generations=4, every=0)), "--out", str(out)]) == 0
    sets = ["--set", "generations=6", "--set", "eval_every=3", "--set", "checkpoint.keep=5"]
    assert main(["resume", str(out), *sets]) == 0
    recorded = (out / "config.toml").read_text()
    assert "generations = 6" in recorded and "eval_every = 3" in recorded and "keep = 5" in recorded
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["generations"] == 6
    assert (summary["best_fitness"], summary["final_stats"]) == (reference["best_fitness"], reference["final_stats"])
    assert main(["resume", str(out)]) == 0  # a later plain resume knows the new target: nothing to do


@pytest.mark.parametrize(
    ("override", "key"),
    [("trainer.popsize=16", "trainer.popsize"), ("trainer.searcher=pgpe", "trainer.searcher"),
     ("trainer.name=gradient", "trainer.name"), ("model.hidden=[16]", "model.hidden"), ("seed=7", "seed"),
     ("data.name=mnist1d", "data.name")],
)  # fmt: skip
def test_overrides_that_cannot_apply_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, key: str
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path, generations=2)), "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["resume", str(out), "--set", "generations=4", "--set", override]) == 2
    line = _error_line(capsys)
    assert f"{key} cannot change on resume" in line and "the checkpoint" in line
    assert _snapshot(out) == before


def test_a_checkpoint_that_does_not_match_the_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path, generations=2)), "--out", str(out)]) == 0
    for old, new, key in [("hidden = [8]", "hidden = [16]", "model.hidden"),
                          ('searcher = "snes"', 'searcher = "xnes"', "trainer.searcher")]:  # fmt: skip
        text = (out / "config.toml").read_text()
        (out / "config.toml").write_text(text.replace(old, new).replace("generations = 2", "generations = 4"))
        capsys.readouterr()
        assert main(["resume", str(out)]) == 2
        line = _error_line(capsys)
        assert "does not match the run's config" in line and f"written with {key} = " in line
        (out / "config.toml").write_text(text)
    assert json.loads((out / "summary.json").read_text())["generations"] == 2


def _resume_after(tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture) -> Path:
    """A finished 4-generation run whose newest checkpoint is damaged, extended to 6."""
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path, generations=4)), "--out", str(out)]) == 0
    newest = out / "checkpoints" / "gen-000004.pt"
    damage(newest)
    with caplog.at_level(logging.WARNING, logger="evoens"):
        assert main(["resume", str(out), "--set", "generations=6"]) == 0
    return newest


def test_a_readable_checkpoint_with_missing_keys_falls_back_to_the_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reference: dict[str, Any]
) -> None:
    def drop_batcher(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        del state["batcher"]
        state["checksum"] = checksum(state)  # a consistent file, only incomplete
        torch.save(state, path)

    newest = _resume_after(tmp_path, drop_batcher, caplog)
    assert f"checkpoint {newest} lacks 'batcher'; trying the previous checkpoint" in caplog.text
    assert _summary(tmp_path / "out") == reference


def test_eight_flipped_bytes_in_a_tensor_fail_the_checksum_and_the_previous_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reference: dict[str, Any]
) -> None:
    def flip(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:  # torch.save's zip stores tensor data uncompressed
            entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        name_len = int.from_bytes(raw[entry.header_offset + 26 : entry.header_offset + 28], "little")
        extra_len = int.from_bytes(raw[entry.header_offset + 28 : entry.header_offset + 30], "little")
        start = entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2
        raw[start : start + 8] = bytes(b ^ 0xFF for b in raw[start : start + 8])
        path.write_bytes(bytes(raw))
        torch.load(path, weights_only=True)  # still loads: only the checksum can tell

    newest = _resume_after(tmp_path, flip, caplog)
    assert f"checkpoint {newest} fails its checksum" in caplog.text
    assert _summary(tmp_path / "out") == reference


def test_every_0_checkpoints_only_at_the_end_and_the_run_can_be_extended(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path, generations=4, every=0)), "--out", str(out)]) == 0
    assert [p.name for p in rundir.checkpoint_files(out)] == ["gen-000004.pt"]
    assert main(["resume", str(out), "--set", "generations=6"]) == 0
    assert _summary(out) == reference


def test_the_quick_start_can_be_extended_as_the_readme_says(tmp_path: Path) -> None:
    example = REPO / "examples" / "quickstart.toml"
    assert "[checkpoint]" in example.read_text()
    out = tmp_path / "quickstart"
    fast = ["--set", "generations=3", "--set", 'reporters=["jsonl"]', "--set", "progress_seconds=0"]
    assert main(["run", str(example), "--out", str(out), *fast]) == 0
    assert main(["resume", str(out), "--set", "generations=5"]) == 0
    assert json.loads((out / "summary.json").read_text())["generations"] == 5


def test_the_ray_table_may_change_on_resume() -> None:
    """A re-queued job resumes on another cluster: ray.address and the actors' resources are not
    part of the checkpointed state (tests/test_ray_actors.py checks the results do not change)."""
    from evoens.config import config_from_dict
    from evoens.rundir import frozen_settings

    config = config_from_dict({"ray": {"address": "10.0.0.1:6379"}})
    assert not any(key.startswith("ray") for key in frozen_settings(config))
