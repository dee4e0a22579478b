"""Plugin loading: entry points, blocking, tracing, and one clear line for each broken plugin."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from evoens import Provider, hookimpl
from evoens.errors import PluginError, RegistryError
from evoens.manager import create_plugin_manager, describe_plugins
from evoens.testing import make_plugin_manager, write_distribution

GOOD = """
from evoens import hookimpl, Provider

@hookimpl
def evoens_register_providers():
    return [Provider("fitness", "always_one", lambda: (lambda out, y: out.new_ones(out.shape[0])))]

@hookimpl
def evoens_report(run, stats):
    pass
"""
MISSPELLED = "from evoens import hookimpl\n\n@hookimpl\ndef evoens_after_tel(run):\n    pass\n"
UNKNOWN_ARG = "from evoens import hookimpl\n\n@hookimpl\ndef evoens_report(run, stats, colour):\n    pass\n"
RAISES = "raise RuntimeError('boom at import')\n"


def _install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str) -> None:
    write_distribution(tmp_path, f"evoens-{module}", "1.2.3", {module: module}, {module: source})
    monkeypatch.syspath_prepend(str(tmp_path))


def _one_line(message: str) -> str:
    assert "\n" not in message
    return message


def test_entry_point_plugin_is_found_with_its_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, "demo_good", GOOD)
    pm = create_plugin_manager(env={})
    assert pm.has_plugin("demo_good") and pm.has_plugin("core")
    row = next(r for r in describe_plugins(pm) if r["name"] == "demo_good")
    assert row["distribution"] == "evoens-demo_good" and row["version"] == "1.2.3"
    assert row["hooks"] == ["evoens_register_providers", "evoens_report"]
    assert row["providers"] == ["fitness:always_one"]
    assert pm.registry.get("fitness", "always_one").plugin == "demo_good"


@pytest.mark.parametrize("how", ["option", "env"])
def test_blocked_plugin_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    _install(tmp_path, monkeypatch, "demo_good", GOOD)
    if how == "option":
        pm = create_plugin_manager(disable=["no:demo_good"], env={})
    else:
        pm = create_plugin_manager(env={"EVOENS_DISABLE_PLUGINS": "other, demo_good"})
    assert not pm.has_plugin("demo_good") and pm.is_blocked("demo_good")
    with pytest.raises(RegistryError, match="unknown fitness 'always_one'"):
        pm.registry.get("fitness", "always_one")


def test_misspelled_hook_is_one_line_naming_plugin_and_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, "demo_typo", MISSPELLED)
    with pytest.raises(PluginError) as err:
        create_plugin_manager(env={})
    message = _one_line(str(err.value))
    assert "plugin 'demo_typo' (evoens-demo_typo 1.2.3)" in message
    assert "unknown hook 'evoens_after_tel'" in message and "did you mean 'evoens_after_tell'" in message


def test_unknown_argument_is_one_line_naming_plugin_and_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(tmp_path, monkeypatch, "demo_arg", UNKNOWN_ARG)
    with pytest.raises(PluginError) as err:
        create_plugin_manager(env={})
    message = _one_line(str(err.value))
    assert "plugin 'demo_arg'" in message and "'evoens_report'" in message and "colour" in message
    assert "run, generation, stats" in message


def test_import_failure_is_reported_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _install(tmp_path, monkeypatch, "demo_boom", RAISES)
    with caplog.at_level(logging.WARNING, logger="evoens"):
        pm = create_plugin_manager(env={})
    assert not pm.has_plugin("demo_boom") and pm.has_plugin("core")
    [record] = [r for r in caplog.records if "demo_boom" in r.getMessage()]
    message = _one_line(record.getMessage())
    assert "plugin 'demo_boom' (evoens-demo_boom 1.2.3) failed to load: RuntimeError: boom at import" in message
    assert [r["error"] for r in describe_plugins(pm) if r["name"] == "demo_boom"] == ["RuntimeError: boom at import"]


def test_import_failure_of_a_required_plugin_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, "demo_boom", RAISES)
    with pytest.raises(PluginError, match="plugin 'demo_boom'.*boom at import"):
        create_plugin_manager(require=["demo_boom"], env={})


def test_unmarked_prefixed_functions_are_hookimpls_and_validated() -> None:
    class Unmarked:
        def evoens_report(self, run: Any, nonsense: Any) -> None: ...

    with pytest.raises(PluginError, match="unknown argument.*nonsense"):
        make_plugin_manager(("unmarked", Unmarked()))


def test_duplicate_and_unknown_provider_names_are_clear() -> None:
    class Twice:
        @hookimpl
        def evoens_register_providers(self) -> list[Provider]:
            return [Provider("searcher", "snes", lambda *a: None)]

    pm = make_plugin_manager(("twice", Twice()))
    with pytest.raises(RegistryError) as err:
        pm.registry
    assert str(err.value) == (
        "searcher 'snes' is registered twice: by plugin 'searchers' and by plugin 'twice'; "
        "disable one of them with -p no:NAME"
    )
    pm = make_plugin_manager()
    with pytest.raises(RegistryError) as err:
        pm.registry.get("searcher", "snse")
    assert str(err.value) == "unknown searcher 'snse' (did you mean 'snes'?); known: cem, cmaes, ga, pgpe, snes, xnes"


def test_tracing_writes_every_hook_call() -> None:
    lines: list[str] = []
    pm = make_plugin_manager()
    from evoens.manager import enable_tracing

    enable_tracing(pm, lines.append)
    pm.hook.evoens_after_ask(run=None, generation=7, candidates=None)  # no built-in implements it
    assert any("evoens_after_ask" in line and "7" in line for line in lines)


def test_plugins_dir_files_are_plugins(tmp_path: Path) -> None:
    (tmp_path / "local_one.py").write_text(GOOD)
    pm = create_plugin_manager(plugins_dir=tmp_path, entry_points=False, env={})
    assert pm.has_plugin("local_one")
    assert pm.registry.get("fitness", "always_one").plugin == "local_one"


EXITS = "import sys\n\nsys.exit(3)\n"


def test_disabling_an_unknown_plugin_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(PluginError) as err:
        create_plugin_manager(disable=["no:reporter"], env={})
    message = _one_line(str(err.value))
    assert message.startswith("-p no:reporter: there is no plugin named 'reporter' (did you mean 'reporters'?)")
    assert "known: " in message and "core" in message and "searchers" in message


def test_a_plugin_calling_sys_exit_at_import_is_reported_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(tmp_path, monkeypatch, "demo_exits", EXITS)
    pm = create_plugin_manager(env={})
    assert not pm.has_plugin("demo_exits") and pm.has_plugin("core")
    [row] = [r for r in describe_plugins(pm) if r["name"] == "demo_exits"]
    assert row["error"] == "SystemExit(3) at import"


def test_import_failure_keeps_its_traceback_for_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _install(tmp_path, monkeypatch, "demo_boom", RAISES)
    with caplog.at_level(logging.INFO, logger="evoens"):
        create_plugin_manager(env={})
    [record] = [r for r in caplog.records if r.getMessage().startswith("traceback of plugin 'demo_boom'")]
    assert "Traceback (most recent call last)" in record.getMessage() and "boom at import" in record.getMessage()


def test_lenient_listing_shows_a_plugin_with_a_bad_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, "demo_typo", MISSPELLED)
    pm = create_plugin_manager(env={}, lenient=True)
    rows = {r["name"]: r for r in describe_plugins(pm)}
    assert rows["demo_typo"]["error"] == "unknown hook 'evoens_after_tel'; did you mean 'evoens_after_tell'?"
    assert rows["demo_typo"]["version"] == "1.2.3" and rows["core"]["error"] is None
    with pytest.raises(PluginError):  # a run still refuses it
        create_plugin_manager(env={})


def test_plugins_dir_files_are_listed_as_local(tmp_path: Path) -> None:
    (tmp_path / "local_one.py").write_text(GOOD)
    pm = create_plugin_manager(plugins_dir=tmp_path, entry_points=False, env={})
    [row] = [r for r in describe_plugins(pm) if r["name"] == "local_one"]
    assert row["distribution"] == str(tmp_path / "local_one.py") and row["version"] == "local"


def test_trace_is_one_short_line_per_call_without_tensor_data(tmp_path: Path) -> None:
    from evoens.manager import enable_tracing
    from evoens.testing import run_inline, tiny_config

    pm_lines: list[str] = []
    stop: list[Any] = []

    class Start:
        @hookimpl(tryfirst=True)
        def evoens_run_start(self, run: Any) -> None:
            stop.append(enable_tracing(run.pm, pm_lines.append))

    run_inline(tiny_config(generations=2), tmp_path / "traced", Start())
    stop[0]()
    lines = "".join(pm_lines).splitlines()
    assert len(lines) == len(pm_lines)  # each write is exactly one line
    evaluate = [line for line in lines if line.lstrip().startswith("evoens_evaluate(")]
    assert len(evaluate) == 2
    assert "run=Run(" in evaluate[0] and "traced)" in evaluate[0]
    assert "batch=(Tensor[128, 64] float32 cpu, Tensor[128] int64 cpu)" in evaluate[0]
    assert sum(line.lstrip().startswith("evoens_report(") for line in lines) == 2
    assert max(len(line) for line in lines) < 400
    assert "tensor(" not in "".join(lines) and "RunConfig(" not in "".join(lines)
