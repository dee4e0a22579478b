"""Architecture neuroevolution with weight inheritance (block-level R2R mutations).

M. Painter, "Deep Neuroevolution with Shared Parameters: Ensembling a Better Solution" (cs231n
report, Stanford 2018), Algorithm 1 (NE), Algorithm 4 (mutate) and App. C (learning-rate rule).

Algorithm 1: train a base network for ``N_i`` steps; then ``iterations`` times: select ``K`` of the
population, refill it to ``M`` with mutated copies of random selected parents, and train the
population jointly for ``N_j`` steps (each step one uniformly chosen model, one optimiser step).
A mutation widens (adds a zero :class:`R2RBlock` in parallel inside a layer) or deepens (inserts a
new residual layer ``C -> C`` with one zero block after a random non-pool layer); both preserve the
parent's function exactly. With ``share_weights`` the child references the parent's modules, so
both keep training them (each with its own Adam state, as in the original); otherwise the child
gets deep copies. Pure torch, no pluggy.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evoens_morph.genome import FilterBank, Gene, Genome, GenomeNet, LayerSpec, R2RBlock, base_genome
from evoens_morph.select import correctness, select_best


@dataclass(frozen=True)
class MutationConfig:
    """Block-level R2R mutation: deepen with ``p_deepen``, else widen; kernel size drawn from ``kernel_probs``."""

    p_deepen: float = 0.5
    kernel_probs: Mapping[int, float] = field(default_factory=lambda: {1: 0.3, 3: 0.35, 5: 0.35})
    share_weights: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_deepen <= 1.0:
            raise ValueError(f"MutationConfig: p_deepen={self.p_deepen} must lie in [0, 1]")
        probs = dict(self.kernel_probs)
        if not probs or any(k < 1 or k % 2 == 0 for k in probs) or any(p < 0 for p in probs.values()):
            raise ValueError(f"MutationConfig: kernel_probs={probs} needs odd kernel sizes with probabilities >= 0")
        if sum(probs.values()) <= 0:
            raise ValueError("MutationConfig: kernel_probs must not all be zero")


def _uniform(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def mutate(
    bank: FilterBank, genome: Genome, generator: torch.Generator, config: MutationConfig | None = None
) -> Genome:
    """A child of ``genome`` with one more zero block: function-preserving widen or deepen.

    The new block lives in ``bank``; with ``config.share_weights=False`` the child first gets its
    own deep copies of every parent block (fresh ids), so training it never moves the parent."""
    cfg = config or MutationConfig()
    if not cfg.share_weights:
        genome = bank.copy_genome(genome)
    sites = [i for i, g in enumerate(genome) if bank.specs[g.layer_id].kind == "residual"]
    if not sites:
        raise ValueError("mutate: the genome has no residual layer to widen or deepen")
    deepen = float(torch.rand((), generator=generator)) < cfg.p_deepen
    sizes = sorted(cfg.kernel_probs)
    probs = torch.tensor([float(cfg.kernel_probs[k]) for k in sizes])
    kernel = sizes[int(torch.multinomial(probs, 1, generator=generator))]
    at = sites[_uniform(len(sites), generator)]
    spec = bank.specs[genome[at].layer_id]
    width = spec.out_channels
    hidden = width + width % 2  # the original's intermediate width (= output width), made even
    if deepen:
        layer = bank.new_layer(LayerSpec("residual", width, width))
        block = R2RBlock(width, hidden, width, kernel, zero_init=True, generator=generator)
        gene = Gene(layer, (bank.add_block(layer, block),))
        return (*genome[: at + 1], gene, *genome[at + 1 :])
    block = R2RBlock(spec.in_channels, hidden, width, kernel, zero_init=True, generator=generator)
    gene = genome[at]
    widened = Gene(gene.layer_id, (*gene.block_ids, bank.add_block(gene.layer_id, block)))
    return (*genome[:at], widened, *genome[at + 1 :])


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def inherited_hparams(lr: float, weight_decay: float, parent_params: int, child_params: int) -> tuple[float, float]:
    """App. C: ``lr_child = lr_parent * |theta_parent| / |theta_child|``, the same factor on weight decay
    (|theta| = number of parameters)."""
    if parent_params < 1 or child_params < 1:
        raise ValueError(f"inherited_hparams: parameter counts must be >= 1, got {parent_params}, {child_params}")
    factor = parent_params / child_params
    return lr * factor, weight_decay * factor


@dataclass(eq=False)
class Individual:
    """One network of the population, with its own optimiser (state never shared between children)."""

    genome: Genome
    model: GenomeNet
    optimizer: torch.optim.Optimizer
    lr: float
    weight_decay: float
    uid: int
    parent: int | None = None
    val_accuracy: float = float("nan")


def make_individual(
    bank: FilterBank,
    genome: Genome,
    lr: float,
    weight_decay: float,
    uid: int,
    parent: int | None = None,
    *,
    amsgrad: bool = True,
) -> Individual:
    """The network of ``genome`` with a fresh Adam of its own (AMSGrad, as the original's ``ne.py``)."""
    model = GenomeNet(bank, genome)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, amsgrad=amsgrad)
    return Individual(genome, model, opt, lr, weight_decay, uid, parent)


