"""The ``evoens`` command as a user meets it: exit codes, one-line errors, real runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
        (["--set", "trainer.lr=-1"], "trainer.lr = -1.0: must be"),  # "> 0" (and finite)
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
    assert seen == [["progress"] if tty else ["log"]]


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


def test_p_without_no_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["plugins", "-p", "reporters"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "-p takes no:NAME and disables the plugin NAME (got 'reporters')" in err


def test_p_no_unknown_lists_the_known_plugins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(_config(tmp_path)), "--out", str(tmp_path / "o"), "-p", "no:nosuch"]) == 2
    line = _error_line(capsys)
    assert "there is no plugin named 'nosuch'" in line and "known: " in line and "reporters" in line


BAD_HOOK = "from evoens import hookimpl\n\n@hookimpl\ndef evoens_after_tel(run):\n    pass\n"


def test_listing_survives_a_plugin_with_a_bad_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.py").write_text(BAD_HOOK)
    (tmp_path / "fine.py").write_text("def evoens_report(run):\n    pass\n")
    assert main(["plugins", "--plugins-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"broken ({tmp_path / 'broken.py'} local)  FAILED: unknown hook 'evoens_after_tel'" in out
    assert f"fine ({tmp_path / 'fine.py'} local)" in out and "searchers (evoens" in out
    assert main(["plugins", "--json", "--plugins-dir", str(tmp_path)]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["fine"]["version"] == "local" and rows["broken"]["error"].startswith("unknown hook")
    assert main(["bench", "--plugins-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "throughput" in captured.out and "broken" in captured.err
    assert main(["run", str(_config(tmp_path)), "--plugins-dir", str(tmp_path)]) == 2  # a run refuses it
    assert "unknown hook 'evoens_after_tel'" in _error_line(capsys)


def test_debug_shows_the_traceback_of_a_plugin_that_failed_to_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    assert main(["--debug", "plugins", "--plugins-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "traceback of plugin 'boom'" in err and "Traceback (most recent call last)" in err


def test_threads_is_applied_and_recorded(tmp_path: Path) -> None:
    out, plugins = tmp_path / "out", tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "probe.py").write_text(
        "import torch\nfrom evoens import hookimpl\n\n"
        "@hookimpl\ndef evoens_generation_start(run):\n"
        "    (run.out_dir / 'threads.txt').write_text(str(torch.get_num_threads()))\n"
    )
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    args = ["run", str(_config(tmp_path)), "--out", str(out), "--threads", str(wanted), "--plugins-dir", str(plugins)]
    assert main(args) == 0
    assert (out / "threads.txt").read_text() == str(wanted)  # inside the run
    assert torch.get_num_threads() == before  # and given back after it
    assert f"threads = {wanted}" in (out / "config.toml").read_text()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_exits_128_plus_the_signal(tmp_path: Path, signum: int, code: int) -> None:
    config = _config(tmp_path, TINY.replace("generations = 3", "generations = 100000"))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "evoens", "run", str(config), "--out", str(out), "--set", 'reporters=["jsonl"]'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:  # the loop is running
        time.sleep(0.1)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert f"continue with `evoens resume {out}`" in stdout and "run finished" not in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == signal.Signals(signum).name


def test_metrics_lines_are_whole_and_a_resume_trims_a_torn_tail(tmp_path: Path) -> None:
    from evoens.builtins.reporters import JsonlReporter

    first = JsonlReporter(tmp_path)
    for generation in range(6):
        first.report(generation, {"best_fitness": float(generation)})
    path = tmp_path / "metrics.jsonl"
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 6
    with path.open("a") as f:  # what kill -9 during a write could leave
        f.write('{"generation": 6, "best_fi')
    again = JsonlReporter(tmp_path, resume_at=4)  # resumed from the checkpoint of generation 4
    for generation in range(4, 7):
        again.report(generation, {"best_fitness": float(generation)})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["generation"] for row in rows] == list(range(7))


def _events(directory: Path) -> list[Any]:
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        while data:  # TFRecord framing: length (8) + crc (4) + payload + crc (4)
            length = int.from_bytes(data[:8], "little")
            events.append(event_pb2.Event.FromString(data[12 : 12 + length]))
            data = data[16 + length :]
    return events


def test_tensorboard_after_a_resume_has_each_step_once(tmp_path: Path) -> None:
    from tensorboardX.proto import event_pb2

    from evoens.builtins.reporters import TensorBoardReporter

    crashed = TensorBoardReporter(tmp_path)
    for generation in range(8):  # written past the checkpoint of generation 5, then killed
        crashed.report(generation, {"best_fitness": float(generation)})
    crashed.close()
    time.sleep(1.1)  # event file names carry the second they were opened
    resumed = TensorBoardReporter(tmp_path, resume_at=5)
    for generation in range(5, 10):
        resumed.report(generation, {"best_fitness": 100.0 + generation})
    resumed.close()
    steps: dict[int, float] = {}
    for event in _events(tmp_path / "tb"):  # TensorBoard's rule: a START at step s drops steps >= s
        if event.session_log.status == event_pb2.SessionLog.START:
            steps = {k: v for k, v in steps.items() if k < event.step}
        for value in event.summary.value:
            assert event.step not in steps, f"step {event.step} twice"
            steps[event.step] = value.simple_value
    assert sorted(steps) == list(range(10))
    assert [steps[g] for g in (4, 5, 9)] == [4.0, 105.0, 109.0]
