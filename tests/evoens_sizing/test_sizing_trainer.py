"""The ``sizing`` trainer: one population of per-member masks, compaction and growth that keep
every member's function and Adam state, the batched-GEMM strategy's parity, and a λ sweep that
orders the members' sizes."""

from __future__ import annotations

import math

import pytest
import torch
from evoens_sizing.models import sizing_cnn, sizing_mlp
from evoens_sizing.strategy import SizingBMM
from evoens_sizing.trainer import SizingOptions, SizingTrainer

from evoens.datasets.base import Split
from evoens.datasets.batcher import Batcher
from evoens.fitness import neg_cross_entropy
from evoens.phases import standalone
from evoens.population import Population
from evoens.strategies import STRATEGIES


@pytest.fixture
def sizing_bmm():
    STRATEGIES["sizing_bmm"] = SizingBMM()
    yield "sizing_bmm"
    STRATEGIES.pop("sizing_bmm", None)


def _data(n: int = 256, d: int = 10, c: int = 3) -> Split:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = (x[:, :c].argmax(1)).long()
    return Split(x, y)


def _trainer(hidden: int = 16, popsize: int = 3, **options) -> SizingTrainer:
    split = _data()
    net = sizing_mlp((10,), 3, [hidden])
    opts = SizingOptions(**options)
    return SizingTrainer(net, popsize, opts, lr=0.05, batcher=Batcher(split, 64, 0), device=torch.device("cpu"),
                         seed=0, probe=split.x[:128])  # fmt: skip


EVALUATE = standalone(lambda cand, batch: cand.evaluate(neg_cross_entropy, batch).fitness)


@pytest.mark.parametrize("layer", ["switch", "gated"])
def test_sizing_bmm_matches_the_loop_with_gradients(sizing_bmm: str, layer: str) -> None:
    net = sizing_mlp((2, 3, 3), 4, [7, 5], layer=layer, x0=4.0)
    flat = Population.from_module(net, 3).flat.requires_grad_(True)
    x = torch.randn(6, 2, 3, 3)
    outs, grads = [], []
    for strategy in ("loop", sizing_bmm):
        out = Population(net, flat, strategy=strategy)(x)
        (g,) = torch.autograd.grad(out.pow(2).sum(), flat)
        outs.append(out)
        grads.append(g)
    assert (outs[0] - outs[1]).abs().max() < 1e-5 and (grads[0] - grads[1]).abs().max() < 1e-4
    assert SizingBMM().why_not(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))) is not None
    assert "no switch" in SizingBMM().why_not(sizing_mlp((3,), 2, [4], layer="plain"))


def test_lambda_is_per_member_and_a_larger_lambda_prunes_more() -> None:
    trainer = _trainer(popsize=4, lams=[0.2, 0.0])
    for g in range(120):
        trainer.step(g, EVALUATE)
    cap = trainer.capacity()["0"]
    assert trainer.schedule.lam.tolist() == pytest.approx([0.2, 0.0, 0.2, 0.0])
    assert cap[0] < cap[1] and cap[2] < cap[3] and cap[1] == 16 and cap[3] == 16


def test_trainer_compaction_keeps_outputs_and_adam_moments() -> None:
    trainer = _trainer(popsize=3)
    for g in range(3):
        trainer.step(g, EVALUATE)
    with torch.no_grad():
        theta = trainer.population.params["0.theta"]
        theta[:, 8:] = -1.0
        theta[1, :4] = -1.0
    x = torch.randn(20, 10)
    before = trainer.population(x)
    m1_before = trainer.optimizer.state[trainer.population.flat]["exp_avg"].clone()
    w_before = m1_before[:, : 16 * 10].reshape(3, 16, 10)  # moments of 0.weight
    assert trainer.maybe_compact()
    assert trainer.physical_widths() == {"0": 8}
    assert (trainer.population(x) - before).abs().max() < 1e-6
    m1 = trainer.optimizer.state[trainer.population.flat]["exp_avg"]
    torch.testing.assert_close(m1[0, : 8 * 10].reshape(8, 10), w_before[0, :8])
    torch.testing.assert_close(m1[1, : 4 * 10].reshape(4, 10), w_before[1, 4:8])  # live units first
    trainer.step(3, EVALUATE)  # and training goes on with the smaller tensors


def test_growth_widens_saturated_members_without_changing_any_function() -> None:
    trainer = _trainer(hidden=4, popsize=2, grow_factor=2.0, max_width=64)
    with torch.no_grad():
        trainer.population.params["0.theta"][1, 0] = -1.0  # member 1 lost a unit: not saturated
    trainer.useful_at_check = {"0": torch.tensor([4, 4])}
    x = torch.randn(20, 10)
    before = trainer.population(x)
    dead = trainer.dead_units()["0"]
    assert not dead[0].any()  # member 0 uses all 4 units: saturated
    grew = trainer.maybe_grow()
    after = trainer.population(x)
    assert grew and trainer.physical_widths() == {"0": 8}
    assert (after - before).abs().max() < 1e-5
    alive = trainer.population.params["0.theta"] > 0
    assert alive[0].sum() == 8 and alive[1].sum() == 3  # member 1 got dead fillers only


def test_members_are_compacted_into_species_by_width() -> None:
    trainer = _trainer(popsize=3)
    with torch.no_grad():
        theta = trainer.population.params["0.theta"]
        theta[0, :5] = -1.0
        theta[2, :5] = -1.0
    cands = trainer.candidates()
    x = torch.randn(15, 10)
    assert sorted(p.template[0].out_features for p in cands.species) == [11, 16]
    assert (cands.logits(x) - trainer.population(x)).abs().max() < 1e-5


