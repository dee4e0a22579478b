"""The README's commands, in the order it gives them, in a fresh directory (install aside): the quick
start and the files it promises, resume with more generations, the plugin listing, and one example
per built-in plugin."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
NEEDS_MNIST = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs ../shared/data/mnist")


def evoens(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "evoens", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory like a fresh clone's root: the examples, nothing run yet."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("evoens-plugin-template"))
    return root


def test_quick_start_writes_what_the_readme_lists(workdir: Path) -> None:
    done = evoens(
        workdir,
        "run",
        "examples/quickstart.toml",
        "--out",
        "runs/quickstart",
        "--set",
        "generations=20",
        "--threads",
        "1",
    )
    assert done.stdout.startswith("run finished: runs/quickstart/summary.json")
    run = workdir / "runs" / "quickstart"
    assert "generations = 20" in (run / "config.toml").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["generation"] for row in rows] == list(range(20))  # one line per generation
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "fitness.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("best_fitness", "test_accuracy", "val_accuracy", "generations", "wall_seconds", "plugins"):
        assert key in summary, key
    assert summary["status"] == "finished" and summary["generations"] == 20
    assert "generation 1/20" in done.stderr  # stderr is no terminal here: the progress line


def test_resume_with_more_generations_continues_the_quick_start(workdir: Path) -> None:
    """`evoens resume runs/quickstart --set generations=800`, shortened: 20 -> 25."""
    evoens(workdir, "resume", "runs/quickstart", "--set", "generations=25", "--threads", "1")
    run = workdir / "runs" / "quickstart"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["generations"] == 25
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["generation"] for row in rows] == list(range(25))
    assert "generations = 25" in (run / "config.toml").read_text()  # recorded: a plain resume keeps it


def test_plugin_listing(workdir: Path) -> None:
    text = evoens(workdir, "plugins").stdout
    rows = json.loads(evoens(workdir, "plugins", "--json").stdout)
    names = {row["name"] for row in rows}
    assert {"core", "loop", "searchers", "reporters", "checkpoint", "binary", "morph", "ensemble"} <= names
    for row in rows:  # distribution, version, hooks, providers, as the README says
        assert row["error"] is None and row["version"], row
        assert f"{row['name']} ({row['distribution']} {row['version']})" in text
    assert "providers: " in text and "hooks: " in text


@NEEDS_MNIST
@pytest.mark.parametrize(
    ("example", "overrides"),
    [
        ("binary-mlp-ste.toml", ["generations=20", "eval_every=20", "checkpoint.every=0"]),
        ("binary-mlp-pgpe.toml", ["generations=5", "eval_every=5", "checkpoint.every=0"]),
    ],
)
def test_binary_examples(workdir: Path, example: str, overrides: list[str]) -> None:
    out = f"runs/{example.removesuffix('.toml')}"
    sets = [arg for o in overrides for arg in ("--set", o)]
    evoens(workdir, "run", f"examples/{example}", "--out", out, "--data-dir", str(DATA), "--threads", "1", *sets)
    summary = json.loads((workdir / out / "summary.json").read_text())
    assert summary["status"] == "finished" and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["test_accuracy"] > 0.2  # better than chance after a few steps


def test_r2r_ne_example(workdir: Path) -> None:
    sets = ["--set", "trainer.options.initial_steps=60", "--set", "trainer.options.steps_per_iteration=30"]
    evoens(workdir, "run", "examples/r2r-ne-digits.toml", "--out", "runs/r2r", "--threads", "1", *sets)
    summary = json.loads((workdir / "runs" / "r2r" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["generations"] == 4
    assert 0.0 <= summary["test_accuracy"] <= 1.0


def test_ensemble_example(workdir: Path) -> None:
    sets = ["--set", "generations=20", "--set", "eval_every=10"]
    evoens(workdir, "run", "examples/ensemble-digits.toml", "--out", "runs/ensemble", "--threads", "1", *sets)
    summary = json.loads((workdir / "runs" / "ensemble" / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert "ensemble" in summary  # the ensemble's and the best member's metrics on val and test


def test_hypernet_example(workdir: Path) -> None:
    sets = ["--set", "generations=4", "--set", "eval_every=2"]
    evoens(workdir, "run", "examples/hypernet-digits.toml", "--out", "runs/hypernet", "--threads", "1", *sets)
    summary = json.loads((workdir / "runs" / "hypernet" / "summary.json").read_text())
    assert summary["status"] == "finished"
    entry = summary["hypernet"]  # the judged members' ensemble and mean accuracy, NLL, ECE, output variance
    assert entry["members"] == 16 and 0.0 <= entry["test"]["ensemble_accuracy"] <= 1.0
