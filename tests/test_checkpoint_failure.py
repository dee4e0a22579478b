"""A checkpoint that cannot be written stops the run: exit code 1, one line naming the path and
the OS error, status "failed", the previous checkpoints intact, and `evoens resume` ends exactly
like an uninterrupted run once the cause is gone."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from evoens.cli import main

CONFIG = """
seed = 2
generations = 5
eval_every = 5
reporters = ["jsonl"]
progress_seconds = 0
[data]
name = "digits"
batch_size = 100
[model]
hidden = [8]
[trainer]
searcher = "snes"
popsize = 8
strategy = "bmm"
[checkpoint]
every = 1
keep = 5
"""
COMPARED = ("best_fitness", "test_accuracy", "val_accuracy", "generations", "final_stats", "selected")


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    (tmp_path / "run.toml").write_text(CONFIG)
    return tmp_path / "run.toml"


def test_an_unwritable_checkpoint_fails_the_run_and_resume_continues(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(config), "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "run"
    # A directory where the checkpoint of generation 3 will be written: a real OS error (root
    # ignores permission bits, so a read-only folder would not stop it).
    blocker = out / "checkpoints" / "gen-000003.pt"
    blocker.mkdir(parents=True)
    (blocker / "keep").write_text("x")
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evoens: error: cannot write the checkpoint of generation 3")
    assert "gen-000003.pt" in err[0] and "evoens resume" in err[0]
    summary = _summary(out)
    assert summary["status"] == "failed" and summary["generations"] == 3
    kept = sorted(p.name for p in (out / "checkpoints").glob("gen-*.pt") if p.is_file())
    assert kept == ["gen-000001.pt", "gen-000002.pt"]  # the previous ones intact
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]  # no debris
    assert not (out / ".evoens.lock").exists()  # the run directory's lock is released on failure too

    (blocker / "keep").unlink()
    blocker.rmdir()  # the cause is fixed
    assert main(["resume", str(out)]) == 0
    resumed, ref = _summary(out), _summary(tmp_path / "ref")
    assert resumed["status"] == "finished"
    assert {k: resumed[k] for k in COMPARED} == {k: ref[k] for k in COMPARED}


def test_a_full_disk_is_one_line_with_the_os_error(
    tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from evoens import checkpoint

    real_write = checkpoint.write_file

    def full_disk(path: Path, data: Any) -> None:
        if "gen-000002" in path.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() reports it: no file name
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "write_file", full_disk)
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in line and "gen-000002" in line
    assert _summary(tmp_path / "run")["status"] == "failed"
