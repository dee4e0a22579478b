"""Optimizer carry-over: old state kept (old slices of widened tensors too), new state fresh,
learning-rate rules, and continuity: after an exact R2R widen the carried Adam takes exactly the
step the old Adam would have taken on every old entry."""

from __future__ import annotations

import pytest
import torch
from evoens_morph import families
from evoens_morph.deepen import deepen
from evoens_morph.optim import carry_over_from_reports, carry_over_optimizer
from evoens_morph.widen import widen
from torch import nn

X = torch.randn(16, 1, 12, 12, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    nn.functional.cross_entropy(model(X), Y).backward()
    opt.step()


def _trained(opt_cls: type = torch.optim.Adam, **kw: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = families.cnn().train()
    opt = opt_cls(model.parameters(), **kw)
    for _ in range(3):
        _step(model, opt)
    return model, opt


def _grid(positions: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return torch.meshgrid(*positions, indexing="ij")


def test_adam_state_of_old_entries_is_kept_and_new_entries_start_at_zero() -> None:
    model, opt = _trained(lr=1e-3)
    new, report = widen(model, "4", "r2r", amount=4)
    carried = carry_over_from_reports(opt, model, new, [report])
    old_params = dict(model.named_parameters())
    for name, param in new.named_parameters():
        state, old_state = carried.state[param], opt.state[old_params[name]]
        assert torch.equal(state["step"], old_state["step"])
        if name in report.widened:
            grid = _grid(report.widened[name])
            assert torch.equal(state["exp_avg"][grid], old_state["exp_avg"])
            mask = torch.ones_like(param, dtype=torch.bool)
            mask[grid] = False
            assert mask.any() and not state["exp_avg"][mask].any()
            mean_sq = old_state["exp_avg_sq"].mean()  # new entries: the old mean second moment (see below)
            assert torch.allclose(state["exp_avg_sq"][mask], mean_sq.expand(int(mask.sum())))
        else:
            assert torch.equal(state["exp_avg_sq"], old_state["exp_avg_sq"])


def test_after_an_exact_widen_the_carried_adam_continues_the_old_trajectory() -> None:
    # eps 1e-3: a conv bias right before BN has an analytically zero gradient (~1e-8 of float noise),
    # which Adam's normalisation would otherwise blow up to O(lr) in both runs independently
    model, opt = _trained(lr=1e-2, eps=1e-3)
    new, report = widen(model, "4", "r2r", amount=4, generator=torch.Generator().manual_seed(2))
    carried = carry_over_from_reports(opt, model, new, [report])
    _step(new, carried)
    _step(model, opt)  # the old model, old optimizer: the reference step
    new_params = dict(new.named_parameters())
    for name, old in model.named_parameters():
        got = new_params[name].detach()
        got = got[_grid(report.widened[name])] if name in report.widened else got
        torch.testing.assert_close(got, old.detach(), rtol=1e-5, atol=1e-6)


def test_new_entries_of_a_long_trained_adam_tensor_step_like_the_old_ones() -> None:
    # a long run: bias correction ~1 (step 1000), stationary second moment 1 for a unit gradient;
    # zero second moments on the new rows would make their first step ~2.5x lr instead of ~0.08x
    old = nn.Linear(1, 4, bias=False)
    opt = torch.optim.Adam(old.parameters(), lr=0.1)
    opt.state[old.weight] = {
        "step": torch.tensor(1000.0),
        "exp_avg": torch.zeros(4, 1),
        "exp_avg_sq": torch.ones(4, 1),
    }
    new = nn.Linear(1, 6, bias=False)
    before = new.weight.detach().clone()
    grid = (torch.arange(4), torch.arange(1))
    carried = carry_over_optimizer(opt, new, [], old_params={"weight": old.weight}, positions={"weight": grid})
    new.weight.grad = torch.ones(6, 1)
    carried.step()
    delta = (new.weight.detach() - before).abs().flatten()  # (6,)
    assert float(delta.max()) < 0.1  # below lr
    torch.testing.assert_close(delta[4:], delta[:4].mean().expand(2))  # new rows step like the old ones


def test_new_tensors_start_fresh_and_sgd_momentum_is_carried() -> None:
    model, opt = _trained(torch.optim.SGD, lr=0.1, momentum=0.9)
    new, report = deepen(model, "6", "r2r")
    carried = carry_over_from_reports(opt, model, new, [report])
    params = dict(new.named_parameters())
    assert all(params[n] not in carried.state for n in report.new_param_names)
    assert torch.equal(
        carried.state[params["0.weight"]]["momentum_buffer"], opt.state[model[0].weight]["momentum_buffer"]
    )
    assert {id(p) for g in carried.param_groups for p in g["params"]} == {id(p) for p in new.parameters()}


def test_chained_transforms_compose_renames_and_positions() -> None:
    model, opt = _trained(lr=1e-3)
    g = torch.Generator().manual_seed(3)
    mid, r1 = widen(model, "4", "r2r", amount=2, generator=g)
    mid, r2 = deepen(mid, "6", "r2r", generator=g)
    new, r3 = widen(mid, "4", "r2r", amount=4, generator=g)
    carried = carry_over_from_reports(opt, model, new, [r1, r2, r3])
    p = dict(new.named_parameters())["4.weight"]  # widened twice in the output dim
    old = opt.state[model[4].weight]["exp_avg"]
    assert p.shape[0] == 22 and torch.equal(carried.state[p]["exp_avg"][:16], old)
    assert not carried.state[p]["exp_avg"][16:].any()
    inner = dict(new.named_parameters())["6.1.conv1.weight"]  # new in r2, widened (input) in r3
    assert inner not in carried.state


def test_learning_rate_rules() -> None:
    model, opt = _trained(lr=1e-3, weight_decay=1e-4)
    new, report = widen(model, "0", "r2r", amount=8)
    divided = carry_over_from_reports(opt, model, new, [report], lr_rule="divide", lr_divisor=5.0)
    assert divided.param_groups[0]["lr"] == pytest.approx(2e-4)
    scaled = carry_over_from_reports(opt, model, new, [report], lr_rule="norm_ratio", scale_weight_decay=True)
    ratio = (
        torch.cat([p.detach().flatten() for p in model.parameters()]).norm()
        / torch.cat([p.detach().flatten() for p in new.parameters()]).norm()
    )
    assert 0 < float(ratio) < 1
    assert scaled.param_groups[0]["lr"] == pytest.approx(1e-3 * float(ratio), rel=1e-6)
    assert scaled.param_groups[0]["weight_decay"] == pytest.approx(1e-4 * float(ratio), rel=1e-6)
    with pytest.raises(ValueError, match="unknown lr_rule"):
        carry_over_optimizer(opt, new, [], lr_rule="halve")  # type: ignore[arg-type]


def test_in_place_use_without_old_params() -> None:
    model, opt = _trained(lr=1e-3)
    extra = nn.Linear(10, 10)
    model.add_module("head2", extra)  # a new tensor added in place
    carried = carry_over_optimizer(opt, model, ["head2.weight", "head2.bias"])
    assert torch.equal(carried.state[model[0].weight]["exp_avg"], opt.state[model[0].weight]["exp_avg"])
    assert extra.weight not in carried.state
    with pytest.raises(ValueError, match="not in the model"):
        carry_over_optimizer(opt, model, ["nope.weight"])
