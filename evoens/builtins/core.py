"""The core plugin: trainers, models, fitness functions and datasets as providers, the default
``evoens_evaluate``, and periodic validation/test accuracy in the statistics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from evoens import Provider, hookimpl
from evoens.candidates import Candidates, Evaluation
from evoens.config import ConfigError, DataConfig, ModelConfig, option
from evoens.datasets import DATASETS, DataSplits, load_dataset
from evoens.evolution import EvolutionTrainer, build_evolution
from evoens.fitness import FITNESS
from evoens.gradient import AUTOGRAD, OPTIMIZERS, GradientOptions, GradientTrainer, build_estimator, build_gradient
from evoens.memory import check_population_fits, optimizer_states
from evoens.models import ACTIVATIONS, convnet, mlp
from evoens.run import Run, RunContext, candidate_accuracies
from evoens.strategies import STRATEGIES

# The core's own entries, before any run adds plugins' (evoens.run.TABLES).
_OWN_STRATEGIES, _OWN_ACTIVATIONS, _OWN_OPTIMIZERS = dict(STRATEGIES), dict(ACTIVATIONS), dict(OPTIMIZERS)


def evolution_trainer(run: RunContext, options: None) -> EvolutionTrainer:
    cfg = run.config.trainer
    check_population_fits(cfg.popsize, run.template, run.device, {"solutions": 1, "their samples": 1})
    if cfg.num_actors:
        from evoens import distributed  # Ray is imported only for an actor run

        distributed.preflight(run)
    return build_evolution(
        run.template,
        run.fitness_fn,
        run.registry.get("searcher", cfg.searcher).factory,
        run.batcher,
        popsize=cfg.popsize,
        options=cfg.searcher_options,
        device=run.device,
        seed=run.config.seed,
        num_actors=cfg.num_actors,
        strategy=cfg.strategy,
        max_chunk=cfg.max_chunk,
    )


def gradient_trainer(run: RunContext, options: GradientOptions) -> GradientTrainer:
    cfg = run.config.trainer
    estimates = {"estimates": int(options.grad_estimator != AUTOGRAD)}
    copies = {"weights": 1, "gradients": 1, "optimizer states": optimizer_states(cfg.optimizer), **estimates}
    check_population_fits(cfg.popsize, run.template, run.device, copies)
    return build_gradient(
        run.template,
        run.batcher,
        popsize=cfg.popsize,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        device=run.device,
        seed=run.config.seed,
        strategy=cfg.strategy,
        max_chunk=cfg.max_chunk,
        estimator=build_estimator(run.registry, options),
        fitness_fn=run.fitness_fn,
    )


def _mlp(input_shape: tuple[int, ...], num_outputs: int, cfg: ModelConfig) -> torch.nn.Module:
    return mlp(input_shape, num_outputs, cfg.hidden, cfg.activation)


@dataclass
class NoOptions:
    """A provider that takes no ``options`` (a key there is a mistake, not something to ignore)."""


@dataclass
class ConvNetOptions:
    """``[model.options]`` of ``convnet``."""

    channels: list[int] = option([8, 16], "output channels of each conv (5x5) + 2x2 max-pool stage", ge=1)
    kernel: int = option(5, "conv kernel size (odd: same padding)", ge=1)


def _convnet(input_shape: tuple[int, ...], num_outputs: int, cfg: ModelConfig) -> torch.nn.Module:
    if len(input_shape) != 3:
        raise ConfigError(f"model 'convnet': needs (C, H, W) inputs, got {input_shape}; use an image dataset (mnist)")
    opts = ConvNetOptions(**cfg.options)  # validated by the run's config walker already
    return convnet(input_shape, num_outputs, tuple(opts.channels), opts.kernel, activation=cfg.activation)


def _dataset(name: str) -> Any:
    def factory(cfg: DataConfig, seed: int) -> DataSplits:
        return load_dataset(
            name,
            data_dir=cfg.data_dir,
            seed=seed,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            **cfg.options,
        )

    return factory


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    yield Provider("trainer", "evolution", evolution_trainer, "EvoTorch searcher over the batched population")
    yield Provider("trainer", "gradient", gradient_trainer, "P independent networks, one batched optimizer",
                   options=GradientOptions)  # fmt: skip
    yield Provider("model", "mlp", _mlp, "multi-layer perceptron: model.hidden widths, model.activation",
                   options=NoOptions)  # fmt: skip
    yield Provider("model", "convnet", _convnet, "EvoJAX MNIST ConvNet (options: channels, kernel)",
                   options=ConvNetOptions)  # fmt: skip
    for name, (fn, description) in FITNESS.items():
        yield Provider("fitness", name, lambda fn=fn: fn, description)
    for name in DATASETS:
        yield Provider("dataset", name, _dataset(name), f"dataset '{name}' (evoens.datasets)")
    for name, strategy in _OWN_STRATEGIES.items():
        yield Provider("strategy", name, lambda s=strategy: s, f"population forward: {type(strategy).__name__}")
    for name, module in _OWN_ACTIVATIONS.items():
        yield Provider("activation", name, module, f"torch.nn.{module.__name__}")
    for name, optimizer in _OWN_OPTIMIZERS.items():
        yield Provider("optimizer", name, optimizer, f"torch.optim.{optimizer.__name__}")


@hookimpl(trylast=True)
def evoens_evaluate(run: Run, candidates: Candidates, batch: tuple[torch.Tensor, torch.Tensor]) -> Evaluation:
    """The configured fitness evaluator on one forward of every species."""
    return candidates.evaluate(run.fitness_fn, batch)


@hookimpl
def evoens_after_tell(run: Run, generation: int) -> dict[str, Any] | None:
    """Every ``eval_every`` generations (and at the last one) report held-out accuracy."""
    last = generation + 1 == run.config.generations
    if run.data.num_classes <= 0 or not (last or (generation + 1) % run.config.eval_every == 0):
        return None
    found = candidate_accuracies(run, generation + 1)  # the trainer has told: gen is complete
    return {"val_accuracy": found["val_accuracy"], "test_accuracy": found["test_accuracy"]}
