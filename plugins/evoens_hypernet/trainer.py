"""Trainer ``hypernet``: a weight generator trained by a torch optimizer, one meta-step a generation.

vq-ensemble (A. Nichol, 2020; ``train_mnist.py``). Each generation samples ``trainer.popsize`` (B)
codes from the code stream, decodes them into B members (one batched population), gives every
member its own minibatch of ``data.batch_size`` examples (B draws of the run's batcher), evaluates
them through the engine's phases (every evaluation hook sees the members) and takes one optimizer
step (``trainer.optimizer`` at ``trainer.lr``, the original's Adam at 1e-4) on the meta-loss of
:mod:`evoens_hypernet.meta`. The run's candidates are E = ``ensemble`` members of fixed codes drawn
once from the seed, so every evaluation and the final judgement see the same ensemble.

Checkpoints hold the generator, its optimizer and the code stream: a resumed run continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from evoens.candidates import Candidates
from evoens.config import option
from evoens.datasets import Batcher
from evoens.fitness import fitness_stats
from evoens.phases import Evaluate
from evoens_hypernet.generator import Generator
from evoens_hypernet.meta import OBJECTIVES, MetaTerms, meta_loss

__all__ = ["HypernetOptions", "HypernetTrainer"]


@dataclass
class HypernetOptions:
    """``[trainer.options]`` of ``hypernet``."""

    generator: str = option("vq", "the weight_generator provider: 'vq' (vq-ensemble's refiner) or 'chunked'")
    generator_options: dict[str, Any] = option({}, "that generator's options, e.g. {stages = 40, refiner = 'bias'}")
    objective: str = option("pull", "'pull' (the original's MSE to the post-SGD weights) or 'direct' (task loss)",
                            choices=OBJECTIVES)  # fmt: skip
    inner_lr: float = option(1e-2, "the inner SGD step's learning rate (raw parameter space)", gt=0, finite=True)
    ensemble: int = option(16, "E: members of fixed codes judged as the run's ensemble", ge=1)
    ensemble_nll: float = option(0.0, "weight of the sampled members' ensemble NLL in the meta-loss", ge=0, finite=True)
    diversity: float = option(0.0, "weight of a bonus for the members' variance in u space", ge=0, finite=True)
    eval_batch: int = option(1000, "examples per forward when the candidates are evaluated", ge=1)

    @classmethod
    def tiny(cls) -> HypernetOptions:
        """A run of seconds, for conformance tests."""
        return cls(generator_options={"stages": 3, "hidden": 16}, ensemble=3, eval_batch=256)


class HypernetTrainer:
    """One generation = one meta-step of ``generator`` on B members, each on its own minibatch."""

    def __init__(self, generator: Generator, optimizer: torch.optim.Optimizer, batcher: Batcher, terms: MetaTerms,
                 *, meta_batch: int, ensemble: int, seed: int, eval_batch: int = 1000) -> None:  # fmt: skip
        self.generator, self.optimizer, self.batcher, self.terms = generator, optimizer, batcher, terms
        self.meta_batch, self.eval_batch = meta_batch, eval_batch
        self.code_stream = torch.Generator().manual_seed(seed + 1)  # the training codes
        self.judge_codes = generator.sample_codes(ensemble, torch.Generator().manual_seed(seed + 2))  # fixed E

    def inner_batches(self) -> tuple[Tensor, Tensor]:
        """B minibatches of the run's batcher stacked: ``(B, n, ...)`` inputs, ``(B, n)`` labels."""
        draws = [self.batcher.next() for _ in range(self.meta_batch)]
        n = min(len(d[1]) for d in draws)  # an epoch's last batch may be short: all members get n
        device = self.generator.device
        x = torch.stack([d[0][:n] for d in draws]).to(device, non_blocking=True)
        return x, torch.stack([d[1][:n] for d in draws]).to(device, non_blocking=True)

    def step(self, generation: int, evaluate: Evaluate) -> dict[str, Any]:
        codes = self.generator.sample_codes(self.meta_batch, self.code_stream)
        loss, stats, evaluated = meta_loss(self.generator, codes, self.inner_batches(), self.terms, evaluate)
        self.optimizer.zero_grad(set_to_none=True)
        if math.isfinite(float(loss.detach())):  # a non-finite meta-loss never reaches the optimizer's state
            loss.backward()
            self.optimizer.step()
        return {**fitness_stats(evaluated.clean), **stats}

    @torch.no_grad()
    def candidates(self) -> Candidates:
        """The E members of the fixed judge codes (``code0`` ...), as one detached population."""
        pop = self.generator.members(self.judge_codes)
        return Candidates([pop.with_flat(pop.flat.detach())], names=[f"code{i}" for i in range(len(self.judge_codes))],
                          batch_chunk=self.eval_batch)  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "code_stream": self.code_stream.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.code_stream.set_state(state["code_stream"])
