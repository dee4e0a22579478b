"""The FLOP counter agrees with torch.utils.flop_counter.FlopCounterMode and with closed forms."""

from __future__ import annotations

import pytest
import torch
from evoens_morph import families
from evoens_morph.flops import count_flops, count_params
from evoens_morph.widen import widen
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _torch_flops(model: nn.Module, shape: tuple[int, ...], batch: int = 3) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(batch, *shape))
    total = counter.get_total_flops()
    assert total % batch == 0
    return total // batch


def _grouped() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, groups=8),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    )


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_matches_flop_counter_mode_on_every_family(family: str) -> None:
    model = families.FAMILIES[family]()
    assert count_flops(model, model.input_shape) == _torch_flops(model, model.input_shape)


def test_matches_flop_counter_mode_with_groups_stride_and_after_a_widen() -> None:
    model = _grouped()
    assert count_flops(model, (4, 10, 10)) == _torch_flops(model, (4, 10, 10))
    wide, _ = widen(families.concat_net(), "3.branches.0.0", "r2r", amount=2)
    assert count_flops(wide, (1, 12, 12)) == _torch_flops(wide, (1, 12, 12))


def test_closed_forms() -> None:
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    assert count_flops(model, (7,)) == 2 * (7 * 5 + 5 * 3)
    conv = nn.Conv2d(3, 4, 3, padding=1, groups=1)
    assert count_flops(conv, (3, 6, 6)) == 2 * 3 * 9 * 4 * 36
    assert count_params(model) == 7 * 5 + 5 + 5 * 3 + 3


def test_counting_leaves_training_mode_and_bn_statistics_alone() -> None:
    model = families.cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model, model.input_shape)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
