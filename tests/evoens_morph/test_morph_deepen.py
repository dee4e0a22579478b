"""Deepening: R2DeeperR exact in train and eval, Net2DeeperNet exact in eval (BN calibrated),
chained widen->deepen->widen, closed-form sizes, gradients, untouched old tensors, errors."""

from __future__ import annotations

import pytest
import torch
from evoens_morph import families
from evoens_morph.deepen import deepen
from evoens_morph.report import MorphError
from evoens_morph.sites import deepen_points
from evoens_morph.widen import widen
from torch import nn

TOL = 1e-5


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    model = families.FAMILIES[family]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _diff(a: nn.Module, b: nn.Module, x: torch.Tensor, train: bool) -> float:
    with torch.no_grad():
        return float((a.train(train)(x) - b.train(train)(x)).abs().max())


def _points(nonneg_only: bool = False) -> list[tuple[str, str]]:
    return [
        (f, p)
        for f in families.FAMILIES
        for p, d in deepen_points(families.FAMILIES[f]()).items()
        if d.nonneg or not nonneg_only
    ]


@pytest.mark.parametrize("family,point", _points())
def test_r2r_deepen_is_exact_in_train_and_eval(family: str, point: str) -> None:
    model = _model(family)
    g = torch.Generator().manual_seed(1)
    new, report = deepen(model, point, "r2r", generator=g)
    x = torch.randn(16, *model.input_shape, generator=g)
    assert _diff(model, new, x, False) <= TOL and _diff(model, new, x, True) <= TOL
    assert report.exact_modes == ("eval", "train") and report.new_param_names


@pytest.mark.parametrize("family,point", _points(nonneg_only=True))
def test_net2net_deepen_with_bn_is_exact_in_eval_mode(family: str, point: str) -> None:
    model = _model(family)
    g = torch.Generator().manual_seed(1)
    calibration = torch.randn(32, *model.input_shape, generator=g)
    new, report = deepen(model, point, "net2net", probe=calibration)
    assert report.exact_modes == ("eval",)
    assert _diff(model, new, calibration, False) <= TOL
    other = torch.randn(16, *model.input_shape, generator=g)  # eval-mode BN = identity on any batch
    assert _diff(model, new, other, False) <= TOL


def test_net2net_deepen_without_bn_is_exact_in_both_modes() -> None:
    model = _model("cnn")
    new, report = deepen(model, "6", "net2net", bn=False, kernel=5)
    x = torch.randn(8, 1, 12, 12)
    assert report.exact_modes == ("eval", "train")
    assert _diff(model, new, x, False) <= TOL and _diff(model, new, x, True) <= TOL


def test_parameter_count_matches_closed_form() -> None:
    mlp = _model("mlp")  # volume after '3' has 24 channels (Linear)
    _, r = deepen(mlp, "3", "r2r", hidden=10)
    assert r.params_after - r.params_before == 24 * 10 + 10 + 10 * 24 + 24 + 2 * 10
    cnn = _model("cnn")  # volume after '6' has 16 channels (Conv)
    _, r = deepen(cnn, "6", "r2r", hidden=6, kernel=3)
    assert r.params_after - r.params_before == 2 * 16 * 6 * 9 + 6 + 16 + 2 * 6
    assert r.flops_after - r.flops_before == 2 * (2 * 16 * 6 * 9) * 6 * 6  # 6x6 maps at that depth
    _, r = deepen(cnn, "6", "net2net")
    assert r.params_after - r.params_before == 16 * 16 * 9 + 16 + 2 * 16


def test_new_block_gets_gradients_and_old_tensors_are_unchanged() -> None:
    model = _model("resnet")
    new, report = deepen(model, "3", "r2r", generator=torch.Generator().manual_seed(2))
    new_state = new.state_dict()
    for name, old in model.state_dict().items():
        if name.endswith("_extra_state"):
            continue  # a SliceMap's entries: changed on purpose (tests/evoens_morph/test_morph_residual.py)
        assert torch.equal(new_state[report.renamed.get(name, name)], old), name
    nn.functional.cross_entropy(new.train()(torch.randn(8, 1, 12, 12)), torch.randint(0, 10, (8,))).backward()
    params = dict(new.named_parameters())
    for name in report.new_param_names:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_widen_deepen_widen_chain_is_exact(family: str) -> None:
    model = _model(family)
    g = torch.Generator().manual_seed(3)
    wsite = {"mlp": "1", "cnn": "4", "resnet": "3.conv2", "concat": "3.branches.0.0"}[family]
    point = {"mlp": "3", "cnn": "6", "resnet": "4", "concat": "6"}[family]
    cur, _ = widen(model, wsite, "r2r", amount=4, generator=g)
    cur, _ = deepen(cur, point, "r2r", generator=g)
    cur, _ = widen(cur, wsite, "r2r", amount=2, generator=g)
    inner = [s for s in deepen_points(cur) if s.startswith(point)]
    cur, _ = deepen(cur, inner[0], "r2r", generator=g)  # deepen again right after the new block
    x = torch.randn(8, *model.input_shape, generator=g)
    assert _diff(model, cur, x, False) <= TOL and _diff(model, cur, x, True) <= TOL


def test_widening_a_deepened_volume_widens_the_zero_block_too() -> None:
    model = _model("cnn")
    cur, _ = deepen(model, "6", "r2r", hidden=4)
    cur, report = widen(cur, "4", "r2r", amount=2)
    assert cur[6][1].conv1.in_channels == 18 and cur[6][1].conv2.out_channels == 18
    assert "6.1.conv2.weight" in report.widened  # the additive producer
    cur, _ = widen(cur, "6.1.conv1", "net2net", amount=3)  # the block's hidden volume
    x = torch.randn(8, 1, 12, 12)
    assert _diff(model, cur, x, False) <= TOL and _diff(model, cur, x, True) <= TOL


def test_bad_requests_raise_one_clear_error() -> None:
    model = _model("cnn")
    with pytest.raises(MorphError, match="even number"):
        deepen(model, "6", "r2r", hidden=5)
    with pytest.raises(MorphError, match="odd kernel"):
        deepen(model, "6", "net2net", kernel=2)
    for kernel in (2, 0):  # the zero block's output must keep H×W too (was a torch shape error)
        with pytest.raises(MorphError, match="odd kernel"):
            deepen(model, "6", "r2r", kernel=kernel)
    deeper, _ = deepen(model, "6", "r2r")
    with pytest.raises(MorphError, match="needs a ReLU"):
        deepen(deeper, "6.1", "net2net")
    with pytest.raises(MorphError, match="no deepen point"):
        deepen(model, "5", "r2r")
    with pytest.raises(MorphError, match="unknown deepening scheme"):
        deepen(model, "6", "netmorph")
