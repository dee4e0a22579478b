"""Ray actors on a local Ray instance (evoens.distributed): plugins that evaluate run inside the
actors or the run refuses actors, a plugin missing on a worker is one line, a killed actor is
replaced (or the run stops resumably), and an actor run equals and resumes like a run without Ray.

The refusals need no Ray; everything else skips without it (``pip install 'evoens[ray]'``). The
default suite keeps the plugin-in-actor and missing-plugin cases (about 30 s); the killed actor,
exact resume, max_restarts, the CPU budget and threads are ``slow`` (tox -e slow, a few minutes).
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from evoens import hookimpl
from evoens.config import ConfigError, RunConfig
from evoens.engine import execute, resume
from evoens.errors import PluginError, RunError, UserError
from evoens.manager import create_plugin_manager
from evoens.testing import core_plugins, run_inline, tiny_config, write_distribution

# An evaluation plugin for --plugins-dir: the core fitness minus a weight penalty (so it visibly
# changes the result), recording where it ran; at generation `kill_at` it SIGKILLs its own Ray
# worker once (a marker file makes the replacement go on).
PROBE = '''
import os, signal
import torch
from pathlib import Path
from evoens import hookimpl

EVOENS_ACTOR_SAFE = {safe}


@hookimpl(tryfirst=True)
def evoens_evaluate(run, generation, candidates, batch):
    probe = run.config.extra["probe"]
    where = "main"
    if os.getpid() != probe["main_pid"]:
        import ray

        where = ray.get_runtime_context().get_node_id()
        marker = Path(probe["dir"]) / "killed"
        if generation == probe.get("kill_at", -1) and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
    with open(Path(probe["dir"]) / "where.txt", "a") as fh:
        fh.write(f"{{generation}} {{os.getpid()}} {{where}}\\n")
    evaluation = candidates.evaluate(run.fitness_fn, batch)
    penalty = 0.5 * candidates.flat.abs().mean(dim=1)  # (P,)
    return evaluation.fitness - penalty
'''


def probe_dir(tmp_path: Path, safe: bool = True) -> Path:
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "probe.py").write_text(PROBE.format(safe=safe))
    return plugins


def config(tmp_path: Path, actors: int | str = 0, kill_at: int = -1, **top: Any) -> RunConfig:
    (tmp_path / "probe").mkdir(exist_ok=True)
    trainer = {"num_actors": actors, "searcher": "pgpe", "popsize": 8, "strategy": "bmm", **top.pop("trainer", {})}
    extra = {"probe": {"main_pid": os.getpid(), "dir": str(tmp_path / "probe"), "kill_at": kill_at}}
    return tiny_config(**{"generations": 4, **top}, trainer=trainer, extra=extra)


def manager(plugins_dir: Path | None = None) -> Any:
    return create_plugin_manager(plugins=core_plugins(), entry_points=False, plugins_dir=plugins_dir, env={})


def final_state(out: Path) -> dict[str, Any]:
    newest = sorted((out / "checkpoints").glob("gen-*.pt"))[-1]
    state = torch.load(newest, weights_only=True)
    return {"generation": state["generation"], "trainer": state["trainer"], "best": state["best_fitness"]}


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bit-for-bit equality of two nested checkpoint values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def where_ran(tmp_path: Path) -> list[tuple[int, int, str]]:
    path = tmp_path / "probe" / "where.txt"
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [(int(g), int(pid), node) for g, pid, node in rows]


# --- refusals: before Ray is even imported ------------------------------------------------------


def test_an_evaluate_plugin_without_the_declaration_refuses_actors(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as err:
        execute(config(tmp_path, actors=2), tmp_path / "run", manager(probe_dir(tmp_path, safe=False)))
    message = str(err.value)
    assert "\n" not in message and "plugin 'probe' implements evoens_evaluate" in message
    assert "EVOENS_ACTOR_SAFE = True" in message and "trainer.num_actors = 0" in message
    assert where_ran(tmp_path) == []  # refused before anything was evaluated, here or elsewhere
    assert not (tmp_path / "run").exists()  # ... and before the run directory was made


def test_num_actors_with_a_trainer_that_does_not_run_actors_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, actors=2, trainer={"name": "gradient", "strategy": "bmm"})
    with pytest.raises(ConfigError) as err:
        execute(cfg, tmp_path / "run", manager())
    message = str(err.value)
    assert "\n" not in message and "trainer 'gradient' (plugin 'core') evaluates in this process" in message
    assert "set trainer.num_actors = 0" in message and not (tmp_path / "run").exists()


def test_the_refusal_is_one_line_and_exit_2_on_the_command_line(tmp_path: Path, capsys: Any) -> None:
    from evoens.cli import main

    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'generations = 2\nreporters = []\n[data]\nname = "digits"\n[model]\nhidden = [8]\n'
        f'[trainer]\npopsize = 8\nnum_actors = 2\n[extra.probe]\nmain_pid = {os.getpid()}\ndir = "{tmp_path}"\n'
    )
    code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--plugins-dir", str(probe_dir(tmp_path, False))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("evoens: error: plugin 'probe' implements evoens_evaluate")


def test_a_plugin_object_registered_from_code_refuses_actors(tmp_path: Path) -> None:
    class Inline:
        EVOENS_ACTOR_SAFE = True  # declared, but an object cannot be imported in an actor

        @hookimpl(tryfirst=True)
        def evoens_evaluate(self) -> None:
            return None

    with pytest.raises(PluginError, match="plugin 'inline' implements evoens_evaluate.*registered from code"):
        run_inline(config(tmp_path, actors=2), tmp_path / "run", ("inline", Inline()))


def test_a_fitness_that_couples_the_members_refuses_actors(tmp_path: Path) -> None:
    from evoens.registry import Provider

    def coupled(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -outputs.mean(dim=0).logsumexp(-1).mean().expand(outputs.shape[0])  # (P,) the whole population's

    coupled.couples_members = True  # type: ignore[attr-defined]

    class Ensemble:
        @hookimpl
        def evoens_register_providers(self) -> list[Provider]:
            return [Provider("fitness", "coupled", lambda: coupled, "an ensemble's fitness")]

    cfg = config(tmp_path, actors=2, trainer={"fitness": "coupled"})
    with pytest.raises(PluginError, match="fitness 'coupled' .*couples the members"):
        run_inline(cfg, tmp_path / "run", ("ensemble", Ensemble()))


def test_without_ray_an_actor_run_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UserError, match=r"needs Ray .*pip install 'evoens\[ray\]'"):
        run_inline(config(tmp_path, actors=2), tmp_path / "run")


def test_an_address_where_no_cluster_answers_is_one_line_and_exit_2(tmp_path: Path, capsys: Any) -> None:
    import socket

    from evoens.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ray = pytest.importorskip("ray")
    assert not ray.is_initialized()  # else the run would use that connection
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = tmp_path / "run.toml"
    cfg.write_text('generations = 2\nreporters = []\n[model]\nhidden = [8]\n[trainer]\npopsize = 8\nnum_actors = 2\n')
    code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--ray-address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"evoens: error: ray.address = '127.0.0.1:{port}': no Ray cluster answers there")
    assert not (tmp_path / "run").exists()  # refused while the run was built: nothing was created


# --- with a local Ray instance --------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray's own imports, not evoens's
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_an_actor_run_equals_the_run_without_ray_and_resumes_exactly(tmp_path: Path, local_ray: Any) -> None:
    plain = run_inline(config(tmp_path), tmp_path / "plain")
    cfg = config(tmp_path, actors=2, checkpoint={"every": 2})
    actors = run_inline(cfg, tmp_path / "actors")
    assert actors["status"] == "finished" and actors["best_fitness"] == plain["best_fitness"]
    assert actors["test_accuracy"] == plain["test_accuracy"]
    assert_same(final_state(tmp_path / "plain"), final_state(tmp_path / "actors"))

    half = run_inline(config(tmp_path, actors=2, generations=2), tmp_path / "half")
    assert half["generations"] == 2
    resumed = resume(tmp_path / "half", manager(), ["generations=4"])
    assert resumed["best_fitness"] == plain["best_fitness"]
    assert_same(final_state(tmp_path / "plain"), final_state(tmp_path / "half"))


def test_an_evaluate_plugin_runs_inside_the_actors(tmp_path: Path, local_ray: Any) -> None:
    plugins = probe_dir(tmp_path)
    without = run_inline(config(tmp_path), tmp_path / "core")
    local = execute(config(tmp_path), tmp_path / "local", manager(plugins))
    assert {where for _, _, where in where_ran(tmp_path)} == {"main"}
    (tmp_path / "probe" / "where.txt").unlink()
    remote = execute(config(tmp_path, actors=2), tmp_path / "remote", manager(plugins))
    assert remote["best_fitness"] == local["best_fitness"] != without["best_fitness"]  # the plugin's fitness
    assert_same(final_state(tmp_path / "local"), final_state(tmp_path / "remote"))
    rows = where_ran(tmp_path)
    assert {pid for _, pid, _ in rows}.isdisjoint({os.getpid()}) and len({pid for _, pid, _ in rows}) == 2
    assert sorted({g for g, _, _ in rows}) == [0, 1, 2, 3]  # every generation, two shares each
    assert all(sum(1 for g2, _, _ in rows if g2 == g) == 2 for g in range(4))


@pytest.mark.slow
def test_a_killed_actor_is_replaced_and_its_share_evaluated_again(
    tmp_path: Path, local_ray: Any, caplog: pytest.LogCaptureFixture
) -> None:
    plugins = probe_dir(tmp_path)
    local = execute(config(tmp_path), tmp_path / "local", manager(plugins))
    with caplog.at_level(logging.WARNING, logger="evoens"):
        killed = execute(config(tmp_path, actors=2, kill_at=1), tmp_path / "killed", manager(plugins))
    assert (tmp_path / "probe" / "killed").exists()  # an actor's process really died mid-generation
    assert killed["status"] == "finished" and killed["best_fitness"] == local["best_fitness"]
    assert_same(final_state(tmp_path / "local"), final_state(tmp_path / "killed"))
    assert any("generation 1: Ray actor" in r.message and "replaced" in r.message for r in caplog.records)


@pytest.mark.slow
def test_past_max_restarts_the_run_stops_in_one_line_and_resumes(tmp_path: Path, local_ray: Any) -> None:
    plugins = probe_dir(tmp_path)
    local = execute(config(tmp_path), tmp_path / "local", manager(plugins))
    cfg = config(tmp_path, actors=2, kill_at=2, ray={"max_restarts": 0}, checkpoint={"every": 1})
    with pytest.raises(RunError) as err:
        execute(cfg, tmp_path / "stopped", manager(plugins))
    assert "\n" not in str(err.value) and "generation 2: Ray actor" in str(err.value)
    assert "max_restarts = 0" in str(err.value) and "evoens resume" in str(err.value)
    assert final_state(tmp_path / "stopped")["generation"] == 2  # the checkpoint before the failure
    resumed = resume(tmp_path / "stopped", manager(plugins))  # the marker exists: no second kill
    assert resumed["status"] == "finished" and resumed["best_fitness"] == local["best_fitness"]
    assert_same(final_state(tmp_path / "local"), final_state(tmp_path / "stopped"))


def test_a_plugin_missing_on_the_workers_is_one_line(
    tmp_path: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    write_distribution(site, "evoens-only-here", "1.0", {"onlyhere": "onlyhere_plugin"},
                       {"onlyhere_plugin": "def evoens_run_start():\n    pass\n"})  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    pm = create_plugin_manager(env={})  # the entry points, this one included
    assert "onlyhere" in pm.infos
    for path in sorted(site.rglob("*"), reverse=True):  # installed on the driver's machine only
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(PluginError) as err:
        execute(config(tmp_path, actors=2), tmp_path / "run", pm)
    message = str(err.value)
    assert "\n" not in message
    assert "plugin 'onlyhere' (evoens-only-here 1.0) is not installed on the Ray worker" in message


@pytest.mark.slow
def test_actors_times_threads_beyond_the_cluster_is_one_line(tmp_path: Path, local_ray: Any) -> None:
    from evoens.config import ConfigError

    with pytest.raises(ConfigError, match=r"3 actor\(s\) x 1 thread\(s\) each, but the Ray cluster has 2 CPU"):
        run_inline(config(tmp_path, actors=3), tmp_path / "three")
    with pytest.raises(ConfigError, match=r"2 actor\(s\) x 2 thread\(s\) each"):
        run_inline(config(tmp_path, actors=2, ray={"threads_per_actor": 2}), tmp_path / "threads")


@pytest.mark.slow
def test_each_actor_gets_its_share_of_the_cores_and_chunks_inside(tmp_path: Path, local_ray: Any) -> None:
    threads = textwrap.dedent('''
        import os
        import torch
        from pathlib import Path
        EVOENS_ACTOR_SAFE = True

        def evoens_evaluate(run, generation, candidates, batch):
            sizes = [(s.size, s.max_chunk) for s in candidates.species]
            with open(Path(run.config.extra["probe"]["dir"]) / "threads.txt", "a") as fh:
                fh.write(f"{os.getpid()} {torch.get_num_threads()} {sizes}\\n")
    ''')
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "threads.py").write_text(threads)
    cfg = config(tmp_path, actors="max", trainer={"popsize": 10, "max_chunk": 2}, generations=1)
    summary = execute(cfg, tmp_path / "run", manager(plugins))
    rows = (tmp_path / "probe" / "threads.txt").read_text().split("\n")[:-1]
    assert summary["status"] == "finished" and len(rows) == 2  # 'max' = the cluster's 2 CPUs
    assert {row.split(" ", 2)[1] for row in rows} == {"1"}  # 2 actors x 1 thread = 2 cores
    assert sorted(row.split(" ", 2)[2] for row in rows) == ["[(5, 2)]", "[(5, 2)]"]  # halves, chunked by 2
