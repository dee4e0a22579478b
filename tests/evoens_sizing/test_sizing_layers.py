"""Gated and switch layers: the gate penalty is the gate's integral and stays finite and bounded;
strict switches never revive, l1 ones can; the weight term makes the switch problem well-posed;
compaction keeps outputs and carries Adam's state; R2R growth preserves the function."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from evoens_sizing.compact import CompactionError, compact, compact_population, unit_plan
from evoens_sizing.gated import GatedConv2d, GatedLinear, gate, gate_integral, gate_param_groups, gray_zone
from evoens_sizing.grow import grow_tensors, growth
from evoens_sizing.models import sizing_cnn, sizing_mlp
from evoens_sizing.switch import (
    SizePenaltyScheduler,
    SwitchConv2d,
    SwitchLinear,
    kill_steps,
    switch_penalty,
    weight_penalty,
)
from torch import nn

from evoens.population import Population


@pytest.mark.parametrize("x0", [-30.0, 0.0, 3.7, 250.0, 497.0, 500.0, 530.0])
def test_gate_penalty_equals_numerical_integration(x0: float) -> None:
    u = torch.linspace(0, 500, 500_001, dtype=torch.float64)
    numeric = torch.trapezoid(torch.sigmoid(0.4 * (x0 - u)), u)
    found = gate_integral(torch.tensor(x0, dtype=torch.float64), 0.4, 500)
    assert float(found) == pytest.approx(float(numeric), abs=1e-6)


@pytest.mark.parametrize("x0", [-1e30, -1e6, 1e6, 1e30, float("inf"), float("-inf")])
def test_gate_penalty_is_finite_bounded_and_has_finite_gradients_at_extreme_x0(x0: float) -> None:
    t = torch.tensor(x0, requires_grad=True)
    s = gate_integral(t, 0.4, 500)
    s.backward()
    value = float(s.detach())
    assert torch.isfinite(s) and 0.0 <= value <= 500.0 and torch.isfinite(t.grad)
    assert value == (500.0 if x0 > 0 else 0.0)


def test_gate_penalty_gradient_is_the_gate_at_the_ends() -> None:
    t = torch.tensor(120.0, requires_grad=True)
    gate_integral(t, 0.4, 500).backward()
    expected = torch.sigmoid(torch.tensor(0.4 * 120.0)) - torch.sigmoid(torch.tensor(0.4 * (120.0 - 500)))
    assert float(t.grad) == pytest.approx(float(expected), abs=1e-6)


def test_gated_layer_starts_at_the_requested_size_and_gets_its_own_group() -> None:
    layer = GatedLinear(10, 500, x0=250.0)
    assert layer.effective_size() == 250.0 and float(layer.size_penalty().detach()) == pytest.approx(250.0, abs=2.0)
    g = layer.gate()
    assert g[240] > 0.98 and g[260] < 0.02  # gray zone ~ 23 units at k = 0.4
    assert gray_zone(0.4) == pytest.approx(22.98, abs=0.01)
    torch.testing.assert_close(g, gate(torch.tensor(250.0), 0.4, 500))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(500, 3))
    groups = gate_param_groups(model, lr_x0=1.0)
    assert groups[1]["params"] == [layer.x0_raw] and groups[1]["lr"] == 1.0
    assert len(groups[0]["params"]) == 4
    with pytest.warns(UserWarning, match="plateaus"):
        gate_param_groups(model, weight_decay=1e-3)


def test_x0_scale_gives_x0_its_own_learning_rate_under_one_adam() -> None:
    torch.manual_seed(0)
    a = GatedLinear(4, 50, x0=20.0)
    b = copy.deepcopy(a)
    b.x0_scale = 1000.0
    with torch.no_grad():
        b.x0_raw.fill_(20.0 / 1000.0)
    opt_a = torch.optim.Adam(gate_param_groups(a, lr_x0=1.0), lr=1e-3, eps=1e-12)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3, eps=1e-15)
    x = torch.randn(32, 4)
    for opt, m in ((opt_a, a), (opt_b, b)):
        for _ in range(5):
            opt.zero_grad()
            (m(x).relu().sum() * 1e-3 + 0.01 * m.size_penalty()).backward()
            opt.step()
    a0, b0 = float(a.x0.detach()), float(b.x0.detach())
    assert a0 == pytest.approx(b0, abs=1e-3) and abs(a0 - 20.0) > 1


def _train_switches(mode: str, steps: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """A switch layer with two units pushed dead; then only the data pulls them back up."""
    torch.manual_seed(0)
    layer = SwitchLinear(3, 4, mode=mode)
    with torch.no_grad():
        layer.theta.copy_(torch.tensor([1.0, 1.0, -0.05, 0.0]))
    opt = torch.optim.Adam([layer.theta], lr=0.02)
    x = torch.randn(64, 3)
    target = torch.ones(64, 4) * 5
    for _ in range(steps):
        opt.zero_grad()
        (F.mse_loss(F.relu(layer(x)), target) + 1e-4 * layer.penalty()).backward()
        opt.step()
    return layer.theta.detach(), layer.alive_mask()


def test_strict_switches_never_revive() -> None:
    theta, alive = _train_switches("strict")
    assert theta[2] == -0.05 and theta[3] == 0.0  # no gradient at all reaches a dead unit
    assert alive.tolist() == [True, True, False, False]


def test_l1_switches_can_revive() -> None:
    theta, alive = _train_switches("l1")
    assert alive[2] or theta[2] > -0.05  # |theta| pulls a negative switch back up
    assert theta[2] > -0.01


def test_penalties_capacity_and_collapse_schedule() -> None:
    theta = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    assert switch_penalty(theta, "strict").tolist() == [2.5, 0.0]
    assert switch_penalty(theta, "l1").tolist() == [3.5, 0.0]
    layer = SwitchLinear(2, 3)
    with torch.no_grad():
        layer.theta.copy_(theta[0])
    assert layer.capacity() == 2
    sched = SizePenaltyScheduler(torch.tensor([10.0, 10.0]), decay=10.0, min_lam=0.5)
    assert sched.step(torch.tensor([3, 0])).tolist() == [False, True]
    assert sched.lam.tolist() == [10.0, 1.0]
    sched.step(torch.tensor([3, 0]))
    assert sched.lam.tolist() == [10.0, 0.5]  # the floor


def test_the_weight_term_gives_the_switch_rescaling_a_minimum() -> None:
    """theta -> s theta, W_out -> W_out / s keeps the function; only lambda_2 ||W||^2 stops s -> 0."""
    theta, w_out = torch.full((8,), 1.0), torch.randn(3, 8)
    scales = torch.logspace(-3, 2, 60)
    plain = torch.stack([switch_penalty(s * theta, "strict") for s in scales])
    with_w = plain + torch.stack([1e-1 * weight_penalty(w_out / s) for s in scales])
    assert (plain.diff() > 0).all()  # no minimum: shrink switches, grow weights, forever
    best = int(with_w.argmin())
    assert 0 < best < len(scales) - 1


def _trained(model: nn.Module, x: torch.Tensor, steps: int = 3) -> torch.optim.Adam:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return opt


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_compaction_preserves_outputs_and_carries_adam_state(kind: str) -> None:
    torch.manual_seed(1)
    if kind == "mlp":
        model, x = sizing_mlp((1, 28, 28), 10, [40, 16]), torch.randn(32, 1, 28, 28)
    else:
        model, x = sizing_cnn((1, 12, 12), 10, [6, 8]), torch.randn(16, 1, 12, 12)
    opt = _trained(model, x)
    switches = [m for m in model.modules() if hasattr(m, "theta")]
    with torch.no_grad():
        for m in switches:
            m.theta[1::3] = -0.1
    model.eval()
    before = model(x)
    old = {n: (p, opt.state[p]) for n, p in model.named_parameters()}
    small = compact(model, opt)
    assert (small(x) - before).abs().max() < 1e-6
    for layer in unit_plan(small):
        assert small.get_submodule(layer.path).alive_mask().all()
    first = unit_plan(model)[0].path
    kept = model.get_submodule(first).alive_mask().nonzero().flatten()
    new_p = dict(small.named_parameters())[f"{first}.weight"]
    assert new_p.shape[0] == len(kept) and opt.state[new_p]["exp_avg"].shape == new_p.shape
    torch.testing.assert_close(opt.state[new_p]["exp_avg"], old[f"{first}.weight"][1]["exp_avg"][kept])
    torch.testing.assert_close(opt.state[new_p]["exp_avg_sq"], old[f"{first}.weight"][1]["exp_avg_sq"][kept])
    assert all(any(p is q for q in opt.param_groups[0]["params"]) for p in small.parameters())
    small.train()
    opt.zero_grad()
    small(x).pow(2).mean().backward()
    opt.step()  # the optimizer runs on the new tensors


def test_compacted_training_continues_like_the_masked_one() -> None:
    """Adam on the compacted net takes the same steps on the surviving entries as on the full one."""
    torch.manual_seed(2)
    full = sizing_mlp((6,), 3, [10])
    x = torch.randn(40, 6)
    opt_full = _trained(full, x)
    with torch.no_grad():
        full[0].theta[::2] = -1.0  # long dead: Adam's momentum cannot carry them back above 0
    twin = copy.deepcopy(full)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=1e-2)
    opt_twin.load_state_dict(copy.deepcopy(opt_full.state_dict()))  # no shared step tensors
    small = compact(twin, opt_twin)
    for model, opt in ((full, opt_full), (small, opt_twin)):
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    assert (full(x) - small(x)).abs().max() < 1e-5


def test_population_compaction_keeps_every_members_function() -> None:
    torch.manual_seed(3)
    net = sizing_mlp((7,), 4, [12])
    pop = Population.from_module(net, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theta = pop.params["0.theta"]
        theta.copy_(torch.where(torch.rand(5, 12) < 0.6, torch.zeros(5, 12), theta))
        theta[2] = 0.0  # one member fully dead
    x = torch.randn(9, 7)
    before = pop(x)
    params = {k: v.detach() for k, v in pop.params.items()}
    template, (cut,) = compact_population(net, [params], params)
    k = int((params["0.theta"] > 0).sum(1).max())
    assert template[0].out_features == k and cut["0.theta"].shape == (5, k)
    flat = torch.cat([cut[n].reshape(5, -1) for n, _ in template.named_parameters()], 1)
    after = Population(template, flat)(x)
    assert (after - before).abs().max() < 1e-6


def test_compaction_refuses_what_it_cannot_remove_exactly() -> None:
    bad = nn.Sequential(SwitchLinear(4, 5), nn.Sigmoid(), nn.Linear(5, 2))  # sigmoid(0) = 0.5
    with pytest.raises(CompactionError, match="does not keep a dead unit at 0"):
        compact(bad)


def test_r2r_growth_preserves_every_members_function() -> None:
    torch.manual_seed(4)
    net = sizing_mlp((6,), 3, [8])
    pop = Population.from_module(net, 3, generator=torch.Generator().manual_seed(1))
    x = torch.randn(30, 6)
    before = pop(x)
    params = {k: v.detach() for k, v in pop.params.items()}
    layer = unit_plan(net)[0]
    n = growth(8, 2.0, 4096)
    grow = torch.tensor([True, False, True])
    grown = grow_tensors(params, layer, grow, n, 1.0, torch.Generator().manual_seed(0))
    wide = sizing_mlp((6,), 3, [8 + n])
    flat = torch.cat([grown[k].reshape(3, -1) for k, _ in wide.named_parameters()], 1)
    after = Population(wide, flat)(x)
    assert n == 8 and (after - before).abs().max() < 1e-5
    assert (grown["0.theta"][0, 8:] == 1).all() and (grown["0.theta"][1, 8:] == 0).all()
    assert grown["0.weight"][0, 8:].abs().sum() > 0 and grown["2.weight"][0, :, 8:].abs().sum() > 0  # gradients flow


def test_gated_conv_gates_channels_like_the_linear_gates_units() -> None:
    conv, lin = GatedConv2d(2, 40, 3, padding=1, x0=12.0), GatedLinear(5, 40, x0=12.0)
    torch.testing.assert_close(conv.gate(), lin.gate())
    assert float(conv.size_penalty().detach()) == pytest.approx(float(lin.size_penalty().detach()))
    x = torch.randn(3, 2, 6, 6)
    out = conv(x)
    plain = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(out, plain * conv.gate()[:, None, None])
    groups = gate_param_groups(nn.Sequential(conv))
    assert groups[1]["params"] == [conv.x0_raw]


def test_folding_switches_into_weights_keeps_the_function() -> None:
    torch.manual_seed(5)
    for layer, x in ((SwitchLinear(4, 6, init="uniform"), torch.randn(7, 4)),
                     (SwitchConv2d(2, 5, 3, padding=1, init="normal"), torch.randn(2, 2, 5, 5))):  # fmt: skip
        before = torch.relu(layer(x))
        alive = layer.alive_mask().clone()
        layer.fold_into_weights()
        assert torch.equal(layer.alive_mask(), alive) and set(layer.theta.tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(torch.relu(layer(x)), before)


def test_switch_inits_and_the_kill_timing() -> None:
    torch.manual_seed(0)
    uniform = SwitchLinear(2, 1000, init="uniform").theta.detach()
    normal = SwitchLinear(2, 1000, init="normal").theta.detach()
    assert 0 < float(uniform.min()) and float(uniform.max()) <= 1  # SysML: 1 - U[0, 1), in (0, 1]
    assert float(normal.min()) < 0 < float(normal.max())  # the NIPS draft: signed
    assert (SwitchLinear(2, 3).theta == 1).all()  # the journal
    assert kill_steps(1.0, 1e-3) == 1000  # ~2.1 epochs of 469 steps: the journal's spike at epoch 2
