"""The ``evoens`` command as a user meets it: exit codes, one-line errors, real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evoens import __version__
from evoens.builtins.reporters import ACTIVE
from evoens.cli import main

REPO = Path(__file__).resolve().parents[1]
NEEDS_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
TINY = """
seed = 1
generations = 3
eval_every = 1
reporters = ["jsonl", "tensorboard", "plot"]
[data]
name = "digits"
batch_size = 256
[model]
hidden = [8]
[trainer]
searcher = "snes"
popsize = 8
"""


def _config(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("evoens: error: ")
    return err[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"evoens {__version__}"


def test_run_writes_a_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path)), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("best_fitness", "test_accuracy", "generations", "wall_seconds", "plugins"):
        assert key in summary
    assert summary["generations"] == 3
    assert {p["name"] for p in summary["plugins"]} >= {"core", "loop", "searchers", "reporters"}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["generation"] for m in metrics] == [0, 1, 2]
    for key in (
        "best_fitness",
        "mean_fitness",
        "median_fitness",
        "diversity",
        "test_accuracy",
        "generations_per_second",
        "nonfinite",
    ):
        assert key in metrics[-1], key
    assert (out / "fitness.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert "popsize = 8" in (out / "config.toml").read_text()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--set", "trainer.popsze=3"], "unknown key 'trainer.popsze' (did you mean 'popsize'?)"),
        (["--set", "trainer.searcher=snse"], "unknown searcher 'snse' (did you mean 'snes'?)"),
        (["--set", "trainer.lr=-1"], "trainer.lr = -1.0: must be > 0"),
        (["--set", "data.name=digitz"], "unknown dataset 'digitz' (did you mean 'digits'?)"),
        (["-p", "no:searchers"], "unknown searcher 'snes'; known: none registered"),
        (["--set", "model.name=convnet"], "model 'convnet': needs (C, H, W) inputs, got (64,)"),
        (["--set", "seed=-1"], "seed = -1: must be >= 0"),
        pytest.param(["--device", "cuda"], "device = 'cuda' but no CUDA device is available", marks=NEEDS_NO_CUDA),
    ],
)
def test_user_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    code = main(["run", str(_config(tmp_path)), "--out", str(tmp_path / "o"), *extra])
    assert code == 2
    assert expected in _error_line(capsys)


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in _error_line(capsys)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from evoens.config import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "run", str(_config(tmp_path)), "--set", "trainer.popsze=3"])


def test_plugins_json_lists_hooks_and_providers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["searchers"]["distribution"] == "evoens" and rows["searchers"]["version"] == __version__
    assert "searcher:snes" in rows["searchers"]["providers"]
    assert rows["loop"]["hooks"] == ["evoens_run_loop"]
    assert "evoens_evaluate" in rows["core"]["hooks"]


def test_console_script_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "evoens", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"evoens {__version__}"


@pytest.mark.slow
def test_quickstart_reaches_90_percent_on_digits(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    assert main(["run", str(REPO / "examples" / "quickstart.toml"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.90


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tty: bool) -> None:
    from evoens import hookimpl
    from evoens.testing import run_inline, tiny_config

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    seen: list[list[str]] = []

    class Peek:
        @hookimpl(trylast=True)
        def evoens_run_start(self, run: object) -> None:
            seen.append(sorted(run.stash[ACTIVE]))  # type: ignore[attr-defined]

    run_inline(tiny_config(generations=1), tmp_path, Peek())
    assert seen == [["progress"] if tty else []]


def test_tensorboard_events_hold_the_generation_statistics(tmp_path: Path) -> None:
    from tensorboardX.proto import event_pb2

    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path)), "--out", str(out)]) == 0
    tags = set()
    for path in (out / "tb").glob("events.out.tfevents.*"):
        data = path.read_bytes()
        while data:  # TFRecord framing: length (8) + crc (4) + payload + crc (4)
            length = int.from_bytes(data[:8], "little")
            event = event_pb2.Event.FromString(data[12 : 12 + length])
            tags |= {v.tag for v in event.summary.value}
            data = data[16 + length :]
    assert tags >= {
        "best_fitness",
        "mean_fitness",
        "median_fitness",
        "test_accuracy",
        "diversity",
        "generations_per_second",
    }
