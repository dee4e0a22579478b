"""NetMorph's zero side: chosen as in the R2R code (the producer when the volume feeds a skip or a
pooling layer, else the side with fewer new weights), and the widened net keeps its function."""

from __future__ import annotations

import pytest
import torch
from evoens_morph import families
from evoens_morph.sites import get_site
from evoens_morph.widen import netmorph_zero_side, widen
from torch import nn


def _side(model: nn.Module, site: str, amount: int = 4) -> str:
    return netmorph_zero_side(model, get_site(model, site), amount=amount, factor=None, mfactor=2)


def test_fewer_new_weights_decide_without_skips_or_pooling() -> None:
    mlp = families.mlp(hidden=(24, 16))  # 144 -> 24 -> 16 -> 10
    assert _side(mlp, "1") == "consumer"  # new producer rows 4 x 144 > new consumer columns 16 x 4
    fan_out = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 100))
    fan_out.input_shape = (5,)
    assert _side(fan_out, "0") == "producer"  # 4 x 5 < 100 x 4


@pytest.mark.parametrize("family,site", [("cnn", "0"), ("resnet", "0"), ("resnet", "3.conv2")])
def test_pooling_or_a_skip_zeroes_the_producer(family: str, site: str) -> None:
    assert _side(getattr(families, family)(), site) == "producer"


@pytest.mark.parametrize(
    "family,site,side",
    [("mlp", "1", "consumer"), ("cnn", "0", "producer"), ("cnn", "9", "consumer"), ("resnet", "3.conv2", "producer")],
)
def test_auto_widening_preserves_the_function(family: str, site: str, side: str) -> None:
    model = getattr(families, family)().eval()
    g = torch.Generator().manual_seed(0)
    wider, report = widen(model, site, "netmorph", amount=4, noise=0.0, generator=g)
    assert _side(model, site) == side
    x = torch.randn(8, *model.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(wider.eval()(x), model(x), rtol=0, atol=1e-5)
    assert "eval" in report.exact_modes and report.max_abs_diff <= 1e-5


def test_an_explicit_side_is_kept_and_a_bad_one_named() -> None:
    model = families.cnn()
    g = torch.Generator().manual_seed(0)
    _, report = widen(model, "0", "netmorph", amount=4, noise=0.0, zero_side="consumer", generator=g)
    assert report.exact_modes == ("eval", "train")  # consumer side zero: train-mode BN cannot undo it
    with pytest.raises(ValueError, match="zero_side must be 'consumer' or 'producer'"):
        widen(model, "0", "netmorph", amount=4, zero_side="left", generator=g)
