"""The block-level R2R ``mutation`` operators (``r2r_block_widen`` / ``r2r_block_deepen``): the provider
contract, exact preservation in train and eval mode, old tensors kept by name, copy semantics."""

from __future__ import annotations

import copy

import pytest
import torch
from evoens_morph import families
from evoens_morph.genome import FilterBank, GenomeNet, base_genome
from evoens_morph.mutations import MorphOptions
from evoens_morph.ne_ops import OPERATORS
from evoens_morph.report import MorphError, MorphReport
from torch import nn

TOL = 1e-5


def _genome_net() -> GenomeNet:
    bank = FilterBank()
    genome = base_genome(bank, image_size=8, widths=(4, 8), fc_hidden=16, generator=torch.Generator().manual_seed(0))
    net = GenomeNet(bank, genome)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(10, (32,), generator=g)
    for _ in range(3):  # trained weights and BN running stats, not the init
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()
    return net


def _models() -> dict[str, nn.Module]:
    return {"genome": _genome_net(), **{f: families.FAMILIES[f]() for f in ("cnn", "resnet", "concat")}}


def _same(a: object, b: object) -> bool:
    """Equal state-dict entries: tensors bitwise, extra state (e.g. a residual slice map's dict) by value."""
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _diff(a: nn.Module, b: nn.Module, x: torch.Tensor, train: bool) -> float:
    a, b = copy.deepcopy(a).train(train), copy.deepcopy(b).train(train)  # train mode moves BN stats: copies
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_site_of_every_model_is_preserved_exactly_and_old_tensors_keep_their_names(name: str) -> None:
    op = OPERATORS[name]
    assert op.name == name and op.exact and callable(op)
    for label, model in _models().items():
        sites = op.sites(model)
        assert sites, f"{name} found no site on {label}"
        before = copy.deepcopy(model.state_dict())
        probe = torch.randn(8, *model.input_shape, generator=torch.Generator().manual_seed(2))
        for kernel in (1, 5):
            for site in sites:
                options = MorphOptions(kernel=kernel, probe=probe)
                new, report = op(model, site, options, torch.Generator().manual_seed(3))
                assert isinstance(report, MorphReport) and report.exact_modes == ("eval", "train")
                assert report.params_after > report.params_before and report.flops_after > report.flops_before
                for train in (False, True):
                    assert _diff(model, new, probe, train) <= TOL, (label, site, kernel, train)
                new_state = new.state_dict()
                for k, v in before.items():  # every old tensor is still there, same name, same value
                    assert _same(new_state[k], v), (label, site, k)
                new_names = {n for n, _ in new.named_parameters()} - {n for n, _ in model.named_parameters()}
                assert new_names == set(report.new_param_names) and new_names
        for k, v in model.state_dict().items():  # the input module is never modified
            assert _same(v, before[k])


def test_widen_then_deepen_chain_stays_exact_and_the_copy_trains_independently() -> None:
    net = _genome_net()
    probe = torch.randn(16, *net.input_shape, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(5)
    new = net
    for kind, site in [("widen", "layers.0"), ("deepen", "layers.2"), ("widen", "layers.0")]:
        new, _ = OPERATORS[f"r2r_block_{kind}"](new, site, MorphOptions(probe=probe), gen)
    for train in (False, True):
        assert _diff(net, new, probe, train) <= TOL
    assert new.genome is None  # no longer described by bank ids
    ref = net.eval()(probe).detach()
    opt = torch.optim.SGD(new.parameters(), lr=0.1)
    new.train()
    nn.functional.cross_entropy(new(probe), torch.zeros(16, dtype=torch.long)).backward()
    opt.step()
    assert torch.equal(net.eval()(probe).detach(), ref)  # copy inheritance: the parent did not move
    assert _diff(net, new, probe, False) > 1e-4


def test_bad_site_or_kernel_is_one_clear_error() -> None:
    model = families.cnn()
    op = OPERATORS["r2r_block_widen"]
    with pytest.raises(MorphError, match="not a site"):
        op(model, "nope")
    with pytest.raises(MorphError, match="must be odd"):
        op(model, op.sites(model)[0], MorphOptions(kernel=2))
    assert op.sites(families.mlp()) == []  # no conv: nothing to widen block-wise
