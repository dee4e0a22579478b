"""The progress line of a run whose stderr is not a terminal (a batch job, a CI log)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from evoens.builtins import reporters
from evoens.builtins.reporters import LogReporter
from evoens.testing import run_inline, tiny_config

LINE = re.compile(
    r"^evoens (?P<name>\S+): generation (?P<done>\d+)/(?P<total>\d+)  best_fitness (?P<best>\S+)  "
    r"(?P<rate>[\d.e+-]+) gen/s  ETA (?P<eta>\S+)$"
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_after_the_first_generation_then_every_n_seconds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    monkeypatch.setattr(reporters.time, "monotonic", clock)
    log = LogReporter(total=100, initial=0, every=30.0, name="demo")
    for generation in range(40):
        clock.now += 2.0  # 0.5 generations per second
        log.report(generation, {"best_fitness": -0.5 + generation / 100})
    lines = capsys.readouterr().err.splitlines()
    # after generation 1 (t=2 s), then at t=32 s (generation 16) and t=62 s (generation 31)
    assert [LINE.match(line)["done"] for line in lines] == ["1", "16", "31"]  # type: ignore[index]
    last = LINE.match(lines[-1])
    assert last is not None and last["name"] == "demo" and last["total"] == "100"
    assert float(last["rate"]) == pytest.approx(0.5) and last["eta"] == "2m18s"  # 69 generations left
    assert float(last["best"]) == pytest.approx(-0.2)


def test_a_resumed_run_counts_its_rate_from_where_it_resumed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    monkeypatch.setattr(reporters.time, "monotonic", clock)
    log = LogReporter(total=1000, initial=500, every=30.0, name="run")
    clock.now += 4.0
    log.report(500, {"best_fitness": 1.0})
    line = LINE.match(capsys.readouterr().err.strip())
    assert line is not None and line["done"] == "501" and float(line["rate"]) == pytest.approx(0.25)
    assert line["eta"] == "33m16s"


@pytest.mark.parametrize(("seconds", "expected"), [(1e-9, 3), (30.0, 1)])
def test_a_run_without_a_terminal_logs_progress_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], seconds: float, expected: int
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    config = tiny_config(generations=3, progress_seconds=seconds)
    run_inline(config, tmp_path / "batchjob")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evoens batchjob:")]
    assert len(lines) == expected and all(LINE.match(line) for line in lines)
    assert LINE.match(lines[0])["done"] == "1"  # type: ignore[index]


def test_progress_seconds_0_turns_the_line_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    run_inline(tiny_config(generations=2, progress_seconds=0), tmp_path / "quiet")
    assert "generation 1/2" not in capsys.readouterr().err
