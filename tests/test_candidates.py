"""Candidates: species grouping, member order, and a mixed-species evaluation that equals
evaluating each species alone (and the per-member loop)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evoens.candidates import Candidates, species, species_logits
from evoens.fitness import neg_cross_entropy
from evoens.population import Population


def _mlp(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3))


def _mixed() -> list[nn.Module]:
    """Five members over three architectures, interleaved (member order != species order)."""
    return [_mlp(4, 0), _mlp(7, 1), _mlp(4, 2), _mlp(5, 3), _mlp(7, 4)]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return torch.randn(11, 6, generator=g), torch.randint(3, (11,), generator=g)


def test_species_group_by_architecture_in_order_of_first_appearance() -> None:
    models = _mixed()
    assert species(models) == [[0, 2], [1, 4], [3]]
    candidates = Candidates.from_modules(models)
    assert candidates.groups == ((0, 2), (1, 4), (3,)) and len(candidates) == 5
    assert [p.size for p in candidates.species] == [2, 2, 1]


def test_mixed_species_evaluation_equals_each_species_alone_and_the_loop() -> None:
    models, (x, y) = _mixed(), _batch()
    candidates = Candidates.from_modules(models, strategy="bmm")
    evaluation = candidates.evaluate(neg_cross_entropy, (x, y))
    for s, group in enumerate(candidates.groups):  # each species on its own
        alone = Candidates.from_modules([models[i] for i in group], strategy="bmm")
        (out,) = alone(x)
        assert torch.equal(evaluation.outputs[s], out)
        assert torch.equal(evaluation.fitness[list(group)], neg_cross_entropy(out, y))
    loop = torch.stack([m(x) for m in models])  # (M, B, C) in member order
    torch.testing.assert_close(candidates.gather(evaluation.outputs), loop, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(evaluation.fitness, neg_cross_entropy(loop, y), atol=1e-6, rtol=1e-6)


def test_select_keeps_the_requested_members_in_the_requested_order() -> None:
    models, (x, _) = _mixed(), _batch()
    names = [f"m{i}" for i in range(5)]
    candidates = Candidates.from_modules(models, names)
    picked = candidates.select([4, 0, 3])
    assert picked.names == ("m4", "m0", "m3")
    torch.testing.assert_close(picked.logits(x), candidates.logits(x)[[4, 0, 3]])


def test_batch_chunks_do_not_change_the_outputs() -> None:
    models, (x, _) = _mixed(), _batch()
    whole = Candidates.from_modules(models).logits(x)
    torch.testing.assert_close(Candidates.from_modules(models, batch_chunk=4).logits(x), whole)
    torch.testing.assert_close(species_logits(models, x, batch_size=3), whole)


def test_one_species_has_the_flat_view_and_several_do_not() -> None:
    template = _mlp(4, 0)
    pop = Population.from_module(template, 3, generator=torch.Generator().manual_seed(0))
    assert Candidates([pop]).flat is pop.flat  # the search space itself, not a copy
    with pytest.raises(ValueError, match="3 species have no single flat"):
        _ = Candidates.from_modules(_mixed()).flat


def test_groups_must_partition_the_members() -> None:
    pop = Population.from_module(_mlp(4, 0), 2)
    with pytest.raises(ValueError, match="do not partition"):
        Candidates([pop, pop], groups=[[0, 1], [1, 2]])


def test_a_fitness_that_couples_members_sees_all_species_at_once() -> None:
    models, (x, y) = _mixed(), _batch()
    candidates = Candidates.from_modules(models)
    seen: list[tuple[int, ...]] = []

    def ensemble_fitness(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(outputs.shape))
        return -outputs.softmax(-1).mean(0).log().gather(1, targets[:, None]).mean().expand(len(outputs))

    ensemble_fitness.couples_members = True  # type: ignore[attr-defined]
    evaluation = candidates.evaluate(ensemble_fitness, (x, y))
    assert seen == [(5, 11, 3)] and evaluation.fitness.shape == (5,)
    per_species = candidates.evaluate(lambda o, t: neg_cross_entropy(o, t), (x, y))
    assert per_species.fitness.shape == (5,)
