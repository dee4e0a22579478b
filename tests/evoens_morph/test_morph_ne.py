"""Properties of architecture neuroevolution: block-level R2R mutations preserve the function exactly,
weight sharing vs copying, selection, species-batched evaluation, the ensemble head and the lr rule."""

from __future__ import annotations

import copy

import pytest
import torch
from evoens_morph.ensemble import HierarchicalEnsemble, mean_probability, stack_features, train_head
from evoens_morph.genome import FilterBank, GenomeNet, R2RBlock, architecture, base_genome
from evoens_morph.ne import (
    MutationConfig,
    NEConfig,
    inherited_hparams,
    make_individual,
    mutate,
    neuroevolve,
    num_params,
    train_base,
    train_step,
)
from evoens_morph.select import correctness, select_best, select_diverse, species, species_logits
from torch import nn

TOL = 1e-5


def _data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(10, (n,), generator=g)


def _trained_base(steps: int = 5, seed: int = 0) -> tuple[FilterBank, object]:
    """A small base (8x8 input, widths 4, 8) after a few Adam steps: non-trivial weights and BN stats."""
    bank = FilterBank()
    genome = base_genome(bank, image_size=8, widths=(4, 8), fc_hidden=16, generator=torch.Generator().manual_seed(seed))
    ind = make_individual(bank, genome, 1e-2, 0.0, uid=0)
    x, y = _data(seed=seed)
    for _ in range(steps):
        train_step(ind, x, y)
    return bank, ind


def _outputs(model: nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    model.train(train)
    with torch.no_grad():
        return model(x)


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor, train: bool) -> float:
    return float((_outputs(a, x, train) - _outputs(b, x, train)).abs().max())


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("deepen", [True, False])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_every_mutation_preserves_the_function_in_eval_and_train_mode(share: bool, deepen: bool, kernel: int) -> None:
    bank, parent = _trained_base()
    cfg = MutationConfig(p_deepen=float(deepen), kernel_probs={kernel: 1.0}, share_weights=share)
    child_genome = mutate(bank, parent.genome, torch.Generator().manual_seed(1), cfg)
    child = GenomeNet(bank, child_genome)
    assert len(child_genome) == len(parent.genome) + deepen
    assert num_params(child) > num_params(parent.model)
    x, _ = _data(16, seed=2)
    # eval: running statistics of the parent's trained BNs, fresh (0, 1) ones in the zero block
    assert _max_diff(parent.model, child, x, train=False) <= TOL
    # train: batch statistics; the tied halves of the zero block stay equal under them too
    assert _max_diff(parent.model, child, x, train=True) <= TOL


def test_zero_block_is_zero_in_both_modes_and_learns_after_one_step() -> None:
    g = torch.Generator().manual_seed(0)
    block = R2RBlock(3, 6, 5, 3, generator=g)
    x = torch.randn(4, 3, 7, 7, generator=g) * 3 + 1
    for mode in (False, True, False):  # eval, train (updates running stats identically per half), eval
        block.train(mode)
        assert float(block(x).detach().abs().max()) <= TOL
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    block.train()
    (block(x) * torch.randn(4, 5, 7, 7, generator=g)).sum().backward()
    opt.step()
    assert float(block(x).detach().abs().max()) > 1e-3  # the halves untie: the block is trainable, not dead


@pytest.mark.parametrize("share", [True, False])
def test_chained_mutations_with_training_in_between_preserve_each_parent(share: bool) -> None:
    bank, ind = _trained_base()
    gen = torch.Generator().manual_seed(3)
    cfg = MutationConfig(share_weights=share)
    x, y = _data(seed=4)
    deepened = widened = 0
    for step in range(8):
        child_genome = mutate(bank, ind.genome, gen, cfg)
        deepened += len(child_genome) > len(ind.genome)
        widened += len(child_genome) == len(ind.genome)
        child = make_individual(bank, child_genome, 1e-2, 0.0, uid=step + 1)
        for train in (False, True):
            assert _max_diff(ind.model, child.model, x, train) <= TOL
        train_step(child, x, y)  # the next mutation starts from a trained, mutated network
        ind = child
    assert deepened and widened


