"""Trainer ``r2r_ne``: the block-level R2R neuroevolution of :mod:`evoens_morph.ne` under ``evoens run``.

M. Painter, "Deep Neuroevolution with Shared Parameters: Ensembling a Better Solution" (cs231n
report, Stanford 2018), Algorithm 1.

Generation 0 trains the base network for ``initial_steps`` (N_i). Every later generation is one
iteration: select ``select_k`` (K) members on the validation split, refill to ``trainer.popsize``
(M) with function-preserving mutants, train them jointly for ``steps_per_iteration`` (N_j) steps.
Then the members, one species per architecture, are the generation's candidates, evaluated on the
validation split through the engine's phases (so every per-generation hook sees them); selection
reads the correctness of the outputs that evaluation returns. ``generations = 1 + I`` gives exactly
:func:`~evoens_morph.ne.neuroevolve` with ``iterations = I`` (same seed, same draws).

Knobs: ``trainer.popsize`` (M), ``trainer.lr``, ``trainer.weight_decay``, ``data.batch_size`` and
``[trainer.options]`` (:class:`NEOptions`). Flat square inputs (digits' 64, MNIST's 784) are read
as one-channel images. Its checkpoint stores the filter bank as plain block descriptions with state
dicts (loadable with ``weights_only=True``); a resumed run continues exactly and shared blocks stay
shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from evoens.candidates import Candidates
from evoens.config import ConfigError, option
from evoens.fitness import fitness_stats
from evoens.phases import Evaluate
from evoens_morph.genome import FilterBank, Gene
from evoens_morph.ne import (
    Individual,
    MutationConfig,
    NEConfig,
    batch_sampler,
    iterate,
    make_individual,
    mutate,
    num_params,
    train_base,
)
from evoens_morph.select import select_best, select_diverse

SELECT = {"best": select_best, "diverse": select_diverse}


@dataclass
class NEOptions:
    """``[trainer.options]`` of ``r2r_ne``."""

    initial_steps: int = option(1000, "N_i: optimiser steps of the base network (generation 0)", ge=0)
    steps_per_iteration: int = option(500, "N_j: joint optimiser steps per later generation", ge=0)
    select_k: int = option(3, "K: members kept each generation", ge=1)
    widths: list[int] = option([8, 16, 32], "channels of the base network's residual stages", ge=1)
    p_deepen: float = option(0.5, "probability that a mutation deepens (else it widens)", ge=0, le=1)
    kernel_probs: dict[str, float] = option(
        {"1": 0.3, "3": 0.35, "5": 0.35}, "kernel size -> probability for new blocks, e.g. {1 = 0.3, 3 = 0.7}"
    )
    share_weights: bool = option(True, "children share their parent's blocks (true) or get copies (false)")
    select: str = option("best", "'best' (most accurate) or 'diverse' (rewards complementary errors)",
                         choices=tuple(SELECT))  # fmt: skip
    amsgrad: bool = option(True, "AMSGrad in every member's Adam")
    eval_batch: int = option(1000, "examples per validation forward", ge=1)

    @classmethod
    def tiny(cls) -> NEOptions:
        """A run of seconds, for conformance tests."""
        return cls(initial_steps=4, steps_per_iteration=4, select_k=1, widths=[4], eval_batch=256)


def ne_config(opts: NEOptions, *, popsize: int, lr: float, weight_decay: float, batch_size: int,
              strategy: str, seed: int, iterations: int) -> NEConfig:  # fmt: skip
    """An :class:`NEConfig` from the run config; any mistake is one :class:`ConfigError` line."""
    try:
        mutation = MutationConfig(
            p_deepen=opts.p_deepen, kernel_probs={int(k): float(v) for k, v in opts.kernel_probs.items()},
            share_weights=opts.share_weights,
        )  # fmt: skip
        return NEConfig(
            initial_steps=opts.initial_steps, steps_per_iteration=opts.steps_per_iteration, select_k=opts.select_k,
            population=popsize, iterations=iterations, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
            widths=tuple(opts.widths), mutation=mutation, eval_batch=opts.eval_batch,
            strategy="vmap" if strategy == "auto" else strategy, seed=seed, amsgrad=opts.amsgrad,
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        raise ConfigError(f"trainer 'r2r_ne', trainer.options: {err}") from None


def image_view(x: Tensor, dataset: str) -> tuple[int, int, int]:
    """The (C, H, H) image shape of inputs ``x`` (N, ...): as given, or a flat square as one channel."""
    shape = tuple(x.shape[1:])
    if len(shape) == 3 and shape[1] == shape[2]:
        return shape  # type: ignore[return-value]
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    if side and side * side == shape[0]:
        return (1, side, side)
    raise ConfigError(
        f"trainer 'r2r_ne' needs square images (C, H, H) or flat square inputs, but dataset '{dataset}' "
        f"gives {shape}; use an image dataset such as mnist or digits"
    )


class NETrainer:
    """One generation = the base training (generation 0) or one NE iteration, then one evaluation
    of every member on the validation split."""

    def __init__(self, cfg: NEConfig, select: str, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                 image: tuple[int, int, int]) -> None:  # fmt: skip
        self.cfg, self.select, self.image = cfg, SELECT[select], image
        self.flat_inputs = train[0].dim() == 2  # the run's data is (N, C*H*W): candidates unflatten it
        self.train = (train[0].reshape(-1, *image), train[1])  # (N, C, H, H)
        self.val = (val[0].reshape(-1, *image), val[1])
        self.bank: FilterBank | None = None
        self.pop: list[Individual] = []
        self.correct: Tensor | None = None  # (M, N_val) of the current population
        self.next_uid = 1
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)  # the evolution's stream (neuroevolve's)
        self.batches = batch_sampler(*self.train, cfg.batch_size, self.gen)

    def step(self, generation: int, evaluate: Evaluate) -> dict[str, Any]:
        if self.bank is None:
            self.bank, base = train_base(self.train, self.cfg)
            self.pop = [base]
        else:
            assert self.correct is not None
            _, self.pop, self.next_uid = iterate(
                self.bank, self.pop, self.correct, self.cfg, self.gen, self.batches, self.select, mutate, self.next_uid
            )
        candidates = self._candidates([ind.model for ind in self.pop])
        fitness, clean, outputs = evaluate(candidates, self.val)
        logits = candidates.logits(self.val[0]) if outputs is None else candidates.gather(outputs)  # (M, N, C)
        self.correct = (logits.argmax(-1) == self.val[1]).float()  # (M, N) validation correctness
        for ind, acc in zip(self.pop, self.correct.mean(1).tolist()):
            ind.val_accuracy = acc
        best = self.pop[int(clean.argmax())]
        return {
            **fitness_stats(clean), "population": len(self.pop), "best_val_accuracy": self.correct.mean(1).max(),
            "best_params": num_params(best.model), "bank_blocks": len(self.bank),
        }  # fmt: skip

    def _candidates(self, models: list[nn.Module]) -> Candidates:
        """``models`` in eval mode as species (one batched population per architecture)."""
        for m in models:
            m.eval()  # training sets train mode again before every step
        names = [f"ne{ind.uid}" for ind in self.pop]
        return Candidates.from_modules(models, names, batch_chunk=self.cfg.eval_batch, strategy=self.cfg.strategy)

    def candidates(self) -> Candidates:
        """Every member, taking the run's inputs as they come: ``ne3`` is the member of uid 3."""
        models = [ind.model for ind in self.pop]
        if self.flat_inputs:
            models = [nn.Sequential(nn.Unflatten(1, self.image), m) for m in models]
        return self._candidates(models)

    def state_dict(self) -> dict[str, Any]:
        return {
            "bank": None if self.bank is None else self.bank.state_dict(),
            "population": [individual_state(ind) for ind in self.pop],
            "correct": self.correct,
            "next_uid": self.next_uid,
            "generator": self.gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["generator"])
        self.next_uid, self.correct = state["next_uid"], state["correct"]
        self.bank = None if state["bank"] is None else FilterBank.from_state(state["bank"], self.train[0].device)
        self.pop = [load_individual(self.bank, s, self.cfg.amsgrad) for s in state["population"]]  # type: ignore[arg-type]


