"""Tests for evoens.config: defaults, validation messages, overrides and the TOML round trip."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from evoens.config import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    PluginsConfig,
    RunConfig,
    TrainerConfig,
    config_from_dict,
    config_to_dict,
    dump_toml,
    load_config,
    loads_config,
)

FULL_EXAMPLE = """
seed = 7
generations = 2000
device = "cpu"
eval_every = 50
reporters = ["jsonl"]

[data]
name = "mnist"
batch_size = 1024
val_fraction = 0.0
test_fraction = 0.25
data_dir = "/data/mnist"
options = { normalize = true }

[model]
name = "convnet"
hidden = [64, 32]
activation = "relu"

[model.options]
channels = [8, 16]

[trainer]
name = "evolution"
popsize = 64
searcher = "snes"
fitness = "accuracy"
optimizer = "sgd"
lr = 1
weight_decay = 1e-4
num_actors = "max"
max_chunk = 16
strategy = "bmm"

[trainer.searcher_options]
center_learning_rate = 0.15
stdev_init = 0.1

[plugins]
disable = ["evoens_morph"]
require = ["evoens_binary"]

[checkpoint]
every = 100
keep = 3

[extra.myplugin]
alpha = 0.5
tags = ["a", "b"]

[extra.myplugin.nested]
deep = { x = 1 }
"""


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        loads_config(text, overrides)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# --- defaults and a full example --------------------------------------------------------------


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg == RunConfig()
    assert (cfg.seed, cfg.generations, cfg.device, cfg.eval_every) == (0, 100, "auto", 10)
    assert cfg.reporters == ["jsonl", "tensorboard", "plot"]
    assert cfg.data == DataConfig("digits", 0, 0.1, 0.2, None, {})
    assert cfg.model == ModelConfig("mlp", [32], "tanh", {})
    assert cfg.trainer.popsize == 64 and cfg.trainer.searcher == "pgpe"
    assert cfg.trainer.num_actors == 0 and cfg.trainer.max_chunk is None
    assert cfg.plugins == PluginsConfig([], [])
    assert cfg.checkpoint == CheckpointConfig(0, 2)
    assert cfg.extra == {}


def test_mutable_defaults_are_not_shared() -> None:
    a, b = RunConfig(), RunConfig()
    a.model.hidden.append(5)
    a.reporters.clear()
    a.extra["x"] = 1
    assert b.model.hidden == [32] and b.reporters == ["jsonl", "tensorboard", "plot"] and b.extra == {}


def test_full_example_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))
    assert cfg.seed == 7 and cfg.generations == 2000 and cfg.device == "cpu"
    assert cfg.data.data_dir == "/data/mnist" and cfg.data.options == {"normalize": True}
    assert cfg.data.val_fraction == 0.0
    assert cfg.model.hidden == [64, 32] and cfg.model.options == {"channels": [8, 16]}
    t = cfg.trainer
    assert (t.searcher, t.fitness, t.optimizer, t.strategy) == ("snes", "accuracy", "sgd", "bmm")
    assert t.num_actors == "max" and t.max_chunk == 16 and t.weight_decay == 1e-4
    assert t.searcher_options == {"center_learning_rate": 0.15, "stdev_init": 0.1}
    assert cfg.plugins.disable == ["evoens_morph"] and cfg.plugins.require == ["evoens_binary"]
    assert cfg.checkpoint == CheckpointConfig(every=100, keep=3)
    assert cfg.extra == {"myplugin": {"alpha": 0.5, "tags": ["a", "b"], "nested": {"deep": {"x": 1}}}}


def test_int_accepted_for_float_and_stored_as_float() -> None:
    cfg = loads_config("[trainer]\nlr = 1\nweight_decay = 0")
    assert cfg.trainer.lr == 1.0 and isinstance(cfg.trainer.lr, float)
    assert isinstance(cfg.trainer.weight_decay, float)


def test_union_and_optional_fields() -> None:
    assert loads_config("[trainer]\nnum_actors = 4").trainer.num_actors == 4
    assert loads_config("[trainer]\nnum_actors = 'num_gpus'").trainer.num_actors == "num_gpus"
    assert config_from_dict({"trainer": {"max_chunk": None}}).trainer.max_chunk is None
    assert config_from_dict({"data": {"data_dir": None}}).data.data_dir is None


def test_config_from_dict_copies_its_input() -> None:
    raw: dict[str, Any] = {"model": {"hidden": [4]}, "extra": {"p": {"xs": [1]}}}
    cfg = config_from_dict(raw)
    raw["model"]["hidden"].append(5)
    raw["extra"]["p"]["xs"].append(2)
    assert cfg.model.hidden == [4] and cfg.extra == {"p": {"xs": [1]}}


def test_every_field_has_help_text() -> None:
    for cls in (RunConfig, DataConfig, ModelConfig, TrainerConfig, PluginsConfig, CheckpointConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


# --- every error is one line naming the key, the value and what is allowed ----------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # wrong type
        ("[trainer]\npopsize = 'ten'", ["trainer.popsize = 'ten'", "expected an integer"]),
        ("[trainer]\nlr = 'fast'", ["trainer.lr = 'fast'", "expected a number"]),
        ("[trainer]\nnum_actors = 1.5", ["trainer.num_actors = 1.5", "an integer or a string"]),
        ("[trainer]\nmax_chunk = 'big'", ["trainer.max_chunk = 'big'", "expected an integer"]),
        ("[data]\nname = 3", ["data.name = 3", "expected a string"]),
        ("reporters = 'jsonl'", ["reporters = 'jsonl'", "expected a list of strings"]),
        ("[model]\nhidden = [64, 'x']", ["model.hidden[1] = 'x'", "expected an integer"]),
        ("data = 3", ["data = 3", "expected a table"]),
        ("extra = [1]", ["extra = [1]", "expected a table"]),
        ("[data]\noptions = 1", ["data.options = 1", "expected a table"]),
        # out of range
        ("[trainer]\nlr = -1.0", ["trainer.lr = -1.0", "must be > 0"]),
        ("[trainer]\nlr = nan", ["trainer.lr = nan", "must be > 0"]),
        ("[trainer]\npopsize = 0", ["trainer.popsize = 0", "must be >= 1"]),
        ("[trainer]\nnum_actors = -2", ["trainer.num_actors = -2", "must be >= 0"]),
        ("[trainer]\nmax_chunk = 0", ["trainer.max_chunk = 0", "must be >= 1"]),
        ("[trainer]\nweight_decay = -0.1", ["trainer.weight_decay = -0.1", "must be >= 0"]),
        ("seed = -1", ["seed = -1", "must be >= 0"]),
        ("generations = 0", ["generations = 0", "must be >= 1"]),
        ("[data]\nval_fraction = 0.9", ["data.val_fraction = 0.9", "must be in [0, 0.9)"]),
        ("[data]\ntest_fraction = 0", ["data.test_fraction = 0.0", "must be in (0, 0.9)"]),
        ("[data]\nbatch_size = -5", ["data.batch_size = -5", "must be >= 0"]),
        ("[model]\nhidden = [64, 0]", ["model.hidden[1] = 0", "must be >= 1"]),
        ("[checkpoint]\nkeep = 0", ["checkpoint.keep = 0", "must be >= 1"]),
        # bad choice
        ("device = 'gpu'", ["device = 'gpu'", "one of auto, cpu, cuda"]),
        (
            "[trainer]\nnum_actors = 'maxx'",
            [
                "trainer.num_actors = 'maxx'",
                "max, num_cpus, num_gpus, num_devices",
                "or an integer >= 0",
            ],
        ),
        # unknown keys
        (
            "[trainer]\npopsze = 3",
            [
                "unknown key 'trainer.popsze'",
                "did you mean 'popsize'",
                "allowed keys in [trainer]: name, popsize",
            ],
        ),
        (
            "seeed = 1",
            ["unknown key 'seeed'", "did you mean 'seed'", "allowed keys at the top level"],
        ),
        ("[dat]\nname = 'x'", ["unknown key 'dat'", "did you mean 'data'"]),
        ("popsize = 3", ["unknown key 'popsize'", "did you mean 'trainer.popsize'"]),
        (
            "[checkpoint]\nzzz = 1",
            ["unknown key 'checkpoint.zzz'", "allowed keys in [checkpoint]: every, keep"],
        ),
    ],
)
def test_errors_are_one_line_with_key_value_and_allowed(text: str, expected: list[str]) -> None:
    message = error_of(text)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    message = error_of("[trainer]\nqqqqqqq = 1")
    assert "did you mean" not in message and "allowed keys in [trainer]" in message


def test_bool_is_not_an_integer_nor_a_number() -> None:
    assert "seed = True: expected an integer" in error_of("seed = true")
    assert "trainer.popsize = False: expected an integer" in error_of("[trainer]\npopsize = false")
    assert "trainer.lr = True: expected a number" in error_of("[trainer]\nlr = true")
    assert "model.hidden[0] = True" in error_of("[model]\nhidden = [true]")
    assert "trainer.num_actors = True" in error_of("[trainer]\nnum_actors = true")


def test_error_values_with_newlines_stay_on_one_line() -> None:
    message = error_of('device = "cu\\nda"')
    assert "device = 'cu\\nda'" in message
    message = error_of('[trainer]\n"pop\\nsize" = 1')
    assert "unknown key 'trainer.pop\\nsize'" in message


def test_long_values_are_shortened() -> None:
    message = error_of(f"[data]\nname = [{', '.join(['1'] * 200)}]")
    assert message.startswith("data.name = [1, 1,") and "..." in message and len(message) < 200


def test_config_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        config_from_dict([1, 2])  # type: ignore[arg-type]


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- files -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value) and "\n" not in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory") as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "seed = 1\n[trainer]\npopsize = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "invalid TOML" in message and "line 3" in message
    assert "\n" not in message


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'seed = 1\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_load_config_accepts_str_paths(tmp_path: Path) -> None:
    assert load_config(str(write(tmp_path, "seed = 3"))).seed == 3


# --- overrides -------------------------------------------------------------------------------


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "seed = 1\n[trainer]\npopsize = 8\n")
    cfg = load_config(
        path,
        [
            "trainer.popsize=128",
            "data.name=mnist",
            "model.hidden=[64,32]",
            "trainer.lr = 0.5",
            "trainer.num_actors=max",
            "seed=5",
            "data.data_dir=/tmp/some dir/x",
            "extra.myplugin.alpha=0.25",
            'extra."dotted.name".on=true',
            "trainer.searcher_options={stdev_init = 0.2}",
        ],
    )
    assert cfg.trainer.popsize == 128 and cfg.seed == 5
    assert cfg.data.name == "mnist" and cfg.data.data_dir == "/tmp/some dir/x"
    assert cfg.model.hidden == [64, 32] and cfg.trainer.lr == 0.5
    assert cfg.trainer.num_actors == "max"
    assert cfg.extra == {"myplugin": {"alpha": 0.25}, "dotted.name": {"on": True}}
    assert cfg.trainer.searcher_options == {"stdev_init": 0.2}


def test_override_values_quoted_to_force_a_string() -> None:
    assert loads_config("", ['data.name="123"']).data.name == "123"
    # unquoted, 123 parses as a TOML integer: a clear error, not a silent conversion
    assert "data.name = 123: expected a string" in error_of("", ("data.name=123",))


def test_later_override_wins() -> None:
    assert loads_config("", ["seed=1", "seed=2"]).seed == 2


def test_a_lone_override_string_is_not_split_into_characters() -> None:
    assert loads_config("", "seed=4").seed == 4  # type: ignore[arg-type]


@pytest.mark.parametrize("override", ["trainer.popsize", "=3", " = 3", "a b=3", "trainer..popsize=3"])
def test_malformed_override(override: str) -> None:
    message = error_of("", (override,))
    assert "malformed override" in message and repr(override) in message


def test_override_errors_name_the_key() -> None:
    assert "trainer.popsize = 'many': expected an integer" in error_of("", ("trainer.popsize=many",))
    assert "unknown key 'trainer.popsze'" in error_of("", ("trainer.popsze=3",))
    message = error_of("seed = 1", ("seed.x=1",))
    assert "seed.x=1" in message and "not a table" in message


# --- writing and the round trip --------------------------------------------------------------


def round_trip(cfg: RunConfig, tmp_path: Path) -> RunConfig:
    return load_config(write(tmp_path, dump_toml(cfg), "resolved.toml"))


def test_round_trip_defaults(tmp_path: Path) -> None:
    assert round_trip(RunConfig(), tmp_path) == RunConfig()


def test_round_trip_full_example(tmp_path: Path) -> None:
    cfg = loads_config(FULL_EXAMPLE)
    assert round_trip(cfg, tmp_path) == cfg


def test_round_trip_awkward_values(tmp_path: Path) -> None:
    cfg = RunConfig(
        seed=2**62,
        reporters=[],
        data=DataConfig(name='we"ird\\na\tme\n\x7f é ☃', data_dir="C:\\data", val_fraction=0.0),
        model=ModelConfig(hidden=[], activation="identity", options={"": 1, "a b": {"c.d": [1.5e-300]}}),
        trainer=TrainerConfig(lr=1e-7, weight_decay=1e300, num_actors="num_devices", max_chunk=3),
        plugins=PluginsConfig(disable=["x"], require=["y", "z"]),
        checkpoint=CheckpointConfig(every=1, keep=1),
        extra={
            "empty": {},
            "p": {
                "list_of_tables": [{"a": 1}, {"b": [True, False]}],
                "nested": {"deeper": {"x": -0.0}},
            },
            "dates": {"when": __import__("datetime").date(2024, 1, 2)},
            "inf": float("inf"),
        },
    )
    back = round_trip(cfg, tmp_path)
    assert back == cfg
    assert math.copysign(1.0, back.extra["p"]["nested"]["deeper"]["x"]) == -1.0


def test_dump_omits_none_and_is_valid_toml() -> None:
    text = dump_toml(RunConfig())
    assert "data_dir" not in text and "max_chunk" not in text
    assert loads_config(text) == RunConfig()
    assert "max_chunk = 4" in dump_toml(RunConfig(trainer=TrainerConfig(max_chunk=4)))


def test_dump_accepts_a_dict_and_config_to_dict_is_plain() -> None:
    cfg = RunConfig(model=ModelConfig(hidden=[3]))
    d = config_to_dict(cfg)
    assert d["model"]["hidden"] == [3] and d["trainer"]["max_chunk"] is None
    assert config_from_dict(d) == cfg
    d["model"]["hidden"].append(4)
    assert cfg.model.hidden == [3]
    assert loads_config(dump_toml(config_to_dict(cfg))) == cfg


def test_dump_layout_is_readable() -> None:
    text = dump_toml(loads_config(FULL_EXAMPLE))
    assert text.startswith("seed = 7\n")
    assert "\n[trainer]\n" in text and "\n[trainer.searcher_options]\n" in text
    assert "\n[extra.myplugin]\n" in text and "\n[extra.myplugin.nested.deep]\n" in text


def test_dump_rejects_unwritable_values() -> None:
    with pytest.raises(ConfigError, match="cannot write"):
        dump_toml({"x": object()})
    with pytest.raises(ConfigError, match="cannot write"):
        dump_toml({"x": [1, None]})
    with pytest.raises(TypeError):
        dump_toml(3)
