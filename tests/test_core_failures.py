"""Failures in the places a run touches, each one line saying what to change, never a traceback:
out of memory and shapes that do not fit (exit 2, naming the plugin and hook and the keys to
change), a reporter that cannot start (named by its own plugin), ``--out`` a file, a read-only run
directory, a full disk during the run and at summary time, a data directory without search
permission. Real processes where the behaviour is a process's (a memory limit, a mount)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evoens.cli import main

CONFIG = """
seed = 3
generations = {generations}
eval_every = 2
reporters = ["jsonl"]
progress_seconds = 0
[data]
name = "{dataset}"
batch_size = 64
[model]
{model}
[trainer]
searcher = "snes"
popsize = {popsize}
strategy = "bmm"
[checkpoint]
every = 1
keep = 3
"""
PLUGIN = """
from torch import nn
from evoens import Provider, hookimpl

@hookimpl
def evoens_register_providers():
    # a model that ignores the input shape it is given, and a reporter that cannot start
    yield Provider("model", "fixed", lambda shape, classes, cfg: nn.Sequential(nn.Flatten(), nn.Linear(10, classes)))
    yield Provider("reporter", "broken", lambda run: open("/nonexistent/evoens/report.txt", "w"))
"""
COMPARED = ("best_fitness", "test_accuracy", "val_accuracy", "generations", "final_stats", "selected")


def _config(tmp_path: Path, *, generations: int = 3, dataset: str = "digits", model: str = "hidden = [8]",
            popsize: int = 8, name: str = "run.toml") -> Path:  # fmt: skip
    path = tmp_path / name
    path.write_text(CONFIG.format(generations=generations, dataset=dataset, model=model, popsize=popsize))
    return path


def _plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    (folder / "oddities.py").write_text(PLUGIN)
    return folder


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("evoens: error: ")
    return line


def _evoens(*args: str, prefix: tuple[str, ...] = (), cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, sys.executable, "-m", "evoens", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def _errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the warnings of plugins that do not load in a bare process."""
    return [line for line in done.stderr.splitlines() if "failed to load" not in line]


def _namespaces_work() -> bool:
    """Mount namespaces (``unshare -rm``) let a test mount a tmpfs or a read-only bind as any user."""
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -rm (mount namespaces)")


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _summary(out: Path) -> dict[str, Any]:
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary[k] for k in COMPARED}


# --- out of memory and shapes that do not fit: what to change ------------------------------------


def test_a_real_out_of_memory_names_where_and_the_keys_to_lower(tmp_path: Path) -> None:
    """A process whose address space is capped 600 MiB above what it has: a 20,000-member population
    of a 19,210-parameter MLP (1.5 GB per copy) cannot be sampled."""
    config = _config(tmp_path, model="hidden = [256]", popsize=20000)
    script = (
        "import resource, sys, torch\n"
        "from evoens.cli import main\n"
        "size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + (600 << 20),) * 2)\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", script, "run", str(config), "--out", str(out), "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    (line,) = _errors(done)
    assert done.returncode == 2, done.stderr
    assert line.startswith("evoens: error: out of memory on cpu in the step of trainer 'evolution' (plugin 'core')")
    # the allocation is about the population itself: its size comes first among the keys to lower
    assert "lower trainer.popsize (now 20000), data.batch_size (now 64) or trainer.max_chunk" in line
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_a_model_that_does_not_fit_the_data_is_one_line_naming_both_plugins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, model='name = "fixed"')
    args = ["run", str(config), "--out", str(tmp_path / "out"), "--plugins-dir", str(_plugins(tmp_path))]
    assert main(args) == 2
    line = _error_line(capsys)
    assert "the model's shapes do not fit the data in evoens_evaluate (plugin 'core') at generation 0" in line
    assert "at generation 0 (RuntimeError: " in line  # the torch message itself, on the same line
    assert "model 'fixed' (plugin 'oddities') was built for inputs of shape (64,) and 10 classes" in line
    assert "dataset 'digits' (plugin 'core')" in line


def test_a_reporter_that_cannot_start_is_named_by_its_own_plugin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, out = _config(tmp_path), tmp_path / "out"
    args = ["run", str(config), "--out", str(out), "--plugins-dir", str(_plugins(tmp_path))]
    assert main([*args, "--set", 'reporters=["jsonl", "broken"]']) == 2
    line = _error_line(capsys)
    assert line.startswith("evoens: error: reporter 'broken' (plugin 'oddities') failed to start: FileNotFoundError")
    assert "leave 'broken' out of the config's reporters" in line
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


# --- unwritable places ----------------------------------------------------------------------------


