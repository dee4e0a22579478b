"""A third-party provider that is broken is one line naming it and its plugin, before the run
directory exists: a factory that raises, has the wrong signature or returns the wrong thing, a
trainer whose step returns no ``best_fitness``; an unknown reporter or a provider of a plugin
that is not loaded is a config error saying so (the mistakes a newcomer's plugin made)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evoens import Provider, hookimpl
from evoens.builtins.core import evolution_trainer
from evoens.config import ConfigError
from evoens.datasets import load_dataset
from evoens.errors import PluginError, UserError
from evoens.testing import run_inline, tiny_config


class Broken:
    """A plugin ``broken`` whose providers fail in the ways a first plugin does."""

    @hookimpl
    def evoens_register_providers(self) -> list[Provider]:
        def raising(cfg: Any, seed: int) -> Any:
            raise ValueError("no such file: xor.npz\nsecond line")

        return [
            Provider("dataset", "raising", raising),
            Provider("dataset", "tuple", lambda cfg, seed: (None, None)),
            Provider("dataset", "no_seed", lambda cfg: load_dataset(cfg)),
            Provider("model", "not_a_module", lambda shape, n, cfg: "mlp"),
            Provider("trainer", "no_best", lambda context, options: NoBest(evolution_trainer(context, None))),
        ]


class NoBest:
    """The core's evolution trainer, but its step forgets ``best_fitness``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def step(self, generation: int, evaluate: Any) -> dict[str, Any]:
        return {k: v for k, v in self.inner.step(generation, evaluate).items() if k != "best_fitness"}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def fails(tmp_path: Path, error: type[Exception], **overrides: Any) -> str:
    with pytest.raises(error) as err:
        run_inline(tiny_config(generations=1, **overrides), tmp_path / "run", ("broken", Broken()))
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("dataset", "says"),
    [
        ("raising", "dataset 'raising' (plugin 'broken') failed to build: ValueError: no such file: xor.npz;"),
        ("no_seed", "dataset 'no_seed' (plugin 'broken') failed to build: TypeError:"),
        ("tuple", "dataset 'tuple' (plugin 'broken') returned tuple, not evoens.datasets.base.DataSplits"),
    ],
)
def test_a_broken_dataset_factory_is_one_line_naming_it_and_makes_no_directory(
    tmp_path: Path, dataset: str, says: str
) -> None:
    message = fails(tmp_path, PluginError, data={"name": dataset})
    assert says in message and "evoens.kinds" in message
    assert not (tmp_path / "run").exists()


def test_a_model_factory_returning_no_module_is_one_line(tmp_path: Path) -> None:
    message = fails(tmp_path, PluginError, model={"name": "not_a_module"})
    assert "model 'not_a_module' (plugin 'broken') returned str, not torch.nn.modules.module.Module" in message


def test_a_step_without_best_fitness_blames_the_trainer_not_the_loop(tmp_path: Path) -> None:
    message = fails(tmp_path, PluginError, trainer={"name": "no_best"})
    assert message.startswith("trainer 'no_best' (plugin 'broken') returned a dict with keys ")
    assert "at least 'best_fitness'" in message and "'loop'" not in message


def test_an_unknown_reporter_is_a_config_error_before_the_directory_exists(tmp_path: Path) -> None:
    message = fails(tmp_path, ConfigError, reporters=["jsonl", "jsonl_lines"])
    assert message.startswith("reporters: unknown reporter 'jsonl_lines'")
    assert not (tmp_path / "run").exists()


def test_a_provider_of_a_disabled_plugin_names_the_plugin(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:  # exit 2
        run_inline(tiny_config(data={"name": "raising"}), tmp_path / "run", ("broken", Broken()), disable=["broken"])
    assert "unknown dataset 'raising'" in str(err.value)
    assert "not loaded in this run: plugin 'broken' (disabled)" in str(err.value)


def test_debug_is_accepted_after_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from evoens.cli import main

    assert main(["plugins", "--debug"]) == 0
    missing = str(tmp_path / "missing.toml")
    assert main(["run", missing]) == 2 and "config file not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="config file not found"):  # --debug: the traceback, not the line
        main(["run", missing, "--debug"])


def test_a_directory_without_checkpoints_is_not_sent_to_resume(tmp_path: Path) -> None:
    from evoens import rundir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("generations = 1\n")
    (run / "summary.json").write_text('{"status": "failed", "generations": 0}')
    with pytest.raises(rundir.RunDirError) as err:
        rundir.refuse_existing(run)
    assert "evoens resume" not in str(err.value) and "it has no checkpoint to resume" in str(err.value)
