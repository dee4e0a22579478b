"""The benchmark harness: suites are providers; each run writes JSON, markdown and a plot.
Speed is never asserted here (benchmarks measure it); only the shape of the output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from evoens_benchmarks.hooks import SUITES

from evoens.bench import BenchResult, run_suite, time_call
from evoens.cli import main
from evoens.manager import create_plugin_manager

NAMES = {
    "throughput", "generation", "evojax_mnist", "binary_estimators", "binary_mnist", "morph", "ensemble", "sizing",
    "scaling", "hypernet",
}


def _tiny_suite(quick: bool, device: torch.device, env: dict[str, Any]) -> BenchResult:
    seconds = time_call(lambda: torch.ones(8) @ torch.ones(8), device)
    return BenchResult(
        "tiny",
        ["case", "ms"],
        [{"case": "dot", "ms": seconds * 1e3}],
        notes=["a note"],
        plot=lambda path: path.write_bytes(b"\x89PNG fake"),
    )


def test_run_suite_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    payload = run_suite(_tiny_suite, "tiny", quick=True, out=tmp_path, device=torch.device("cpu"))
    written = json.loads((tmp_path / "tiny.json").read_text())
    assert written == json.loads(json.dumps(payload))
    assert written["environment"]["sgemm_gflops"] > 0 and written["environment"]["torch"] == torch.__version__
    assert written["rows"][0]["case"] == "dot" and written["command"] == "evoens bench tiny --quick --device cpu"
    md = (tmp_path / "tiny.md").read_text()
    assert "| case | ms |" in md and "| dot |" in md and "a note" in md
    assert (tmp_path / "tiny.png").exists()


def test_bench_without_a_name_lists_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 0
    listed = capsys.readouterr().out
    assert "throughput" in listed and "generation" in listed


def test_the_benchmarks_plugin_registers_every_suite_by_its_snake_case_name() -> None:
    registry = create_plugin_manager(env={}).registry
    providers = [p for p in registry if p.kind == "benchmark"]
    assert {p.name for p in providers} == NAMES == set(SUITES)
    assert all(p.plugin == "benchmarks" and p.description for p in providers)


def test_each_suite_module_runs_as_a_script_through_evoens_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    import evoens_benchmarks

    seen: list[list[str]] = []
    monkeypatch.setattr("evoens.cli.main", lambda argv: seen.append(list(argv)) or 0)
    assert evoens_benchmarks.main("throughput", ["--quick", "--out", "x"]) == 0
    assert seen == [["bench", "throughput", "--quick", "--out", "x"]]
    for name in NAMES:
        source = (Path(evoens_benchmarks.__file__).parent / f"{name}.py").read_text()
        assert f'sys.exit(main("{name}", sys.argv[1:]))' in source
    done = subprocess.run(
        [sys.executable, "-m", "evoens_benchmarks.throughput", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "--quick" in done.stdout, done.stderr


def test_unknown_suite_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "througput"]) == 2
    assert "unknown benchmark 'througput' (did you mean 'throughput'?)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["throughput", "generation"])
def test_quick_suites_produce_complete_tables(suite: str, tmp_path: Path) -> None:
    assert main(["bench", suite, "--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    rows = json.loads((tmp_path / f"{suite}.json").read_text())["rows"]
    assert rows and all(r.get("ms") or r.get("ms_per_gen") or r.get("note") for r in rows)