Batches = Callable[[], tuple[Tensor, Tensor]]


def train_step(ind: Individual, x: Tensor, y: Tensor) -> Tensor:
    """One train-mode cross-entropy step of ``ind`` with its own optimiser; returns the (detached) loss.

    (The original used ``BCEWithLogitsLoss`` on one-hot labels; softmax cross-entropy here.)"""
    ind.model.train()
    loss = F.cross_entropy(ind.model(x), y)
    ind.optimizer.zero_grad()
    loss.backward()
    ind.optimizer.step()
    return loss.detach()  # no host sync: the caller decides whether to read it


def joint_train(population: Sequence[Individual], steps: int, batches: Batches, generator: torch.Generator) -> None:
    """``steps`` optimiser steps, each on one uniformly chosen individual and a fresh batch."""
    for _ in range(steps):
        x, y = batches()
        train_step(population[_uniform(len(population), generator)], x, y)


@dataclass(frozen=True)
class NEConfig:
    """Algorithm 1's knobs: ``N_i`` initial steps, ``N_j`` steps per iteration, select ``K``, refill to ``M``."""

    initial_steps: int = 1000  # N_i
    steps_per_iteration: int = 500  # N_j
    select_k: int = 3  # K
    population: int = 6  # M
    iterations: int = 3
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_size: int = 64
    widths: tuple[int, ...] = (8, 16, 32)
    mutation: MutationConfig = field(default_factory=MutationConfig)
    eval_batch: int = 1000
    strategy: str = "vmap"
    seed: int = 0
    amsgrad: bool = True  # every model's Adam, as in the original (report App. C)

    def __post_init__(self) -> None:
        if not 1 <= self.select_k <= self.population:
            raise ValueError(f"NEConfig: need 1 <= select_k ({self.select_k}) <= population ({self.population})")
        for name in ("batch_size", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"NEConfig: {name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"NEConfig: need lr > 0 and weight_decay >= 0, got lr={self.lr}, wd={self.weight_decay}")
        for name in ("initial_steps", "steps_per_iteration", "iterations"):
            if getattr(self, name) < 0:
                raise ValueError(f"NEConfig: {name}={getattr(self, name)} must be >= 0")


@dataclass
class NEResult:
    selected: list[Individual]  # the final selection, in selection order (best first)
    base: nn.Module  # a frozen copy of the base network right after its N_i steps
    bank: FilterBank
    history: list[dict[str, float]]  # per iteration: index, population, best parent's val accuracy, wall time
    steps: int  # optimiser steps in total (N_i + iterations * N_j)


Select = Callable[[Tensor, int], list[int]]
Mutate = Callable[[FilterBank, Genome, torch.Generator, MutationConfig], Genome]


def batch_sampler(x: Tensor, y: Tensor, size: int, generator: torch.Generator) -> Batches:
    """Minibatches of ``size`` examples drawn with replacement, from ``generator`` (on CPU)."""

    def draw() -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(y), (size,), generator=generator).to(y.device)
        return x[idx], y[idx]

    return draw


def evaluate(pop: list[Individual], val: tuple[Tensor, Tensor], cfg: NEConfig) -> Tensor:
    """The ``(M, N)`` correctness of every individual on ``val``; sets each one's ``val_accuracy``."""
    correct = correctness([p.model for p in pop], *val, batch_size=cfg.eval_batch, strategy=cfg.strategy)  # (M, N)
    for ind, row in zip(pop, correct.mean(1).tolist()):
        ind.val_accuracy = row
    return correct


def _select(
    pop: list[Individual], select: Select, k: int, val: tuple[Tensor, Tensor], cfg: NEConfig
) -> list[Individual]:
    return [pop[i] for i in select(evaluate(pop, val, cfg), k)]


