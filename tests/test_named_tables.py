"""Forward strategies, activations and optimizers are providers: a wrong name is one line naming
the key (at build time, before any data is loaded), and a plugin can add one of each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from evoens import Provider, hookimpl
from evoens.config import ConfigError
from evoens.strategies import LoopStrategy
from evoens.testing import run_inline, tiny_config


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("model", "activation", "relux", "model.activation = 'relux': unknown activation 'relux' (did you mean"),
        ("trainer", "optimizer", "Adam", "trainer.optimizer = 'Adam': unknown optimizer 'Adam' (did you mean 'adam'?)"),
        ("trainer", "strategy", "vamp", "trainer.strategy = 'vamp': unknown strategy 'vamp' (did you mean 'vmap'?)"),
    ],
)
def test_an_unknown_name_is_one_line_naming_the_key(
    tmp_path: Path, section: str, key: str, value: str, expected: str
) -> None:
    config = tiny_config(data={"name": "mnist"}, **{section: {key: value}})  # mnist: fails only if loaded
    with pytest.raises(ConfigError) as err:
        run_inline(config, tmp_path)
    assert str(err.value).startswith(expected) and "known: " in str(err.value) and "\n" not in str(err.value)


class CountingLoop(LoopStrategy):
    name = "counting_loop"
    calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        CountingLoop.calls += 1
        return super().forward(*args, **kwargs)


class Halfsign(nn.Module):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Halfsign.calls += 1
        return 0.5 * torch.tanh(x)


class MyKinds:
    @hookimpl
    def evoens_register_providers(self) -> list[Provider]:
        return [
            Provider("strategy", "counting_loop", CountingLoop, "the loop, counted"),
            Provider("activation", "halfsign", Halfsign, "tanh(x) / 2"),
        ]


def test_a_plugin_adds_a_forward_strategy_and_an_activation(tmp_path: Path) -> None:
    config = tiny_config(generations=2, model={"activation": "halfsign"}, trainer={"strategy": "counting_loop"})
    summary = run_inline(config, tmp_path, MyKinds())
    assert summary["status"] == "finished" and CountingLoop.calls >= 2
    assert Halfsign.calls >= 2 * 8  # the loop runs each of the 8 members' modules every generation


def test_an_option_the_mlp_does_not_take_is_refused_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.options: model 'mlp' takes no options, got foo"):
        run_inline(tiny_config(model={"options": {"foo": 1}}), tmp_path)