def test_chained_mutations_without_training_all_equal_the_base() -> None:
    bank, base = _trained_base()
    gen, genome = torch.Generator().manual_seed(5), base.genome
    x, _ = _data(seed=6)
    for _ in range(10):
        genome = mutate(bank, genome, gen)
    assert len(genome) > len(base.genome)
    assert _max_diff(base.model, GenomeNet(bank, genome), x, train=False) <= TOL


@pytest.mark.parametrize("share", [True, False])
def test_sharing_moves_the_parent_when_the_child_trains_copying_does_not(share: bool) -> None:
    bank, parent = _trained_base()
    child = make_individual(bank, mutate(bank, parent.genome, torch.Generator().manual_seed(7), MutationConfig(
        share_weights=share)), 1e-2, 0.0, uid=1)  # fmt: skip
    shared = {p.data_ptr() for p in parent.model.parameters()} & {p.data_ptr() for p in child.model.parameters()}
    assert bool(shared) == share
    x, y = _data(seed=8)
    before_parent, before_child = _outputs(parent.model, x, False), _outputs(child.model, x, False)
    for _ in range(3):
        train_step(child, x, y)
    moved_parent = float((_outputs(parent.model, x, False) - before_parent).abs().max())
    moved_child = float((_outputs(child.model, x, False) - before_child).abs().max())
    assert moved_child > 1e-3
    if share:
        assert moved_parent > 1e-3
    else:
        assert moved_parent == 0.0
    assert child.optimizer is not parent.optimizer  # separate Adam state per child, as in the original


def test_mutation_draws_follow_the_configured_probabilities() -> None:
    bank, base = _trained_base(steps=0)
    gen = torch.Generator().manual_seed(9)
    n, deep = 400, 0
    kernels = {1: 0, 3: 0, 5: 0}
    for _ in range(n):
        child = mutate(bank, base.genome, gen)
        deep += len(child) > len(base.genome)
        new = set((g.layer_id, b) for g in child for b in g.block_ids) - {
            (g.layer_id, b) for g in base.genome for b in g.block_ids
        }
        (layer, block), = new  # fmt: skip
        kernels[bank.block(layer, block).kernel_size] += 1
    assert abs(deep / n - 0.5) < 0.08
    for k, p in {1: 0.3, 3: 0.35, 5: 0.35}.items():
        assert abs(kernels[k] / n - p) < 0.08


def _diverse_reference(correct: torch.Tensor, k: int) -> list[int]:
    """The greedy rule written out as loops."""
    M, N = correct.shape
    acc = [sum(correct[m].tolist()) / N for m in range(M)]
    chosen = [max(range(M), key=lambda m: (acc[m], -m))]
    while len(chosen) < k:
        best, best_score = None, -1.0
        for m in range(M):
            if m in chosen:
                continue
            s = sum(correct[m, i].item() / (1 + sum(correct[c, i].item() for c in chosen)) ** 2 for i in range(N)) / N
            if s > best_score:
                best, best_score = m, s
        chosen.append(best)
    return chosen


def test_select_diverse_on_a_hand_made_correctness_matrix() -> None:
    correct = torch.tensor(
        [
            [1, 1, 1, 1, 0, 0],  # best (4/6)
            [1, 1, 1, 1, 0, 0],  # a duplicate of the best: no new information
            [0, 0, 0, 0, 1, 1],  # weak (2/6) but right exactly where the best is wrong
            [1, 1, 1, 0, 0, 0],  # 3/6, a subset of the best
        ]
    )
    assert select_best(correct, 2) == [0, 1]
    assert select_diverse(correct, 1) == [0]
    assert select_diverse(correct, 2) == [0, 2]  # scores: m1 4*(1/4)/6, m2 2/6, m3 3*(1/4)/6
    assert select_diverse(correct, 3) == [0, 2, 1]  # all covered once: then 4 vs 3 examples at 1/4
    assert select_diverse(correct, 10) == [0, 2, 1, 3]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        rand = (torch.rand(7, 20, generator=g) < 0.6).float()
        assert select_diverse(rand, 4) == _diverse_reference(rand, 4)


def test_selection_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k=0"):
        select_best(torch.ones(3, 4), 0)
    with pytest.raises(ValueError, match="correctness matrix"):
        select_diverse(torch.ones(4), 2)


