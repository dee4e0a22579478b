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
    pm.hook.evoens_generation_start(run=None, generation=7)
    assert any("evoens_generation_start" in line and "7" in line for line in lines)


def test_plugins_dir_files_are_plugins(tmp_path: Path) -> None:
    (tmp_path / "local_one.py").write_text(GOOD)
    pm = create_plugin_manager(plugins_dir=tmp_path, entry_points=False, env={})
    assert pm.has_plugin("local_one")
    assert pm.registry.get("fitness", "always_one").plugin == "local_one"
