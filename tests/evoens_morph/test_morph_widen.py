"""Widening: function preservation (train and eval), untouched old tensors, closed-form sizes,
gradients into new entries, clear errors, and the conformance of every `mutation` provider."""

from __future__ import annotations

import pytest
import torch
from evoens_morph import families
from evoens_morph import hooks as morph_hooks
from evoens_morph.mutations import MorphOptions
from evoens_morph.report import MorphError, MorphReport
from evoens_morph.sites import widen_sites
from evoens_morph.widen import new_channels, widen
from torch import nn

from evoens.testing import make_plugin_manager

TOL = 1e-5


EXACT = ("r2r", "net2net", "netmorph")  # netmorph with noise=0


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    model = families.FAMILIES[family]()
    with torch.no_grad():  # non-trivial BN state so eval mode is a real test
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return model


def _cases() -> list[tuple[str, str]]:
    return [(f, s) for f in families.FAMILIES for s in widen_sites(families.FAMILIES[f]())]


def _diff(a: nn.Module, b: nn.Module, x: torch.Tensor, train: bool) -> float:
    a, b = a.train(train), b.train(train)
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("family,site", _cases())
@pytest.mark.parametrize("scheme", EXACT)
def test_exact_widening_preserves_the_function_in_train_and_eval(family: str, site: str, scheme: str) -> None:
    model = _model(family)
    if scheme == "net2net" and widen_sites(model)[site].skip_sources + widen_sites(model)[site].skip_dests:
        pytest.skip("Net2WiderNet has no residual version (tested to raise below)")
    g = torch.Generator().manual_seed(1)
    side = {"zero_side": "consumer"} if scheme == "netmorph" else {}  # zero consumer columns: exact in train too
    new, report = widen(model, site, scheme, amount=4, noise=0.0, generator=g, **side)
    x = torch.randn(16, *model.input_shape, generator=g)
    for train in (False, True):
        assert _diff(model, new, x, train) <= TOL
    assert set(report.exact_modes) == {"eval", "train"}
    assert report.max_abs_diff <= TOL and report.max_abs_diff_train <= TOL


@pytest.mark.parametrize("family,site", _cases())
def test_random_pad_changes_the_function(family: str, site: str) -> None:
    model = _model(family)
    new, report = widen(model, site, "random_pad", amount=4, generator=torch.Generator().manual_seed(1))
    assert report.exact_modes == ()
    assert report.max_abs_diff > 100 * TOL and report.max_abs_diff_train > 100 * TOL


@pytest.mark.parametrize("family,site", _cases())
@pytest.mark.parametrize("scheme", ["r2r", "netmorph"])
def test_old_tensors_are_bitwise_unchanged(family: str, site: str, scheme: str) -> None:
    model = _model(family)
    new, report = widen(model, site, scheme, amount=4, generator=torch.Generator().manual_seed(2))
    new_state = new.state_dict()
    for name, old in model.state_dict().items():
        if name.endswith("_extra_state"):
            continue  # a SliceMap's entries: changed on purpose (tests/evoens_morph/test_morph_residual.py)
        if name in report.widened:
            grid = torch.meshgrid(*report.widened[name], indexing="ij")
            assert torch.equal(new_state[name][grid], old), name
        elif old.dtype.is_floating_point:
            assert torch.equal(new_state[name], old), name
    assert set(report.widened) >= {f"{p}.weight" for p in widen_sites(model)[site].producers}


def test_parameter_count_matches_closed_form() -> None:
    mlp = _model("mlp")  # Flatten, Linear(144,24), BN, ReLU, Linear(24,16), BN, ReLU, Linear(16,10)
    _, r = widen(mlp, "1", "r2r", amount=6)
    assert r.params_after - r.params_before == 6 * (144 + 1) + 2 * 6 + 6 * 16
    assert r.flops_after - r.flops_before == 2 * 6 * 144 + 2 * 6 * 16
    cnn = _model("cnn")  # ..., Conv(8,16,3), BN, ReLU, Pool -> 16x3x3 flatten -> Linear(144, 32)
    _, r = widen(cnn, "4", "net2net", amount=4)
    assert r.params_after - r.params_before == 4 * (8 * 9 + 1) + 2 * 4 + 4 * 9 * 32
    concat = _model("concat")  # two 8-channel branches, consumer Conv(16,16,3)
    _, r = widen(concat, "3.branches.0.0", "r2r", amount=2)
    assert r.params_after - r.params_before == 2 * (8 * 1 + 1) + 2 * 2 + 2 * (8 * 9 + 1) + 2 * 2 + 4 * 16 * 9