def test_species_batched_evaluation_equals_the_per_model_loop() -> None:
    bank, base = _trained_base()
    gen = torch.Generator().manual_seed(11)
    widen = MutationConfig(p_deepen=0.0, kernel_probs={3: 1.0})
    a = mutate(bank, base.genome, gen, widen)
    b = mutate(bank, base.genome, gen, widen)  # the same architecture as a (maybe another layer)
    models = [GenomeNet(bank, g) for g in (base.genome, a, base.genome, b)]
    x, y = _data(seed=12)
    for m in models[1:]:  # diverge the members (train-mode steps also move the BN running stats)
        ind = make_individual(bank, m.genome, 1e-2, 0.0, uid=1)
        train_step(ind, x, y)
    groups = species(models)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3] and [0, 2] in groups
    assert (architecture(bank, a) == architecture(bank, b)) == (len(groups) == 2)
    x_test, y_test = _data(40, seed=13)
    batched = species_logits(models, x_test, batch_size=16)  # (M, B, C) in chunks of 16
    with torch.no_grad():
        loop = torch.stack([m.eval()(x_test) for m in models])
    assert float((batched - loop).abs().max()) <= TOL
    assert torch.equal(correctness(models, x_test, y_test), (loop.argmax(-1) == y_test).float())
    with pytest.raises(ValueError, match=r"labels must have shape \(40,\)"):
        correctness(models, x_test, y_test[:, None])  # (M, N) == (N, 1) would broadcast to (M, N, N)


def test_hierarchical_ensemble_concatenates_logits_along_the_class_dim() -> None:
    bank, base = _trained_base()
    gen = torch.Generator().manual_seed(14)
    members = [base.model, *(GenomeNet(bank, mutate(bank, base.genome, gen)) for _ in range(2))]
    ens = HierarchicalEnsemble(members, num_classes=10, hidden=8)
    x, y = _data(12, seed=15)
    with torch.no_grad():
        want = torch.cat([m.eval()(x) for m in members], dim=1)  # (B, K*C)
        assert float((ens.features(x) - want).abs().max()) <= TOL
        full = ens(x)  # (B, C)
        # Each sample's prediction depends on its own logits only; dim-0 concatenation + view(-1, K*C)
        # would put samples 0..K-1 of member 1 into row 0.
        alone = torch.cat([ens(x[i : i + 1]) for i in range(len(x))])
    assert full.shape == (12, 10)
    assert float((full - alone).abs().max()) <= TOL
    logits = torch.arange(2 * 3 * 4.0).view(2, 3, 4)  # (K=2, B=3, C=4)
    assert torch.equal(stack_features(logits), torch.cat([logits[0], logits[1]], dim=1))
    assert torch.allclose(mean_probability(logits), (logits[0].softmax(-1) + logits[1].softmax(-1)) / 2)
    assert {id(p) for p in ens.parameters()} == {id(p) for p in ens.head.parameters()}
    with pytest.raises(ValueError, match="output 10 classes.*pass num_classes=10"):
        HierarchicalEnsemble(members, num_classes=4).features(x)


def test_training_the_head_leaves_the_members_unchanged() -> None:
    bank, base = _trained_base()
    members = [base.model, GenomeNet(bank, mutate(bank, base.genome, torch.Generator().manual_seed(16)))]
    before = [copy.deepcopy(m.state_dict()) for m in members]
    ens = HierarchicalEnsemble(members, hidden=8)
    x, y = _data(seed=17)
    losses = train_head(ens, x, y, steps=30, batch_size=16, lr=1e-2, generator=torch.Generator().manual_seed(0))
    assert sum(losses[-5:]) < sum(losses[:5])
    for m, sd in zip(members, before):
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in sd.items())


def test_lr_rule_arithmetic() -> None:
    lr, wd = inherited_hparams(3e-3, 1e-5, parent_params=1000, child_params=1250)
    assert lr == pytest.approx(2.4e-3) and wd == pytest.approx(8e-6)
    assert inherited_hparams(1e-3, 0.0, 10, 10) == (1e-3, 0.0)
    with pytest.raises(ValueError, match="parameter counts"):
        inherited_hparams(1e-3, 0.0, 0, 10)


