"""The lambda-interpolation between M independent networks and one wide network: lam = 0 is exactly M
narrow nets (forward and gradients), lam = 1 an explicitly built plain wide net, lam = 0.5 neither;
parameters are listed once and members share no storage; populations agree between vmap and loop."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from evoens_ensemble.interp import (
    BlockConv2d,
    BlockLinear,
    InterpCNN,
    InterpMLP,
    cnn_num_params,
    from_members,
    members,
    mlp_num_params,
    num_params,
    to_wide,
    wide_channels,
    wide_hidden,
)
from torch import Tensor, nn
from torch.testing import assert_close

from evoens.models import convnet, mlp
from evoens.population import Population

EXACT = {"atol": 1e-6, "rtol": 0.0}  # issue 12: lam = 0 equals M independent nets to 1e-6
TOL = {"atol": 1e-5, "rtol": 1e-5}
M, B, CLASSES = 3, 4, 5
IN, HIDDEN = 6, [7, 4]
SHAPE, CHANNELS, KERNEL = (2, 8, 8), [3, 4], 3


def make_mlp(lam: float, **kw) -> InterpMLP:
    return InterpMLP(IN, HIDDEN, CLASSES, M, lam, **kw)


def make_cnn(lam: float, **kw) -> InterpCNN:
    return InterpCNN(SHAPE, CHANNELS, CLASSES, M, lam, kernel=KERNEL, **kw)


FAMILIES: dict[str, tuple[Callable[..., InterpMLP | InterpCNN], tuple[int, ...]]] = {
    "mlp": (make_mlp, (IN,)),
    "cnn": (make_cnn, SHAPE),
}


def narrow_nets(family: str) -> list[nn.Sequential]:
    """M narrow nets built independently, each from its own seed."""
    nets = []
    for seed in range(M):
        torch.manual_seed(100 + seed)
        net = mlp((IN,), CLASSES, HIDDEN, "relu") if family == "mlp" else convnet(SHAPE, CLASSES, CHANNELS, KERNEL)
        nets.append(net)
    return nets


def inputs(family: str, batch: int = B) -> Tensor:
    return torch.randn(batch, *FAMILIES[family][1], generator=torch.Generator().manual_seed(7))


def weighted(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, BlockLinear, BlockConv2d))]


def member_grads(interp: nn.Module, i: int) -> list[Tensor]:
    """Member i's slices of the interp model's gradients, layer by layer (weight, bias)."""
    out = []
    for layer in weighted(interp):
        w, b = layer.weight.grad, layer.bias.grad
        if isinstance(layer, (BlockLinear, BlockConv2d)):
            blocks = w.reshape(M, w.shape[0] // M, M, w.shape[1] // M, *w.shape[2:])
            out += [blocks[i, :, i], b.reshape(M, -1)[i]]
        else:
            out += [w.reshape(M, -1, *w.shape[1:])[i], b.reshape(M, -1)[i]]
    return out


def cross_grads(interp: nn.Module) -> list[Tensor]:
    out = []
    for layer in weighted(interp):
        if isinstance(layer, (BlockLinear, BlockConv2d)):
            w = layer.weight.grad
            blocks = w.reshape(M, w.shape[0] // M, M, w.shape[1] // M, *w.shape[2:])
            out += [blocks[i, :, j] for i in range(M) for j in range(M) if i != j]
    return out


# ------------------------------------------------------------------ lam = 0: M independent networks


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("block_diagonal", [None, False], ids=["fast", "masked"])
def test_lam0_is_m_independent_nets(family: str, block_diagonal: bool | None) -> None:
    nets = narrow_nets(family)
    interp = from_members(nets, 0.0, in_shape=SHAPE if family == "cnn" else None, cross="fresh")
    if block_diagonal is False:  # the masked wide matmul, same weights
        slow = FAMILIES[family][0](0.0, block_diagonal=False)
        slow.load_state_dict(interp.state_dict())
        interp = slow
    assert interp.head.block_diagonal is (block_diagonal is None)  # lam = 0 takes the fast path by default
    assert any(layer.weight.abs().sum() > 0 for layer in weighted(interp) if isinstance(layer, BlockLinear))
    x = inputs(family)
    r = torch.randn(M, B, CLASSES)  # a loss that weighs every member's logits differently
    logits = interp.member_logits(x)  # (M, B, C)
    (logits * r).sum().backward()
    for i, net in enumerate(nets):
        out = net(x)  # (B, C)
        assert_close(logits[i], out, **EXACT)
        (out * r[i]).sum().backward()
        want = [t for layer in weighted(net) for t in (layer.weight.grad, layer.bias.grad)]
        for got, ref in zip(member_grads(interp, i), want, strict=True):
            assert_close(got, ref, **EXACT)
    assert all(torch.count_nonzero(g) == 0 for g in cross_grads(interp))  # cross blocks never reach the output
    assert_close(interp(x), logits.mean(0), **EXACT)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_members_get_only_their_own_gradient(family: str) -> None:
    interp = FAMILIES[family][0](0.0)
    interp.member_logits(inputs(family))[1].sum().backward()  # member 1 alone
    for i in range(M):
        touched = any(torch.count_nonzero(g) > 0 for g in member_grads(interp, i))
        assert touched == (i == 1)


# ------------------------------------------------------------------ lam = 1: one plain wide network


def plain_wide(family: str) -> nn.Sequential:
    """The wide network written out by hand: widths M·h, ONE head."""
    if family == "mlp":
        w = [M * h for h in HIDDEN]
        return nn.Sequential(
            nn.Flatten(), nn.Linear(IN, w[0]), nn.ReLU(), nn.Linear(w[0], w[1]), nn.ReLU(), nn.Linear(w[1], CLASSES)
        )
    c = [M * ch for ch in CHANNELS]
    return nn.Sequential(
        nn.Conv2d(SHAPE[0], c[0], KERNEL, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c[0], c[1], KERNEL, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c[1] * 2 * 2, CLASSES),
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lam1_is_a_plain_wide_net_with_the_mean_head(family: str) -> None:
    interp = FAMILIES[family][0](1.0)
    wide = plain_wide(family)
    body_src, body_dst = weighted(interp)[:-1], weighted(wide)[:-1]
    with torch.no_grad():
        for src, dst in zip(body_src, body_dst, strict=True):
            dst.weight.copy_(src.weight)  # the raw wide weights: nothing is scaled at lam = 1
            dst.bias.copy_(src.bias)
        wide[-1].weight.copy_(interp.head.weight.reshape(M, CLASSES, -1).mean(0))  # mean of the M sub-heads
        wide[-1].bias.copy_(interp.head.bias.reshape(M, CLASSES).mean(0))
    x = inputs(family)
    r = torch.randn(B, CLASSES)
    out, ref = interp(x), wide(x)
    assert_close(out, ref, **EXACT)
    (out * r).sum().backward()
    (ref * r).sum().backward()
    for src, dst in zip(body_src, body_dst):
        assert_close(src.weight.grad, dst.weight.grad, **EXACT)
        assert_close(src.bias.grad, dst.bias.grad, **EXACT)
    head_grad = interp.head.weight.grad.reshape(M, CLASSES, -1)  # each sub-head gets 1/M of the wide head's
    assert_close(head_grad, (wide[-1].weight.grad / M).expand(M, -1, -1), **EXACT)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_to_wide_equals_the_model_at_every_lam(family: str, lam: float) -> None:
    interp = FAMILIES[family][0](lam)
    wide = to_wide(interp)
    assert all(type(m) in (nn.Flatten, nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d) for m in wide)
    x = inputs(family)
    assert_close(wide(x), interp(x), **EXACT)


# ------------------------------------------------------------------ lam = 0.5: strictly between


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lam_half_differs_from_both_ends(family: str) -> None:
    make = FAMILIES[family][0]
    half = make(0.5)
    ends = [make(lam) for lam in (0.0, 1.0)]
    for m in ends:
        m.load_state_dict(half.state_dict())  # the same weights, only lam differs
    x = inputs(family, 16)
    with torch.no_grad():
        out = half.member_logits(x)
        for end in ends:
            assert (out - end.member_logits(x)).abs().max() > 1e-3


def test_lam_interpolates_linearly_in_a_one_hidden_layer_linear_net() -> None:
    """With one hidden layer and no nonlinearity the logits are affine in lam: lam = 0.5 is the midpoint."""
    nets = [InterpMLP(IN, [7], CLASSES, M, lam, activation="identity") for lam in (0.0, 0.5, 1.0)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    x = inputs("mlp")
    with torch.no_grad():
        zero, half, one = (net.member_logits(x) for net in nets)
    assert_close(half, (zero + one) / 2, **EXACT)
    assert (half - zero).abs().max() > 1e-3


# ------------------------------------------------------------------ the seed's pitfalls


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_parameters_are_listed_once_and_never_alias(family: str, lam: float) -> None:
    interp = FAMILIES[family][0](lam)
    listed = [p for _, p in interp.named_parameters(remove_duplicate=False)]
    assert len({id(p) for p in listed}) == len(listed) == len(list(interp.parameters()))
    storages = [p.untyped_storage().data_ptr() for p in listed]
    assert len(set(storages)) == len(storages)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_members_are_distinct_with_their_own_storage(family: str) -> None:
    interp = FAMILIES[family][0](0.0)
    nets = members(interp)
    ptrs = [p.untyped_storage().data_ptr() for net in [interp, *nets] for p in net.parameters()]
    assert len(set(ptrs)) == len(ptrs)  # no member tensor shares memory with another or with the model
    first = [p for p in nets[0].parameters()]
    for net in nets[1:]:
        assert all(not torch.equal(a, b) for a, b in zip(first, net.parameters()))  # distinct initial weights


def test_init_bounds() -> None:
    """Diagonal blocks as a narrow nn.Linear (U(±1/√in)), cross blocks as a wide one (U(±1/√(M·in)))."""
    layer = BlockLinear(50, 40, M, 0.5)
    blocks = layer.weight.detach().reshape(M, 40, M, 50)
    for i in range(M):
        for j in range(M):
            bound = 1 / math.sqrt(50 if i == j else M * 50)
            assert blocks[i, :, j].abs().max() <= bound
            assert blocks[i, :, j].abs().max() > 0.9 * bound


# ------------------------------------------------------------------ conversions


@pytest.mark.parametrize("family", list(FAMILIES))
def test_from_members_and_members_round_trip(family: str) -> None:
    nets = narrow_nets(family)
    interp = from_members(nets, 0.0, in_shape=SHAPE if family == "cnn" else None)
    assert type(interp) is (InterpMLP if family == "mlp" else InterpCNN)
    back = members(interp)
    for net, got in zip(nets, back, strict=True):
        assert repr(got) == repr(net)
        for a, b in zip(net.state_dict().values(), got.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    again = from_members(back, 0.0, in_shape=SHAPE if family == "cnn" else None)
    for a, b in zip(interp.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_zero_cross_blocks_start_as_the_ensemble_at_any_lam(family: str) -> None:
    nets = narrow_nets(family)
    x = inputs(family)
    ensemble = torch.stack([net(x) for net in nets])  # (M, B, C)
    for lam in (0.5, 1.0):
        interp = from_members(nets, lam, in_shape=SHAPE if family == "cnn" else None, cross="zeros")
        assert_close(interp.member_logits(x), ensemble, **EXACT)


def test_conversion_errors() -> None:
    with pytest.raises(ValueError, match="lam must lie in"):
        make_mlp(1.5)
    with pytest.raises(ValueError, match="block_diagonal=True needs lam = 0"):
        make_mlp(0.5, block_diagonal=True)
    with pytest.raises(ValueError, match="only at lam = 0"):
        members(make_mlp(0.5))
    assert len(members(make_mlp(0.5), strict=False)) == M
    with pytest.raises(ValueError, match="in_shape"):
        from_members(narrow_nets("cnn"), 0.0)
    mixed = [*narrow_nets("mlp")[:2], mlp((IN,), CLASSES, [7, 5], "relu")]
    with pytest.raises(ValueError, match="net 2 is not the architecture"):
        from_members(mixed, 0.0)


# ------------------------------------------------------------------ populations


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_population_vmap_matches_loop(family: str, lam: float) -> None:
    P = 3
    base = Population.from_module(FAMILIES[family][0](lam), P, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(base.flat[0], base.flat[1])  # P different models
    x = inputs(family)

    def run(strategy: str) -> tuple[Tensor, Tensor]:
        flat = base.flat.detach().clone().requires_grad_(True)
        pop = base.with_flat(flat)
        out = pop(x, strategy=strategy)  # (P, B, C)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        return out.detach(), flat.grad

    out, grad = run("vmap")
    ref, ref_grad = run("loop")
    assert out.shape == (P, B, CLASSES)
    assert_close(out, ref, **TOL)
    assert_close(grad, ref_grad, **TOL)
    for i in range(P):
        with torch.no_grad():
            assert_close(base.member(i)(x), ref[i], **EXACT)


def test_population_refuses_planned_strategies_and_auto_picks_a_generic_one() -> None:
    pop = Population.from_module(make_mlp(0.5), 3)
    with pytest.raises(ValueError, match="InterpMLP"):
        pop(inputs("mlp"), strategy="bmm")
    pop(inputs("mlp"))
    assert pop.last_strategy in {"loop", "vmap"}


def test_population_of_member_outputs() -> None:
    pop = Population.from_module(make_mlp(0.0, output="members"), 2)
    out = pop(inputs("mlp"), strategy="vmap")  # (P, B, M, C)
    assert out.shape == (2, B, M, CLASSES)
    assert_close(out[1].transpose(0, 1), pop.member(1).member_logits(inputs("mlp")), **EXACT)


# ------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize("family", list(FAMILIES))
def test_num_params_is_the_equivalent_plain_network(family: str) -> None:
    make = FAMILIES[family][0]
    narrow = sum(p.numel() for p in members(make(0.0))[0].parameters())
    assert num_params(make(0.0)) == M * narrow
    assert num_params(make(1.0)) == sum(p.numel() for p in to_wide(make(1.0)).parameters())
    assert num_params(make(0.5)) == sum(p.numel() for p in make(0.5).parameters())
    if family == "mlp":
        assert mlp_num_params(IN, HIDDEN, CLASSES) == narrow
    else:
        assert cnn_num_params(SHAPE, CHANNELS, CLASSES, KERNEL) == narrow


def test_wide_widths_match_the_ensemble_parameter_count() -> None:
    target = 4 * mlp_num_params(784, [64, 32], 10)
    widths = wide_hidden(784, [64, 32], 10, 4)
    assert abs(widths[0] - 2 * widths[1]) <= 1  # proportional to the members' widths
    gap = abs(mlp_num_params(784, widths, 10) - target)
    for first in (widths[0] - 2, widths[0] + 2):  # proportional neighbours are no closer
        other = [first, round(first / 2)]
        assert abs(mlp_num_params(784, other, 10) - target) >= gap
    assert gap / target < 0.01
    channels = wide_channels((1, 28, 28), [8, 16], 10, 4, kernel=5)
    ratio = cnn_num_params((1, 28, 28), channels, 10) / (4 * cnn_num_params((1, 28, 28), [8, 16], 10))
    assert 0.95 < ratio < 1.05