def test_multiplicative_widening_rounds_up_to_mfactor() -> None:
    assert new_channels(10, amount=None, factor=1.5, mfactor=2, even=True) == 6
    assert new_channels(10, amount=None, factor=1.3, mfactor=4, even=True) == 4
    assert new_channels(6, amount=None, factor=1.5, mfactor=2, even=True) == 4  # 3 rounded up to 4
    model = _model("cnn")
    new, _ = widen(model, "0", "r2r", factor=1.5)
    assert new[0].out_channels == 12 and new[4].in_channels == 12


def test_new_entries_receive_nonzero_gradients() -> None:
    model = _model("cnn")
    new, report = widen(model, "4", "r2r", amount=4, generator=torch.Generator().manual_seed(3))
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(new.train()(x), y).backward()
    params = dict(new.named_parameters())
    for name, positions in report.widened.items():
        if name not in params:
            continue  # BN running statistics
        grad = params[name].grad
        mask = torch.ones_like(grad, dtype=torch.bool)
        mask[torch.meshgrid(*positions, indexing="ij")] = False
        assert mask.any() and grad[mask].abs().sum() > 0, name


def test_repeated_and_chained_widening_stays_exact() -> None:
    model = _model("concat")
    g = torch.Generator().manual_seed(4)
    cur = model
    for site in ("3.branches.0.0", "3.branches.0.0", "0", "5", "3.branches.0.0"):
        cur, _ = widen(cur, site, "r2r", amount=2, generator=g)
    x = torch.randn(8, 1, 12, 12)
    assert _diff(model, cur, x, False) <= TOL and _diff(model, cur, x, True) <= TOL
    assert cur[5].in_channels == 16 + 3 * 4


def test_net2net_noise_breaks_exactness_slightly_and_disables_the_check() -> None:
    model = _model("mlp")
    _, report = widen(model, "1", "net2net", amount=4, noise=5e-5, generator=torch.Generator().manual_seed(5))
    assert report.exact_modes == () and 0 < report.max_abs_diff < 1e-3


def test_bad_requests_raise_one_clear_error() -> None:
    model = _model("resnet")
    with pytest.raises(MorphError, match="odd"):
        widen(model, "3.conv1", "r2r", amount=3)
    with pytest.raises(MorphError, match="residual"):
        widen(model, "0", "net2net", amount=2)
    with pytest.raises(MorphError, match="no widen site 'nope'; known: 0, "):
        widen(model, "nope", "r2r", amount=2)
    with pytest.raises(MorphError, match="exactly one"):
        widen(model, "0", "r2r")
    with pytest.raises(MorphError, match="mfactor"):  # was a ZeroDivisionError
        widen(model, "0", "r2r", factor=2.0, mfactor=0)
    _, report = widen(model, "0", "random_pad", amount=2)
    report.exact_modes = ("eval",)
    with pytest.raises(MorphError, match="not function preserving in eval mode"):
        report.check()


REGISTRY = make_plugin_manager(("morph", morph_hooks)).registry


def test_the_transforms_are_registered_as_mutation_providers() -> None:
    names = {"r2r_widen", "net2net_widen", "netmorph_widen", "random_pad_widen", "r2r_deepen", "net2net_deepen"}
    assert names <= set(REGISTRY.names("mutation"))


@pytest.mark.parametrize("name", REGISTRY.names("mutation"))
def test_every_mutation_provider_reports_and_exact_ones_preserve(name: str) -> None:
    op = REGISTRY.get("mutation", name).factory
    assert callable(op) and hasattr(op, "sites") and isinstance(op.exact, bool), (
        "mutation contract: callable + .sites + .exact"
    )
    tried = 0
    for family in families.FAMILIES:
        model = _model(family)
        sites = op.sites(model)
        if not sites:
            continue
        probe = torch.randn(16, *model.input_shape)
        new, report = op(model, sites[-1], MorphOptions(probe=probe, check=False), torch.Generator().manual_seed(0))
        tried += 1
        assert isinstance(new, nn.Module) and isinstance(report, MorphReport)
        assert report.params_after >= report.params_before and report.flops_after >= report.flops_before
        if op.exact:
            assert report.exact_modes and "eval" in report.exact_modes
            for mode in report.exact_modes:
                assert _diff(model, new, probe, mode == "train") <= TOL
    assert tried, f"mutation '{name}' found no site on any model family"
