"""``evoens bench NAME``: the suite's estimated duration up front (its last recorded run in this
mode, in --out or the committed results), a progress line per part and per cell, a line when a
suite is silent for long, and the run's wall time recorded for the next estimate."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from evoens_benchmarks.hooks import SUITES

from evoens import bench
from evoens.bench import BenchResult, cells, part, recorded_seconds, run_suite
from evoens.cli import build_parser
from evoens.manager import create_plugin_manager

CPU = torch.device("cpu")
MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
READS_MNIST_FIRST = {"binary_mnist", "morph"}  # quick mode loads MNIST before the first cell


@pytest.fixture(autouse=True)
def _no_sgemm_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's peak measurement is not what these tests check (seconds on a loaded machine)."""
    monkeypatch.setattr(bench, "sgemm_peak", lambda device, n=2048: 1.0)


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
    where = f"{tmp_path} or {bench.COMMITTED_RESULTS}"
    assert first[0] == f"bench grid --quick: no earlier run recorded in {where} to estimate its duration from"
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


def _parted(quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
    with part("b wide"):
        inside = list(cells([1, 2], lambda x: f"x={x}"))
    return BenchResult("parted", ["x"], [{"x": x} for x in [*inside, *cells([3])]])


def test_a_part_says_where_the_suite_is_and_names_the_cells_inside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "parted.json").write_text(json.dumps({"quick": True, "wall_seconds": 169.0}))
    run_suite(_parted, "parted", quick=True, out=tmp_path, device=CPU)
    lines = _lines(capsys)[1:]
    assert [line.split(" (")[0] for line in lines] == [
        "bench parted: part b wide", "bench parted: b wide > cell 1/2 x=1", "bench parted: b wide > cell 2/2 x=2",
        "bench parted: cell 1/1 3",
    ]  # fmt: skip
    assert lines[0].endswith(" in of about 2m49s)")  # the suite's time so far of the recorded run's
    assert lines[2].endswith(" left in b wide)")  # the time left in the part's grid
    assert lines[3].endswith(" in)")  # after the block: no part named, a fresh grid
    assert list(cells(["x"])) == ["x"] and _lines(capsys) == ["bench suite: cell 1/1 x (0s in)"]  # after the run


def test_the_estimate_reads_a_committed_quick_result_one_folder_deep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    committed, elsewhere = tmp_path / "committed", tmp_path / "elsewhere"
    monkeypatch.setattr(bench, "COMMITTED_RESULTS", committed)
    quick = committed / "cpu-2core-quick" / "grid.json"
    full = committed / "cpu-2core" / "grid.json"
    for path, payload in ((quick, {"quick": True, "wall_seconds": 42.0}), (full, {"quick": False})):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"suite": "grid", **payload}))
        os.utime(path, (1.0, 1.0))  # committed long ago
    assert recorded_seconds("grid", True, elsewhere) == (42.0, quick)
    assert recorded_seconds("grid", False, elsewhere) is None  # the full result has no wall_seconds
    assert recorded_seconds("grid", True, committed) == (42.0, quick)  # --out the committed tree itself

    run_suite(_suite, "grid", quick=False, out=elsewhere, device=CPU)
    assert _lines(capsys)[0] == (
        f"bench grid: no run in this mode recorded; its --quick run took 42s ({quick}), this mode takes longer"
    )
    run_suite(_suite, "grid", quick=True, out=elsewhere, device=CPU)
    assert _lines(capsys)[0] == f"bench grid --quick: about 42s (its last run took that: {quick})"
    run_suite(_suite, "grid", quick=True, out=elsewhere, device=CPU)  # this machine's own run is newer
    assert _lines(capsys)[0].endswith(f"(its last run took that: {elsewhere / 'grid.json'})")


def test_every_registered_suite_has_a_committed_quick_duration() -> None:
    """A fresh clone's ``evoens bench NAME --quick`` says up front how long it takes."""
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results"  # the checkout's, installed or not
    missing = [name for name in SUITES if recorded_seconds(name, True, committed) is None]
    assert not missing, f"no committed quick run with wall_seconds under {committed}: {missing}"


class _FirstCell(Exception):
    """Raised by the patched :func:`cells` after a suite's first cell line: the suite stops right there."""


def _first_cell(seen: list[tuple[int, str]]) -> Callable[..., Iterator[Any]]:
    def first(items: Iterable[Any], describe: Callable[[Any], str] = str) -> Iterator[Any]:
        grid = list(items)
        seen.append((len(grid), describe(grid[0])))
        next(cells(grid, describe))  # the real line
        raise _FirstCell

    return first


@pytest.mark.parametrize("name", sorted(SUITES))
def test_each_suite_goes_through_cells_and_its_first_lines_say_so(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every registered suite, run in quick mode until its first cell (before that cell's work)."""
    if name in READS_MNIST_FIRST and not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST not found in {MNIST_DIR}")
    monkeypatch.setenv("EVOENS_DATA_DIR", str(MNIST_DIR.parent))
    fake_ray = SimpleNamespace(__version__="0", cluster_resources=lambda: {"CPU": 2})
    monkeypatch.setattr("evoens.distributed.connect", lambda address=None, **kw: fake_ray)  # scaling: no Ray
    importlib.import_module(f"evoens_benchmarks.{name}")
    seen: list[tuple[int, str]] = []
    for module in [m for key, m in sys.modules.items() if key.startswith("evoens_benchmarks.")]:
        if hasattr(module, "cells"):
            monkeypatch.setattr(module, "cells", _first_cell(seen))
    factory = create_plugin_manager(env={}).registry.get("benchmark", name).factory
    with pytest.raises(_FirstCell):
        run_suite(factory, name, quick=True, out=tmp_path, device=CPU)
    ((size, described),) = seen
    assert size >= 1 and 0 < len(described) <= 60, described  # a grid, a short description of its first cell
    lines = _lines(capsys)
    assert lines[0].startswith(f"bench {name} --quick: ")  # the estimate first
    assert all(line.startswith(f"bench {name}: part ") for line in lines[1:-1])  # then any parts it is in
    assert lines[-1].startswith(f"bench {name}: ") and f"cell 1/{size} {described} (" in lines[-1]


def test_bench_threads_hold_for_the_suite_and_are_recorded(tmp_path: Path) -> None:
    from evoens.cli import main

    before = torch.get_num_threads()
    assert main(["bench", "generation", "--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "generation.json").read_text())["environment"]["threads"] == 1
    assert torch.get_num_threads() == before  # restored after the suites
