"""Trainer ``r2r-ne``: the block-level R2R neuroevolution of :mod:`evoens_morph.ne` under ``evoens run``.

M. Painter, "Deep Neuroevolution with Shared Parameters: Ensembling a Better Solution" (cs231n
report, Stanford 2018), Algorithm 1.

Generation 0 trains the base network for ``initial_steps`` (N_i). Every later generation is one
iteration: select ``select_k`` (K) members on the validation split, refill to ``trainer.popsize``
(M) with function-preserving mutants, train them jointly for ``steps_per_iteration`` (N_j) steps,
then score every member on the validation split; those accuracies are the generation's fitness.
``generations = 1 + I`` gives exactly :func:`~evoens_morph.ne.neuroevolve` with ``iterations = I``
(same seed, same draws).

Knobs: ``trainer.popsize`` (M), ``trainer.lr``, ``trainer.weight_decay``, ``data.batch_size`` and,
in ``trainer.searcher_options``, the keys of :data:`OPTIONS`. Flat square inputs (digits' 64,
MNIST's 784) are read as one-channel images. The members differ in architecture, so the trainer
offers ``candidate_models()`` instead of flat vectors, and the hooks that take the flat ``(P, D)``
population (``evoens_after_ask``, ``evoens_evaluate``) are not called; ``evoens_after_evaluate``
and ``evoens_after_tell`` are, with the validation accuracies as fitness. Its checkpoint stores
the filter bank as plain block descriptions with state dicts (loadable with ``weights_only=True``);
a resumed run continues exactly and shared blocks stay shared.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from evoens.config import ConfigError
from evoens.fitness import fitness_stats
from evoens_morph.genome import FilterBank, Gene
from evoens_morph.ne import (
    Individual,
    MutationConfig,
    NEConfig,
    batch_sampler,
    evaluate,
    iterate,
    make_individual,
    mutate,
    num_params,
    train_base,
)
from evoens_morph.select import select_best, select_diverse

OPTIONS = {
    "initial_steps": "N_i: optimiser steps of the base network (generation 0)",
    "steps_per_iteration": "N_j: joint optimiser steps per later generation",
    "select_k": "K: members kept each generation",
    "widths": "channels of the base network's residual stages, e.g. [8, 16, 32]",
    "p_deepen": "probability that a mutation deepens (else it widens)",
    "kernel_probs": "kernel size -> probability for new blocks, e.g. {1 = 0.3, 3 = 0.35, 5 = 0.35}",
    "share_weights": "children share their parent's blocks (true) or get copies (false)",
    "select": "'best' (most accurate) or 'diverse' (greedy, rewards complementary errors)",
    "amsgrad": "AMSGrad in every member's Adam",
    "eval_batch": "examples per validation forward",
}
SELECT = {"best": select_best, "diverse": select_diverse}


def ne_config(options: dict[str, Any], *, popsize: int, lr: float, weight_decay: float, batch_size: int,
              strategy: str, seed: int, iterations: int) -> NEConfig:  # fmt: skip
    """An :class:`NEConfig` from the run config; any mistake is one :class:`ConfigError` line."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"trainer.searcher_options: unknown key(s) {', '.join(unknown)} for trainer 'r2r-ne'; "
            f"allowed: {', '.join(OPTIONS)}"
        )
    opts = {k: v for k, v in options.items() if k != "select"}
    mutation = {k: opts.pop(k) for k in ("p_deepen", "kernel_probs", "share_weights") if k in opts}
    try:
        if "kernel_probs" in mutation:
            mutation["kernel_probs"] = {int(k): float(v) for k, v in dict(mutation["kernel_probs"]).items()}
        if "widths" in opts:
            opts["widths"] = tuple(int(w) for w in opts["widths"])
        return NEConfig(
            population=popsize, lr=lr, weight_decay=weight_decay, batch_size=batch_size, iterations=iterations,
            strategy="vmap" if strategy == "auto" else strategy, seed=seed, mutation=MutationConfig(**mutation),
            **opts,
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        raise ConfigError(f"trainer 'r2r-ne', trainer.searcher_options: {err}") from None


def image_view(x: Tensor, dataset: str) -> tuple[int, int, int]:
    """The (C, H, H) image shape of inputs ``x`` (N, ...): as given, or a flat square as one channel."""
    shape = tuple(x.shape[1:])
    if len(shape) == 3 and shape[1] == shape[2]:
        return shape  # type: ignore[return-value]
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    if side and side * side == shape[0]:
        return (1, side, side)
    raise ConfigError(
        f"trainer 'r2r-ne' needs square images (C, H, H) or flat square inputs, but dataset '{dataset}' "
        f"gives {shape}; use an image dataset such as mnist or digits"
    )


class NETrainer:
    """One generation = the base training (generation 0) or one NE iteration."""

    def __init__(self, cfg: NEConfig, select: str, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                 image: tuple[int, int, int], hooks: Any) -> None:  # fmt: skip
        if select not in SELECT:
            raise ConfigError(f"trainer.searcher_options.select = {select!r}: use one of {', '.join(SELECT)}")
        self.cfg, self.select, self.hooks, self.image = cfg, SELECT[select], hooks, image
        self.flat_inputs = train[0].dim() == 2  # the run's data is (N, C*H*W): candidates unflatten it
        self.train = (train[0].reshape(-1, *image), train[1])  # (N, C, H, H)
        self.val = (val[0].reshape(-1, *image), val[1])
        self.bank: FilterBank | None = None
        self.pop: list[Individual] = []
        self.correct: Tensor | None = None  # (M, N_val) of the current population
        self.next_uid = 1
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)  # the evolution's stream (neuroevolve's)
        self.batches = batch_sampler(*self.train, cfg.batch_size, self.gen)

    def step(self, generation: int) -> dict[str, Any]:
        if self.bank is None:
            self.bank, base = train_base(self.train, self.cfg)
            self.pop = [base]
        else:
            assert self.correct is not None
            _, self.pop, self.next_uid = iterate(
                self.bank, self.pop, self.correct, self.cfg, self.gen, self.batches, self.select, mutate, self.next_uid
            )
        self.correct = evaluate(self.pop, self.val, self.cfg)
        fitness = self.correct.mean(1)  # (M,) validation accuracy
        extras = self.hooks.after_evaluate(fitness)
        best = self.pop[int(fitness.argmax())]
        stats: dict[str, Any] = {**fitness_stats(fitness), "population": len(self.pop), **extras}
        stats.update(best_params=num_params(best.model), bank_blocks=len(self.bank))
        stats.update(self.hooks.after_tell(stats))
        return stats

    def candidate_models(self) -> dict[str, nn.Module]:
        """Every member, taking the run's inputs as they come: ``{"ne3": module}`` (uid 3)."""
        if not self.flat_inputs:
            return {f"ne{ind.uid}": ind.model for ind in self.pop}
        return {f"ne{ind.uid}": nn.Sequential(nn.Unflatten(1, self.image), ind.model) for ind in self.pop}

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


def build_ne_trainer(run: Any) -> NETrainer:
    """The ``r2r-ne`` trainer provider: an :class:`NETrainer` from the run's config and data."""
    t, data = run.config.trainer, run.data
    options = dict(t.searcher_options)
    cfg = ne_config(
        options, popsize=t.popsize, lr=t.lr, weight_decay=t.weight_decay, batch_size=run.config.data.batch_size,
        strategy=t.strategy, seed=run.config.seed, iterations=max(0, run.config.generations - 1),
    )  # fmt: skip
    judge = data.val if len(data.val.y) else data.train
    image = image_view(data.train.x, data.name)
    return NETrainer(
        cfg, options.get("select", "best"), (data.train.x, data.train.y), (judge.x, judge.y), image, run.hooks
    )