@pytest.mark.parametrize(("layer", "mode"), [("switch", "strict"), ("switch", "l1"), ("gated", "strict")])
def test_closed_form_penalty_gradients_equal_autograd(layer: str, mode: str) -> None:
    net = sizing_mlp((10,), 3, [12], layer=layer, mode=mode, x0=7.0)
    split = _data()
    opts = SizingOptions(lams=[0.3, 0.01, 0.0], weight_l2=0.02, lr_x0=0.5)
    trainer = SizingTrainer(net, 3, opts, lr=0.05, batcher=Batcher(split, 64, 0), device=torch.device("cpu"),
                            seed=0, weight_decay=1e-2)  # fmt: skip
    with torch.no_grad():
        if layer == "switch":
            trainer.population.params["0.theta"][:, ::3] = -0.2  # dead ones and the l1 push back
        else:
            trainer.population.params["0.x0_raw"].copy_(torch.tensor([1.0, 14.0, 30.0]))
    flat = trainer.population.flat
    params = trainer.population.params
    total = (trainer.schedule.lam * trainer.size_penalty(params)).sum() + trainer.weight_terms(params).sum()
    (expected,) = torch.autograd.grad(total, flat)
    torch.testing.assert_close(trainer.regularizer_grad(), expected, rtol=1e-5, atol=1e-7)


def test_no_growth_before_a_switch_can_have_reached_zero() -> None:
    delayed = _trainer(hidden=4, popsize=2, grow_every=10, max_width=64)  # lr 0.05, theta0 = 1
    eager = _trainer(hidden=4, popsize=2, grow_every=10, max_width=64, grow_delay=0)
    assert delayed.grow_after == {"0": 20} and eager.grow_after == {"0": 0}  # ceil(theta0 / lr)
    x = torch.randn(20, 10)
    before = delayed.population(x)
    assert not delayed.dead_units()["0"].any()  # every unit in use: saturated by the policy's signal
    assert not delayed.maybe_grow(done=10) and delayed.physical_widths() == {"0": 4}
    assert (delayed.population(x) - before).abs().max() == 0
    # after the delay it acts as an undelayed policy does: the same R2R units, the same function
    assert delayed.maybe_grow(done=20) and eager.maybe_grow(done=10)
    assert delayed.physical_widths() == eager.physical_widths() == {"0": 8}
    torch.testing.assert_close(delayed.population.flat, eager.population.flat, rtol=0, atol=0)
    assert (delayed.population(x) - before).abs().max() < 1e-5


def test_the_start_up_delay_follows_the_smallest_starting_switch() -> None:
    split = _data()
    net = sizing_mlp((10,), 3, [16], init="uniform")
    trainer = SizingTrainer(net, 3, SizingOptions(grow_every=5), lr=0.01, batcher=Batcher(split, 64, 0),
                            device=torch.device("cpu"), seed=0, probe=split.x[:64])  # fmt: skip
    theta = trainer.population.params["0.theta"].detach()
    assert trainer.grow_after["0"] == math.ceil(float(theta.min()) / 0.01) < 100  # theta in (0, 1]


def test_a_conv_population_compacts_with_its_batchnorm_and_keeps_every_output() -> None:
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 3, (96,), generator=g))
    net = sizing_cnn((1, 8, 8), 3, [6, 4])  # SwitchConv2d(+BN) -> ReLU -> MaxPool, twice, then a Linear
    trainer = SizingTrainer(net, 3, SizingOptions(lams=[0.0]), lr=0.05, batcher=Batcher(split, 32, 0),
                            device=torch.device("cpu"), seed=0, strategy="vmap")  # fmt: skip
    for gen in range(3):  # every member's BatchNorm statistics are its own now
        trainer.step(gen, EVALUATE)
    running = trainer.population.buffers["0.bn.running_var"]  # (P, 6)
    assert not torch.equal(running[0], running[1])
    with torch.no_grad():
        theta = trainer.population.params
        theta["0.theta"][0, :3] = -1.0
        theta["0.theta"][1, 1:5] = -1.0
        theta["0.theta"][2, 5] = -1.0
        theta["3.theta"][:, 0] = -1.0
    x = torch.randn(10, 1, 8, 8, generator=g)
    trainer.template.eval()  # the running statistics decide the output
    before = trainer.population(x)
    assert trainer.maybe_compact()
    assert trainer.physical_widths() == {"0": 5, "3": 3}
    assert (trainer.population(x) - before).abs().max() < 1e-5
    torch.testing.assert_close(trainer.population.buffers["0.bn.running_var"][1], running[1, [0, 5, 1, 2, 3]])
    assert (trainer.candidates().logits(x) - before).abs().max() < 1e-5  # members at their own widths
    resumed = SizingTrainer(sizing_cnn((1, 8, 8), 3, [6, 4]), 3, SizingOptions(lams=[0.0]), lr=0.05,
                            batcher=Batcher(split, 32, 0), device=torch.device("cpu"), seed=0,
                            strategy="vmap")  # fmt: skip
    resumed.load_state_dict(trainer.state_dict())  # the checkpoint carries the cut statistics
    resumed.template.eval()
    assert (resumed.population(x) - before).abs().max() < 1e-5
    trainer.template.train()
    trainer.step(3, EVALUATE)  # and it trains on with the smaller tensors