# ------------------------------------------------------------------ checkpoint form (plain data)


def individual_state(ind: Individual) -> dict[str, Any]:
    return {
        "genome": [[g.layer_id, list(g.block_ids)] for g in ind.genome],
        "optimizer": ind.optimizer.state_dict(),
        "lr": ind.lr,
        "weight_decay": ind.weight_decay,
        "uid": ind.uid,
        "parent": ind.parent,
        "val_accuracy": ind.val_accuracy,
    }


def load_individual(bank: FilterBank, state: dict[str, Any], amsgrad: bool) -> Individual:
    genome = tuple(Gene(lid, tuple(bids)) for lid, bids in state["genome"])
    ind = make_individual(
        bank, genome, state["lr"], state["weight_decay"], state["uid"], state["parent"], amsgrad=amsgrad
    )
    ind.optimizer.load_state_dict(state["optimizer"])
    ind.val_accuracy = state["val_accuracy"]
    return ind


def build_ne_trainer(run: Any, options: NEOptions) -> NETrainer:
    """The ``r2r_ne`` trainer provider: an :class:`NETrainer` from the run's config and data."""
    t, data = run.config.trainer, run.data
    cfg = ne_config(
        options, popsize=t.popsize, lr=t.lr, weight_decay=t.weight_decay, batch_size=run.config.data.batch_size,
        strategy=t.strategy, seed=run.config.seed, iterations=max(0, run.config.generations - 1),
    )  # fmt: skip
    judge = data.val if len(data.val.y) else data.train
    image = image_view(data.train.x, data.name)
    return NETrainer(cfg, options.select, (data.train.x, data.train.y), (judge.x, judge.y), image)
