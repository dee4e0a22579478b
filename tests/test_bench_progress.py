"""``evoens bench NAME``: the suite's estimated duration up front (its last recorded run in this
mode), a progress line per cell, a line when a suite is silent for long, and the run's wall time
recorded for the next estimate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from evoens import bench
from evoens.bench import BenchResult, cells, run_suite
from evoens.cli import build_parser

CPU = torch.device("cpu")


def _suite(quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
    rows = [{"P": P, "x": P * 2} for P in cells([16, 64, 256], lambda P: f"P={P}")]
    return BenchResult("grid", ["P", "x"], rows)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_estimate_up_front_then_a_line_per_cell_and_the_wall_time_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = run_suite(_suite, "grid", quick=True, out=tmp_path, device=CPU)
    first = _lines(capsys)
    assert first[0] == f"bench grid --quick: no earlier run recorded in {tmp_path} to estimate its duration from"
    assert [line.split(" (")[0] for line in first[1:]] == [
        "bench grid: cell 1/3 P=16", "bench grid: cell 2/3 P=64", "bench grid: cell 3/3 P=256",
    ]  # fmt: skip
    assert "about" in first[2] and "left)" in first[2]  # from the second cell on: the time left
    assert payload["rows"] == [{"P": 16, "x": 32}, {"P": 64, "x": 128}, {"P": 256, "x": 512}]
    seconds = json.loads((tmp_path / "grid.json").read_text())["wall_seconds"]
    assert isinstance(seconds, float) and seconds >= 0

    recorded = tmp_path / "grid.json"
    recorded.write_text(json.dumps({**json.loads(recorded.read_text()), "wall_seconds": 169.0}))
    run_suite(_suite, "grid", quick=True, out=tmp_path, device=CPU)
    assert _lines(capsys)[0] == f"bench grid --quick: about 2m49s (its last run took that: {recorded})"
    run_suite(_suite, "grid", quick=False, out=tmp_path / "full", device=CPU)  # another mode: no estimate
    assert _lines(capsys)[0].startswith("bench grid: no earlier run recorded")


def test_a_silent_suite_gets_a_still_running_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "HEARTBEAT_SECONDS", 0.5)

    def silent(quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
        time.sleep(2.5)
        return BenchResult("silent", ["a"], [{"a": 1}])

    run_suite(silent, "silent", quick=True, out=tmp_path, device=CPU)
    beats = [line for line in _lines(capsys) if line.startswith("bench silent: still running, ")]
    assert 2 <= len(beats) <= 5


def test_the_quick_flags_help_promises_no_fixed_time() -> None:
    bench_parser = build_parser()._subparsers._group_actions[0].choices["bench"]  # type: ignore[union-attr]
    (quick,) = [a for a in bench_parser._actions if a.dest == "quick"]
    assert "a minute or two" not in quick.help and "last recorded run" in quick.help
