"""The external plugin template, installed into a temporary environment like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "examples" / "evoens-plugin-template"
TINY = """
generations = 2
reporters = []
[data]
batch_size = 128
[model]
hidden = [8]
[trainer]
searcher = "snes"
popsize = 8
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template pip-installed (not editable) into its own target directory."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(TEMPLATE),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def _evoens(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "evoens", *args], env=env, capture_output=True, text=True)


def test_entry_point_is_found(site: Path) -> None:
    done = _evoens(site, "plugins", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["template"]["distribution"] == "evoens-plugin-template"
    assert rows["template"]["version"] == "0.1.0"
    assert rows["template"]["hooks"] == ["evoens_register_providers", "evoens_report", "evoens_summary"]
    assert rows["template"]["providers"] == ["fitness:margin"]


def test_hooks_run_in_a_real_run_and_its_provider_is_selectable(site: Path, tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(TINY)
    out = tmp_path / "out"
    done = _evoens(site, "run", str(tmp_path / "run.toml"), "--out", str(out), "--set", "trainer.fitness=margin")
    assert done.returncode == 0, done.stderr
    assert (out / "template_report.txt").read_text().splitlines()[0].startswith("generation 0 best ")
    assert json.loads((out / "summary.json").read_text())["template_plugin"] == {"generations_seen": 2}


def test_p_no_disables_it(site: Path, tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(TINY)
    out = tmp_path / "out"
    done = _evoens(site, "run", str(tmp_path / "run.toml"), "--out", str(out), "-p", "no:template")
    assert done.returncode == 0, done.stderr
    assert not (out / "template_report.txt").exists()
    assert "template_plugin" not in json.loads((out / "summary.json").read_text())
    refused = _evoens(site, "run", str(tmp_path / "run.toml"), "--out", str(tmp_path / "refused"), "-p", "no:template",
                      "--set", "trainer.fitness=margin")  # fmt: skip
    assert refused.returncode == 2 and "unknown fitness 'margin'" in refused.stderr
