"""What every weight generator shares: codes in, normalized weight rows out, members as ONE population.

A generator maps a batch of codes (its genome: discrete stage choices for ``vq``, noise vectors or
member indices for ``chunked``) to normalized rows ``u`` ``(N, D)`` of a :class:`WeightSpace`; the
model's weights are ``s ⊙ u``. Members are never deep copies: ``members(codes)`` is one
:class:`evoens.population.Population` whose ``(N, D)`` parameters are a differentiable function
of the generator's own parameters, so one batched forward (and backward) evaluates all of them.

Before it allocates, a generator estimates its memory (:func:`check_memory`) and refuses, in one
line with the numbers and the knob to turn, what will not fit. Pure torch, no pluggy.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor, nn

from evoens.candidates import Candidates
from evoens.population import Population
from evoens_hypernet.space import WeightSpace

__all__ = ["Generator", "GeneratorTooLarge", "MemoryEstimate", "available_bytes", "check_memory"]

GiB = 2**30


class GeneratorTooLarge(ValueError):
    """A generator that would not fit in memory (raised before anything is allocated)."""


class MemoryEstimate(NamedTuple):
    parameters: int  # generator parameters
    training_bytes: int  # parameters + gradients + Adam's two moments, float32
    activation_bytes: int  # what one decode of ``batch`` members keeps for the backward pass

    @property
    def total_bytes(self) -> int:
        return self.training_bytes + self.activation_bytes


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free memory, or the host's MemAvailable (or 8 GiB unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.environ.get("EVOENS_MEMORY_BYTES", 8 * GiB))


def check_memory(
    name: str, estimate: MemoryEstimate, device: torch.device, knobs: str, limit: int | None = None
) -> None:
    """Refuse ``estimate`` when it exceeds ``limit`` (default: the free memory on ``device``)."""
    limit = available_bytes(device) if limit is None else limit
    if estimate.total_bytes > limit:
        raise GeneratorTooLarge(
            f"generator '{name}' needs about {estimate.total_bytes / GiB:.1f} GiB "
            f"({estimate.parameters / 1e6:.1f} M parameters: {estimate.training_bytes / GiB:.1f} GiB with gradients "
            f"and Adam state, plus {estimate.activation_bytes / GiB:.1f} GiB of activations) but {device} has "
            f"{limit / GiB:.1f} GiB free; {knobs}"
        )


class Generator(nn.Module, ABC):
    """A hypernetwork over one architecture: ``decode(codes) -> u (N, D)``, members as one population."""

    def __init__(self, space: WeightSpace, *, strategy: str = "auto", max_chunk: int | None = None) -> None:
        super().__init__()
        self.space = space
        self.strategy, self.max_chunk = strategy, max_chunk

    @abstractmethod
    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes drawn from the generator's code distribution (on the generator's device)."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """Codes -> normalized weight rows ``u`` ``(N, D)``, differentiable in the generator's parameters."""

    @abstractmethod
    def memory_estimate(self, batch: int) -> MemoryEstimate:
        """Parameters, training and activation bytes of a decode of ``batch`` members."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def members(self, codes: Tensor) -> Population:
        """The members ``codes`` decode to, as one batched population (gradients reach the generator)."""
        return self.space.population(self.decode(codes), strategy=self.strategy, max_chunk=self.max_chunk)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Candidates:
        """``n`` freshly sampled members as candidates (the ``weight_generator`` kind's contract)."""
        codes = self.sample_codes(n, generator)
        return Candidates([self.members(codes)], names=[f"code{i}" for i in range(n)])

    @torch.no_grad()
    def diversity(self, n: int = 4, generator: torch.Generator | None = None) -> Tensor:
        """The original's "output variance": ``mean_p Var_e(u_T)`` over ``n`` sampled members (0-d)."""
        return output_variance(self.decode(self.sample_codes(n, generator)))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def output_variance(u: Tensor) -> Tensor:
    """``(N, D)`` rows -> the population variance over members, averaged over coordinates (0-d)."""
    return u.var(dim=0, correction=0).mean()
