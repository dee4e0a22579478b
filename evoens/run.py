"""A run: what it holds, how it is assembled from providers, and how its result is judged.

Every component is looked up by name in the registry that plugins fill, so the core has no
branch per dataset, model, trainer or searcher.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from evoens.checkpoint import rng_state, set_rng_state
from evoens.config import ConfigError, RunConfig
from evoens.datasets import Batcher, DataError, DataSplits, Split
from evoens.errors import RegistryError, UserError
from evoens.fitness import FitnessFn, accuracy
from evoens.gradient import OPTIMIZERS
from evoens.kinds import Trainer
from evoens.manager import PluginManager
from evoens.models import ACTIVATIONS
from evoens.phases import explain
from evoens.registry import Registry, checked, factory_failure, raise_as
from evoens.stash import Stash, StashKey
from evoens.strategies import STRATEGIES


@dataclass(frozen=True)
class RunContext:
    """What a run is built from, read-only: provider factories (trainers first of all) get this,
    never the half-built :class:`Run`. ``template`` is the initial architecture of the model
    provider; trainers whose members change shape start from it and go their own way."""

    config: RunConfig
    pm: PluginManager
    out_dir: Path
    device: torch.device
    data: DataSplits
    template: nn.Module
    batcher: Batcher
    fitness_fn: FitnessFn

    @property
    def hook(self) -> Any:
        return self.pm.hook

    @property
    def registry(self) -> Registry:
        return self.pm.registry


@dataclass
class Run:
    """Everything one run holds; plugins receive it as the ``run`` argument of every hook: the
    read-only :class:`RunContext` (also as ``run.config``, ``run.data``, ...), the trainer, the
    progress, and a typed :class:`~evoens.stash.Stash` for plugins' per-run objects."""

    context: RunContext
    trainer: Trainer
    generation: int = 0  # generations completed (= the index of the one in progress)
    best_fitness: float = float("-inf")  # best population fitness seen so far
    started: float = field(default_factory=time.perf_counter)
    summary: dict[str, Any] = field(default_factory=dict)
    stash: Stash = field(default_factory=Stash)
    #: Plugins' state that checkpoints carry and resume restores (the stash does not survive a
    #: process): one dict per plugin, under its name, of tensors and plain values (bool, int,
    #: float, str, lists and dicts of them), e.g. the watchdog's count of non-finite generations.
    persisted: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def config(self) -> RunConfig:
        """The validated run config."""
        return self.context.config

    @property
    def pm(self) -> PluginManager:
        """The plugin manager."""
        return self.context.pm

    @property
    def out_dir(self) -> Path:
        """The run directory."""
        return self.context.out_dir

    @property
    def device(self) -> torch.device:
        """Where the candidates are evaluated."""
        return self.context.device

    @property
    def data(self) -> DataSplits:
        """Train/val/test splits on the device."""
        return self.context.data

    @property
    def template(self) -> nn.Module:
        """The initial architecture."""
        return self.context.template

    @property
    def batcher(self) -> Batcher:
        """The training minibatches."""
        return self.context.batcher

    @property
    def fitness_fn(self) -> FitnessFn:
        """The configured fitness evaluator."""
        return self.context.fitness_fn

    @property
    def hook(self) -> Any:
        """The plugin manager's hook relay."""
        return self.context.hook

    @property
    def registry(self) -> Registry:
        """Every provider of every plugin."""
        return self.context.registry


ACCURACY = StashKey[tuple[int, dict[str, Any]]]()  # candidate_accuracies' memo: (completed, found)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device = '{name}' but no CUDA device is available; use device = 'cpu' or 'auto'")
    return torch.device(name)


#: Kinds whose providers fill a lookup table of the core, so a plugin can add a forward strategy,
#: an activation or an optimizer (the core's own entries are providers of the core plugin).
TABLES: dict[str, dict[str, Any]] = {"strategy": STRATEGIES, "activation": ACTIVATIONS, "optimizer": OPTIMIZERS}