def _tiny_run(select, share: bool = True):  # noqa: ANN001, ANN202
    x, y = _data(64, seed=18)
    cfg = NEConfig(
        initial_steps=4, steps_per_iteration=6, select_k=2, population=4, iterations=2, lr=1e-2,
        batch_size=16, widths=(4, 8), mutation=MutationConfig(share_weights=share), eval_batch=16, seed=3,
    )  # fmt: skip
    return neuroevolve((x, y), _data(24, seed=19), cfg, select=select), cfg


@pytest.mark.parametrize("share", [True, False])
def test_ne_driver_lr_rule_sizes_and_reproducibility(share: bool) -> None:
    result, cfg = _tiny_run(select_diverse, share)
    again, _ = _tiny_run(select_diverse, share)
    assert 1 <= len(result.selected) <= cfg.select_k and result.steps == 4 + 2 * 6
    assert [r.genome for r in result.selected] == [r.genome for r in again.selected]
    assert [r.val_accuracy for r in result.selected] == [r.val_accuracy for r in again.selected]
    assert [h["population"] for h in result.history] == [4, 4]
    base_params = num_params(result.base)
    for ind in result.selected:
        assert ind.optimizer.param_groups[0]["lr"] == pytest.approx(ind.lr)
        assert ind.optimizer.param_groups[0]["amsgrad"]  # Adam(amsgrad=True) per model, as the original
        # App. C's rule compounds down a lineage: lr * |theta| is the base's lr * |theta_base| for every model
        assert ind.lr * num_params(ind.model) == pytest.approx(cfg.lr * base_params)
        assert ind.weight_decay * num_params(ind.model) == pytest.approx(cfg.weight_decay * base_params)
        assert ind.lr <= cfg.lr  # children only grow: the factor |parent|/|child| is < 1
        if ind.parent is None:
            assert ind.lr == cfg.lr
    # every surviving genome still builds from the pruned bank
    for ind in result.selected:
        GenomeNet(result.bank, ind.genome)


def test_config_errors_are_one_line_value_errors() -> None:
    with pytest.raises(ValueError, match="p_deepen"):
        MutationConfig(p_deepen=1.5)
    with pytest.raises(ValueError, match="kernel_probs"):
        MutationConfig(kernel_probs={2: 1.0})
    with pytest.raises(ValueError, match="select_k"):
        NEConfig(select_k=5, population=3)
    with pytest.raises(ValueError, match="odd"):
        R2RBlock(2, 4, 2, 4)
    with pytest.raises(ValueError, match="even hidden"):
        R2RBlock(2, 3, 2, 3)
    with pytest.raises(ValueError, match="batch_size=0"):
        NEConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr > 0"):
        NEConfig(lr=0.0)
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"square images \(N, C, H, H\).*got \(8, 8, 8\)"):
        train_base((x[:, 0], y))  # a missing channel dimension would read H as channels


def test_each_species_is_one_batched_population_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    from evoens.population import Population

    bank, base = _trained_base()
    gen = torch.Generator().manual_seed(20)
    deep = MutationConfig(p_deepen=1.0, kernel_probs={1: 1.0})
    genomes = [base.genome, mutate(bank, base.genome, gen, deep), base.genome, base.genome]
    models = [GenomeNet(bank, g) for g in genomes]
    sizes: list[int] = []
    forward = Population.forward

    def counting(self: Population, *args: object, **kw: object) -> torch.Tensor:
        sizes.append(self.size)
        return forward(self, *args, **kw)

    monkeypatch.setattr(Population, "__call__", counting)  # pop(x) is how species_logits calls it
    species_logits(models, _data(20, seed=21)[0], batch_size=100)
    assert sorted(sizes) == [1, 3]  # two species: the base architecture (3 members) and the deepened one


def test_prune_drops_unused_blocks_and_keeps_every_live_genome_buildable() -> None:
    bank, base = _trained_base(steps=0)
    gen = torch.Generator().manual_seed(22)
    kids = [mutate(bank, base.genome, gen) for _ in range(4)]
    n_before = len(bank)
    assert n_before == sum(len(g.block_ids) for g in base.genome) + 4
    dropped = bank.prune([base.genome, kids[0]])
    assert dropped == 3 and len(bank) == n_before - 3
    x, _ = _data(seed=23)
    assert _max_diff(base.model, GenomeNet(bank, kids[0]), x, train=False) <= TOL
