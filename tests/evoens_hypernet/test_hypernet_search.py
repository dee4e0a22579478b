"""Code search over a generator's discrete codes, per-member inputs of several species, the examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from evoens_hypernet.refiner import VQRefiner
from evoens_hypernet.search import cem_codes, member_logits, select_ensemble
from evoens_hypernet.space import WeightSpace
from torch import nn

from evoens.candidates import Candidates
from evoens.config import load_config
from evoens.fitness import neg_cross_entropy
from evoens.population import Population
from evoens.testing import make_plugin_manager, run_inline

REPO = Path(__file__).resolve().parents[2]


def toy() -> tuple[VQRefiner, tuple[torch.Tensor, torch.Tensor]]:
    """A bias codebook over a linear 4 -> 3 classifier; option 0 of every stage is the true weights."""
    torch.manual_seed(0)
    space = WeightSpace(nn.Sequential(nn.Linear(4, 3)))
    r = VQRefiner(space, stages=3, options=4, refiner="bias")
    truth = torch.randn(space.dim) * 3
    with torch.no_grad():
        r.output_scales.fill_(1.0)
        r.biases.mul_(0.5)
        r.biases[:, 0] = truth / 3  # the all-zeros code decodes to ``truth``
    x = torch.randn(400, 4)
    y = space.population(truth[None])(x)[0].argmax(-1)  # (400,) labels of the true classifier
    return r, (x, y)


def test_cem_concentrates_on_the_fit_codes_and_beats_uniform_sampling():
    r, batch = toy()
    found = cem_codes(r, batch, iterations=6, popsize=32, rng=torch.Generator().manual_seed(1))
    assert found.codes.shape == (6 * 32, 3) and found.fitness.shape == (6 * 32,)
    assert (found.probs.argmax(1) == 0).all()  # the distribution found option 0 at every stage
    first, last = found.fitness[:32].mean(), found.fitness[-32:].mean()
    assert last > first
    fitness = neg_cross_entropy(member_logits(r, found.codes, batch[0]), batch[1])
    torch.testing.assert_close(fitness, found.fitness)  # the recorded fitness is the members' own


def test_smoothing_one_sets_the_distribution_to_the_elite_frequencies():
    r, batch = toy()
    found = cem_codes(r, batch, iterations=1, popsize=16, elite=0.25, smoothing=1.0,
                      rng=torch.Generator().manual_seed(2))  # fmt: skip
    elite = found.codes[found.fitness.topk(4).indices]
    freq = torch.nn.functional.one_hot(elite, 4).float().mean(0)
    torch.testing.assert_close(found.probs, freq)


def test_caruana_selection_picks_from_the_pool_and_is_no_worse_than_its_first_pick():
    r, batch = toy()
    pool = r.sample_codes(20, torch.Generator().manual_seed(3))
    picked = select_ensemble(r, pool, batch, 5)
    assert picked.shape == (5, 3)
    assert all(any(torch.equal(p, q) for q in pool) for p in picked)


def test_code_search_needs_discrete_codes():
    with pytest.raises(TypeError, match="discrete codes"):
        cem_codes(object(), (torch.zeros(1), torch.zeros(1)))  # type: ignore[arg-type]


def test_per_member_inputs_follow_members_across_species():
    torch.manual_seed(0)
    small, big = nn.Sequential(nn.Linear(3, 2)), nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    a = Population.from_module(small, 2, generator=torch.Generator().manual_seed(1))
    b = Population.from_module(big, 1, generator=torch.Generator().manual_seed(2))
    cands = Candidates([a, b], groups=[[0, 2], [1]], per_member_inputs=True, batch_chunk=3)
    x, y = torch.randn(3, 7, 3), torch.randint(2, (3, 7))  # member i gets x[i], y[i]
    out = cands.logits(x)  # (3, 7, 2) in member order
    torch.testing.assert_close(out[0], a.member(0)(x[0]))
    torch.testing.assert_close(out[2], a.member(1)(x[2]))
    torch.testing.assert_close(out[1], b.member(0)(x[1]))
    fitness = cands.evaluate(neg_cross_entropy, (x, y)).fitness
    expected = torch.stack([-nn.functional.cross_entropy(out[i], y[i]) for i in range(3)])
    torch.testing.assert_close(fitness, expected)
    assert cands.select([2, 0]).per_member_inputs
    with pytest.raises(ValueError, match="per-member inputs"):
        cands.logits(torch.randn(7, 3))


def test_the_mnist_example_is_the_seeds_configuration_and_fits_in_memory():
    config = load_config(REPO / "examples" / "hypernet-mnist.toml")
    options = config.trainer.options
    assert (config.trainer.popsize, config.trainer.lr, config.data.batch_size) == (4, 1e-4, 128)
    assert options["generator_options"] == {"stages": 40, "options": 4, "hidden": 512, "refiner": "mlp"}
    assert (options["inner_lr"], options["ensemble"]) == (1e-2, 16)
    registry = make_plugin_manager(entry_points=True).registry
    gen = registry.options("weight_generator", "vq", options["generator_options"], "generator_options")
    assert VQRefiner.estimate(60_106, stages=gen.stages, hidden=gen.hidden).parameters == 164_537_744


def test_the_digits_example_runs(tmp_path: Path):
    config = load_config(REPO / "examples" / "hypernet-digits.toml", ["generations=4", "eval_every=2"])
    summary = run_inline(config, tmp_path, entry_points=True)
    assert summary["generations"] == 4
    assert {"val", "test", "output_variance"} <= set(summary["hypernet"])
    assert "ensemble" in summary  # [extra.ensemble] judges the same members


def test_auto_forgets_a_strategy_that_is_no_longer_installed(monkeypatch: pytest.MonkeyPatch):
    """A run's plugin strategy (installed per run) may win 'auto'; a later run without it re-times."""
    from evoens import population, strategies

    pop = Population.from_module(nn.Sequential(nn.Linear(3, 2)), 2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 3)
    monkeypatch.setitem(strategies.STRATEGIES, "gone", strategies.STRATEGIES["loop"])
    pop(x)
    key = next(k for k in population._AUTO_CHOICE if k[0] == pop.signature())
    monkeypatch.setitem(population._AUTO_CHOICE, key, "gone")
    monkeypatch.delitem(strategies.STRATEGIES, "gone")
    torch.testing.assert_close(pop(x), pop(x, strategy="loop"))
    assert pop.last_strategy in strategies.STRATEGIES