def check_names(config: RunConfig, registry: Registry) -> list[tuple[dict[str, Any], str]]:
    """Every table-kind name in ``config`` is registered (one line naming the key otherwise), and
    every registered one is in its table: plugins' entries are added for this run (returned, for
    :func:`remove_entries` at its end); the core's are there already."""
    chosen = {"strategy": ("trainer.strategy", config.trainer.strategy), "optimizer": ("trainer.optimizer",
              config.trainer.optimizer), "activation": ("model.activation", config.model.activation)}  # fmt: skip
    named = [(kind, key, name) for kind, (key, name) in chosen.items() if (kind, name) != ("strategy", "auto")]
    for kind, key, name in [*named, *(("reporter", "reporters", name) for name in config.reporters)]:
        try:
            registry.get(kind, name)
        except RegistryError as err:
            raise ConfigError(f"{key}: {err}" if kind == "reporter" else f"{key} = {name!r}: {err}") from None
    added = []
    for kind, table in TABLES.items():
        for name in registry.names(kind):
            if name not in table:
                provider = registry.get(kind, name)
                table[name] = provider.factory() if kind == "strategy" else provider.factory
                added.append((table, name))
    return added


def remove_entries(added: list[tuple[dict[str, Any], str]]) -> None:
    """Take a finished run's plugin entries out of the core's tables again."""
    for table, name in added:
        table.pop(name, None)


_S = TypeVar("_S")
ADDED = StashKey[list[tuple[dict[str, Any], str]]]()  # the plugin entries check_names put in TABLES


def build_run(config: RunConfig, out_dir: Path, pm: PluginManager) -> Run:
    """Data, model template, batcher, fitness and trainer, each from its named provider."""
    torch.manual_seed(config.seed)
    registry = pm.registry
    added = check_names(config, registry)
    try:
        run = _assemble(config, out_dir, pm, registry)
    except BaseException:
        remove_entries(added)
        raise
    run.stash[ADDED] = added
    return run


def _assemble(config: RunConfig, out_dir: Path, pm: PluginManager, registry: Registry) -> Run:
    device = resolve_device(config.device)
    data_cfg = _with_options(registry, "dataset", config.data, "data.options")
    model_cfg = _with_options(registry, "model", config.model, "model.options")
    data = _load_data(registry, config, data_cfg).to(device)
    model_args = (data.input_shape, data.num_classes, model_cfg)
    template = registry.build("model", config.model.name, *model_args, like=nn.Module)
    fitness_fn = registry.build("fitness", config.trainer.fitness)
    context = RunContext(
        config, pm, out_dir, device, data, template.to(device),
        Batcher(data.train, config.data.batch_size, config.seed), fitness_fn,
    )  # fmt: skip
    return Run(context, _build_trainer(registry, context))


def _build_trainer(registry: Registry, context: RunContext) -> Trainer:
    """The trainer provider's trainer; out of memory while it builds its population is one line
    with the keys to change, and so is a trainer that asks for Ray actors it does not use."""
    cfg = context.config.trainer
    provider = registry.get("trainer", cfg.name)
    options = registry.options("trainer", cfg.name, cfg.options, "trainer.options")
    try:
        trainer = provider.factory(context, options)
    except Exception as exc:
        failure = explain(context, exc, f"while building trainer '{cfg.name}' (plugin '{provider.plugin}')")
        raise_as(failure or factory_failure(provider, exc), exc)
    checked(provider, trainer, Trainer)
    if cfg.num_actors and not getattr(trainer, "ray_actors", False):
        raise ConfigError(
            f"trainer.num_actors = {cfg.num_actors!r}, but trainer '{cfg.name}' (plugin '{provider.plugin}') "
            "evaluates in this process, not in Ray actors (only trainers with ray_actors = True, such as "
            "'evolution', do): set trainer.num_actors = 0"
        )
    return trainer


