"""The meta-objectives of a weight generator: one batched inner SGD step over all members.

vq-ensemble (A. Nichol, 2020; ``train_mnist.py`` ``create_meta_batch``): B members are decoded, each
takes ONE vanilla SGD step on its own inner batch in raw space, and the generator is pulled toward
the post-step weights in ``u`` space:

    target_i = (s ⊙ U_i - lr · ∇_raw L_i(s ⊙ U_i)) / s          (detached)
    pull     = (1/B) Σ_i ||target_i - U_i||²                     (= mean_{i,p}(·)² · D, the original)

Since ``U_i - target_i = lr · g_i / s`` is constant in the generator's parameters φ,
``∂pull/∂U_i = (2·lr/B) · g_i / s = (2·lr/B) · s⁻² ⊙ ∇_u L_i``: the pull is back-propagating the
task gradient, preconditioned per tensor by ``1/s² = fan_in`` (tested). ``direct`` back-propagates
the task loss itself, ``(1/B) Σ_i L_i(s ⊙ U_i)``.

All B members are ONE population (:class:`evoens.candidates.Candidates` with per-member inputs):
one batched forward and one backward give every member's gradient (the loss is a sum over members,
so member i's slice of the gradient is its own). Evaluation goes through an ``evaluate`` callable
(the engine's phases under ``evoens run``, :func:`evoens.phases.standalone` otherwise), so every
plugin's evaluation hooks see the members. Optional ensemble-level terms, which the original lacked:
``ensemble_nll`` (the NLL of the members' mean-probability ensemble on a shared batch) and
``diversity`` (a bonus for the members' variance in ``u`` space). Pure torch, no pluggy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from evoens.candidates import Candidates
from evoens.fitness import neg_cross_entropy
from evoens.phases import Evaluate, Evaluated, standalone
from evoens.population import Population
from evoens_hypernet.generator import Generator, output_variance

__all__ = ["OBJECTIVES", "MetaTerms", "inner_targets", "meta_loss", "plain_evaluate", "pull_loss"]

OBJECTIVES = ("pull", "direct")


@dataclass(frozen=True)
class MetaTerms:
    """What a meta-step optimises: the objective, its inner learning rate, and the extra terms."""

    objective: str = "pull"
    inner_lr: float = 1e-2
    ensemble_nll: float = 0.0  # weight of the members' ensemble NLL on a shared batch
    diversity: float = 0.0  # weight of the bonus -mean_p Var_i(u)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not (math.isfinite(self.inner_lr) and self.inner_lr > 0):
            raise ValueError(f"inner_lr must be a finite number > 0, got {self.inner_lr}")


def plain_evaluate() -> Evaluate:
    """An evaluate without a run: minus the mean cross-entropy of every member."""
    return standalone(lambda candidates, batch: candidates.evaluate(neg_cross_entropy, batch).fitness)


def _members(generator: Generator, raw: Tensor) -> Candidates:
    """Rows ``raw`` (B, D) as one species whose members each take their own batch."""
    pop = Population(generator.space.template, raw, strategy=generator.strategy, max_chunk=generator.max_chunk)
    return Candidates([pop], names=[f"member{i}" for i in range(len(raw))], per_member_inputs=True)


def inner_targets(generator: Generator, u: Tensor, batch: tuple[Tensor, Tensor], inner_lr: float,
                  evaluate: Evaluate) -> tuple[Tensor, Evaluated]:  # fmt: skip
    """One vanilla SGD step of every member on its own batch: the post-step rows in ``u`` space
    ``(B, D)`` (detached) and the evaluation of the members before the step."""
    space = generator.space
    raw = space.to_raw(u.detach()).requires_grad_(True)  # (B, D): a leaf, the inner step's variable
    with torch.enable_grad():
        evaluated = evaluate(_members(generator, raw), batch)  # fitness (B,) = -L_i
        fitness = evaluated.fitness
        finite = torch.isfinite(fitness)
        (g,) = torch.autograd.grad(-torch.where(finite, fitness, 0).sum(), raw)  # (B, D) = ∇_raw L_i
    target = space.to_u(raw.detach() - inner_lr * g)  # (B, D)
    return target, evaluated


def pull_loss(u: Tensor, target: Tensor) -> Tensor:
    """``(1/B) Σ_i ||target_i - u_i||²`` for rows ``(B, D)`` of equal shape (never broadcast)."""
    if u.shape != target.shape:
        raise ValueError(f"pull: targets {tuple(target.shape)} and members {tuple(u.shape)} differ in shape")
    return (target - u).pow(2).sum(1).mean()


def meta_loss(generator: Generator, codes: Tensor, batch: tuple[Tensor, Tensor], terms: MetaTerms,
              evaluate: Evaluate | None = None) -> tuple[Tensor, dict[str, Any], Evaluated]:  # fmt: skip
    """The meta-loss of the members ``codes`` decode to, on per-member inner batches ``batch``
    (``x`` (B, n, ...), ``y`` (B, n)): the loss to minimise, its statistics, the members' evaluation."""
    evaluate = evaluate or plain_evaluate()
    x, y = batch
    if x.shape[0] != codes.shape[0] or y.shape[:2] != x.shape[:2]:
        raise ValueError(f"batch must be (B={codes.shape[0]}, n, ...) inputs and (B, n) labels, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")  # fmt: skip
    u = generator.decode(codes)  # (B, D), differentiable in φ
    if terms.objective == "pull":
        target, evaluated = inner_targets(generator, u, batch, terms.inner_lr, evaluate)
        loss = pull_loss(u, target)
    else:
        evaluated = evaluate(_members(generator, generator.space.to_raw(u)), batch)
        fitness = evaluated.fitness
        loss = -torch.where(torch.isfinite(fitness), fitness, 0).mean()
    stats: dict[str, Any] = {"meta_loss": loss.detach(), "inner_loss": -evaluated.clean.mean(),
                             "output_variance": output_variance(u.detach())}  # fmt: skip
    if terms.ensemble_nll:
        nll = ensemble_nll(generator, u, (x[0], y[0]))
        stats["ensemble_nll"] = nll.detach()
        loss = loss + terms.ensemble_nll * nll
    if terms.diversity:
        loss = loss - terms.diversity * output_variance(u)
    return loss, stats, evaluated


def ensemble_nll(generator: Generator, u: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    """NLL of the members' mean-probability ensemble on one shared batch ``(n, ...), (n,)`` (0-d)."""
    x, y = batch
    logits = generator.space.population(u, strategy=generator.strategy, max_chunk=generator.max_chunk)(x)  # (B, n, C)
    log_p = torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(len(u))  # (n, C)
    return F.nll_loss(log_p, y)