def test_out_pointing_at_a_file_is_one_line_and_the_file_is_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, afile = _config(tmp_path), tmp_path / "notes.txt"
    afile.write_text("my notes\n")
    assert main(["run", str(config), "--out", str(afile)]) == 2
    line = _error_line(capsys)
    assert line == f"evoens: error: cannot make the run directory {afile}: {afile} is a file; choose another --out"
    assert main(["run", str(config), "--out", str(afile / "run")]) == 2
    assert f"{afile} (a folder above {afile / 'run'}) is a file" in _error_line(capsys)
    assert afile.read_text() == "my notes\n"


def test_enospc_at_summary_time_keeps_the_previous_summary_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path)), "--out", str(out)]) == 0
    before = (out / "summary.json").read_bytes()
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:  # the disk fills up while the summary is written
        if "summary.json" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, os.strerror(28))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    capsys.readouterr()
    assert main(["resume", str(out), "--set", "generations=5"]) == 1
    line = _error_line(capsys)
    assert f"the run reached generation 5, but cannot write {out / 'summary.json'}: No space left on device" in line
    assert "it keeps its previous contents" in line
    assert (out / "summary.json").read_bytes() == before  # never 0 bytes, never half a file
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / ".evoens.lock").exists()
    assert (out / "checkpoints" / "gen-000005.pt").is_file()  # the run's result itself is saved
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [0, 1, 2, 3, 4]


@needs_mounts
def test_a_full_tmpfs_stops_the_run_in_one_line_and_the_copy_resumes_exactly(tmp_path: Path) -> None:
    config = _config(tmp_path, generations=6)
    assert main(["run", str(config), "--out", str(tmp_path / "ref")]) == 0
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    script = (
        f"mount -t tmpfs -o size=96k tmpfs {disk} && "
        f"{sys.executable} -m evoens run {config} --out {disk / 'run'}; echo $? > {tmp_path / 'rc'}; "
        f"cp -a {disk / 'run'} {copy}"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    (line,) = _errors(done)
    assert (tmp_path / "rc").read_text().strip() == "1"
    assert line.startswith("evoens: error: cannot write the checkpoint of generation ")
    assert "No space left on device" in line and "evoens resume" in line
    assert not [p for p in copy.rglob("*") if p.name.endswith(".tmp")]  # no debris
    text = (copy / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(row) for row in text.splitlines())  # whole lines only
    assert json.loads((copy / "summary.json").read_text())["status"] == "failed"
    assert main(["resume", str(copy)]) == 0  # room again: it ends as the uninterrupted run
    assert _summary(copy) == _summary(tmp_path / "ref")


@needs_mounts
def test_a_read_only_run_directory_is_one_line_and_stays_unchanged(tmp_path: Path) -> None:
    config, out = _config(tmp_path), tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 0
    before = _snapshot(out)
    evoens = f"{sys.executable} -m evoens"
    script = (
        f"mount --bind {out} {out} && mount -o remount,bind,ro {out} {out} && "
        f"{evoens} resume {out} --set generations=5; echo $? >> {tmp_path / 'rc'}; "
        f"{evoens} run {config} --out {out / 'new'}; echo $? >> {tmp_path / 'rc'}"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert (tmp_path / "rc").read_text().split() == ["2", "2"]
    resumed, ran = _errors(done)
    assert resumed == (
        f"evoens: error: cannot lock the run directory {out}: Read-only file system; copy the run to a writable "
        "place and resume it there"
    )
    new = out / "new"
    assert ran == (
        f"evoens: error: cannot create the run directory {new}: Read-only file system; choose a writable --out"
    )
    assert _snapshot(out) == before


def test_a_data_directory_without_search_permission_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    (data / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    config = _config(tmp_path, dataset="mnist")
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root searches any directory: run as the directory's owner without privileges
        if shutil.which("unshare") is None or subprocess.run(["unshare", "-U", "true"]).returncode:
            pytest.skip("as root this needs unshare --user")
        prefix = ("unshare", "--user", "--map-user=1000", "--map-group=1000")
    data.chmod(0o600)
    try:
        done = _evoens("run", str(config), "--out", str(tmp_path / "out"), "--data-dir", str(data), prefix=prefix)
    finally:
        data.chmod(0o700)
    (line,) = _errors(done)
    assert done.returncode == 2
    assert line.startswith("evoens: error: dataset 'mnist' (plugin 'core') cannot read its files: ")
    assert str(data / "mnist") in line and "Permission denied" in line and "searchable" in line
    assert not (tmp_path / "out").exists()  # a failed start-up leaves no directory