@pytest.mark.parametrize("name", make_plugin_manager(entry_points=True).registry.names("weight_generator"))
def test_weight_generator_provider_conformance(name: str):
    """Every registered generator: ``sample(n)`` gives n members as candidates whose weights are a
    differentiable function of the generator's parameters, the same for the same code stream."""
    from types import SimpleNamespace

    from evoens.kinds import WeightGenerator
    from evoens.testing import tiny_options

    registry = make_plugin_manager(entry_points=True).registry
    cls = registry.get("weight_generator", name).options
    options = cls(**tiny_options(registry, "weight_generator", name))
    torch.manual_seed(0)
    context = SimpleNamespace(
        template=nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)), device=torch.device("cpu"),
        config=SimpleNamespace(seed=0, trainer=SimpleNamespace(popsize=4, strategy="auto", max_chunk=None)),
    )  # fmt: skip
    gen = registry.create("weight_generator", name, context, options)
    assert isinstance(gen, WeightGenerator)
    members = gen.sample(3, torch.Generator().manual_seed(1))
    again = gen.sample(3, torch.Generator().manual_seed(1))
    assert isinstance(members, Candidates) and len(members) == 3
    torch.testing.assert_close(members.flat, again.flat)
    out = members.logits(torch.randn(7, 6))  # (3, 7, 3)
    assert out.shape == (3, 7, 3)
    grads = torch.autograd.grad(out.pow(2).sum(), [p for p in gen.parameters()], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