def _load_data(registry: Registry, config: RunConfig, data_cfg: Any) -> DataSplits:
    """The dataset provider's splits; a file it cannot read (permissions, a vanished mount) is one line."""
    provider = registry.get("dataset", config.data.name)
    try:
        return checked(provider, provider.factory(data_cfg, config.seed), DataSplits)
    except UserError:
        raise
    except OSError as err:
        plugin = provider.plugin
        where = f"{err.filename}: " if err.filename else ""
        raise DataError(
            f"dataset '{config.data.name}' (plugin '{plugin}') cannot read its files: {where}{err.strerror or err}; "
            "check that the data directory (data.data_dir, --data-dir or EVOENS_DATA_DIR) and the folders above it "
            "are readable and searchable (chmod u+rx)"
        ) from err
    except Exception as exc:
        raise_as(factory_failure(provider, exc), exc)


def _with_options(registry: Registry, kind: str, section: _S, key: str) -> _S:
    """``section`` (a DataConfig or ModelConfig) with its ``options`` validated by the provider's
    options class and completed with its defaults, when the provider declares one; else as is."""
    if registry.get(kind, section.name).options is None:  # type: ignore[attr-defined]
        return section
    options = registry.options(kind, section.name, section.options, key)  # type: ignore[attr-defined]
    return dataclasses.replace(section, options=dataclasses.asdict(options))  # type: ignore[type-var]


def run_state(run: Run) -> dict[str, Any]:
    """Everything :func:`restore_run` needs to continue ``run`` bit-for-bit (see evoens.checkpoint)."""
    return {
        "generation": run.generation,
        "best_fitness": run.best_fitness,
        "trainer": run.trainer.state_dict(),
        "batcher": run.batcher.state_dict(),
        "rng": rng_state(),
        "plugins": copy.deepcopy(run.persisted),
    }


def restore_run(run: Run, state: dict[str, Any]) -> None:
    """Put a freshly built run into the checkpointed state (trainer first: its set-up draws)."""
    run.trainer.load_state_dict(state["trainer"])
    run.batcher.load_state_dict(state["batcher"])
    set_rng_state(state["rng"])
    run.generation = state["generation"]
    run.best_fitness = state["best_fitness"]
    run.persisted = copy.deepcopy(state.get("plugins", {}))  # older checkpoints have none


def split_accuracy(forward: Callable[[torch.Tensor], torch.Tensor], split: Split, chunk: int = 1024) -> torch.Tensor:
    """Accuracy of every member on a whole split, in data chunks to bound memory: ``(P,)``.

    ``forward`` maps a data chunk ``(B, ...)`` to ``(P, B, C)`` logits (a Population does)."""
    hits = torch.zeros((), device=split.x.device)
    with torch.no_grad():
        for start in range(0, len(split.y), chunk):
            x, y = split.x[start : start + chunk], split.y[start : start + chunk]
            hits = hits + accuracy(forward(x), y) * len(y)  # (P,)
    return hits / max(len(split.y), 1)


def candidate_accuracies(run: Run, completed: int) -> dict[str, Any]:
    """Validation and test accuracy of the trainer's ``candidates()`` after ``completed``
    generations; the one with the best validation accuracy (training accuracy when there is no
    validation split) is selected. Memoized per ``completed``: the last generation's report and
    the final summary share one evaluation."""
    cached = run.stash.get(ACCURACY, None)
    if cached is not None and cached[0] == completed:
        return cached[1]
    judge = run.data.val if len(run.data.val.y) else run.data.train
    candidates = run.trainer.candidates()
    val = split_accuracy(candidates.logits, judge)  # (K,)
    pick = int(val.argmax())
    test = split_accuracy(candidates.select([pick]).logits, run.data.test)[0]
    found = {"selected": candidates.names[pick], "val_accuracy": float(val[pick]), "test_accuracy": float(test)}
    run.stash[ACCURACY] = (completed, found)
    return found


def final_evaluation(run: Run) -> dict[str, Any]:
    """Summary entries the core computes after the loop."""
    plugins = [{"name": n, "version": i.version} for n, i in sorted(run.pm.infos.items())]
    result: dict[str, Any] = {"plugins": plugins, "seed": run.config.seed, "device": str(run.device)}
    if run.data.num_classes > 0:
        result.update(candidate_accuracies(run, run.generation))
    return result
