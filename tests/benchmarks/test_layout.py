"""The layout rules of the benchmark suites: ``evoens run`` loads no benchmark code, and no
production module imports the test helpers of :mod:`evoens.testing`."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = ("evoens", "plugins", "benchmarks/evoens_benchmarks")
# the suites, the old suite packages and modules, and the core harness: none is needed by a run
BENCH_MODULES = ("evoens_bench", "evoens.bench")
OLD_SUITES = (
    "evoens_binary.mnist_bench", "evoens_binary.toy_bench", "evoens_binary.toy_report", "evoens_binary.toy_train",
    "evoens_morph.bench", "evoens_morph.bench_train", "evoens_morph.ne_bench",
)  # fmt: skip
# An entry-point plugin is imported to be registered: ``evoens_benchmarks`` and its ``hooks``
# are the only part of the benchmarks plugin a run may load (hooks.py imports no suite).
ALLOWED = {"evoens_benchmarks", "evoens_benchmarks.hooks"}

RUN = """
import json, sys
from evoens.cli import main
code = main(["run", sys.argv[1], "--out", sys.argv[2], "--set", "generations=2", "--device", "cpu"])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_evoens_run_of_the_quick_start_loads_no_benchmark_module(tmp_path: Path) -> None:
    config = REPO / "examples" / "quickstart.toml"
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(config), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and (tmp_path / "run" / "summary.json").exists()
    modules = result["modules"]
    assert "evoens_benchmarks.hooks" in modules  # the plugin was registered, so the check has power
    loaded = [
        m
        for m in modules
        if (m.startswith("evoens_benchmarks") and m not in ALLOWED)
        or m in BENCH_MODULES
        or m.startswith("evoens_bench.")
        or m in OLD_SUITES
    ]
    assert loaded == []


def _env() -> dict[str, str]:
    """This environment without the plugin switches a developer may have set."""
    env = {k: v for k, v in os.environ.items() if k not in ("EVOENS_DISABLE_PLUGINS", "EVOENS_TRACE_PLUGINS")}
    return {**env, "MPLBACKEND": "Agg"}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, ``from evoens import testing`` read as ``evoens.testing``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_no_production_module_imports_the_test_helpers() -> None:
    files = [p for top in PRODUCTION for p in sorted((REPO / top).rglob("*.py"))]
    assert len(files) > 50
    offenders = [
        str(p.relative_to(REPO))
        for p in files
        if p != REPO / "evoens" / "testing.py" and any(m == "evoens.testing" for m in _imports(p))
    ]
    assert offenders == []