def refill(
    bank: FilterBank, parents: list[Individual], cfg: NEConfig, gen: torch.Generator, mutate: Mutate, next_uid: int
) -> tuple[list[Individual], int]:
    """Algorithm 1's refill: the parents plus mutants of uniformly drawn parents up to ``cfg.population``
    (App. C's learning-rate rule for each child); returns the population and the next free uid."""
    pop = list(parents)
    while len(pop) < cfg.population:
        parent = parents[_uniform(len(parents), gen)]
        child_genome = mutate(bank, parent.genome, gen, cfg.mutation)
        child_params = num_params(GenomeNet(bank, child_genome))
        lr, wd = inherited_hparams(parent.lr, parent.weight_decay, num_params(parent.model), child_params)
        pop.append(make_individual(bank, child_genome, lr, wd, next_uid, parent.uid, amsgrad=cfg.amsgrad))
        next_uid += 1
    return pop, next_uid


def iterate(
    bank: FilterBank, pop: list[Individual], correct: Tensor, cfg: NEConfig, gen: torch.Generator,
    batches: Batches, select: Select, mutate: Mutate, next_uid: int,
) -> tuple[list[Individual], list[Individual], int]:  # fmt: skip
    """One iteration of Algorithm 1 from the population's ``(M, N)`` validation correctness:
    select, refill with mutants, train jointly, prune the bank. Returns (parents, population,
    next free uid)."""
    parents = [pop[i] for i in select(correct, cfg.select_k)]
    pop, next_uid = refill(bank, parents, cfg, gen, mutate, next_uid)
    joint_train(pop, cfg.steps_per_iteration, batches, gen)
    bank.prune([p.genome for p in pop])
    return parents, pop, next_uid


def train_base(train: tuple[Tensor, Tensor], config: NEConfig | None = None) -> tuple[FilterBank, Individual]:
    """Algorithm 1, line 1: the base network (:func:`base_genome`) trained for ``N_i`` steps."""
    cfg = config or NEConfig()
    x, y = train
    if x.dim() != 4 or x.shape[-1] != x.shape[-2] or y.shape != x.shape[:1]:
        raise ValueError(
            f"train_base: needs square images (N, C, H, H) and labels (N,), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}; add the channel dimension with x.unsqueeze(1)"
        )
    gen = torch.Generator().manual_seed(cfg.seed)  # init and batch draws: CPU RNG, same run on any device
    bank = FilterBank(x.device)
    genome = base_genome(
        bank, in_channels=x.shape[1], image_size=x.shape[-1], widths=cfg.widths,
        num_classes=int(y.max()) + 1, generator=gen,
    )  # fmt: skip
    base = make_individual(bank, genome, cfg.lr, cfg.weight_decay, uid=0, amsgrad=cfg.amsgrad)
    joint_train([base], cfg.initial_steps, batch_sampler(x, y, cfg.batch_size, gen), gen)
    return bank, base


def neuroevolve(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    config: NEConfig | None = None,
    *,
    select: Select = select_best,
    mutate: Mutate = mutate,
    start: tuple[FilterBank, Individual] | None = None,
) -> NEResult:
    """Algorithm 1 on image data ``train = (x (N, C, H, W), y (N,))``, selecting on ``val``.

    ``start`` is a trained ``(bank, base)`` from :func:`train_base` to begin from (deep-copied, so one
    base can seed several runs); without it the base is trained here first."""
    cfg = config or NEConfig()
    bank, base = copy.deepcopy(start) if start is not None else train_base(train, cfg)
    base_copy = copy.deepcopy(base.model).eval()
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # the evolution's own stream, apart from the base's
    batches = batch_sampler(*train, cfg.batch_size, gen)
    pop, next_uid, history = [base], 1, []
    for it in range(cfg.iterations):
        start_s = time.perf_counter()
        parents, pop, next_uid = iterate(
            bank, pop, evaluate(pop, val, cfg), cfg, gen, batches, select, mutate, next_uid
        )
        history.append(
            {"iteration": it, "population": len(pop), "best_parent_val": parents[0].val_accuracy,
             "wall_s": time.perf_counter() - start_s}
        )  # fmt: skip
    selected = _select(pop, select, cfg.select_k, val, cfg)
    return NEResult(selected, base_copy, bank, history, cfg.initial_steps + cfg.iterations * cfg.steps_per_iteration)
