"""BinaryLinear / BinaryConv2d / BinaryActivation: forward values, scale gradients, batched parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from evoens_binary.layers import (
    BinaryActivation,
    BinaryConv2d,
    BinaryLinear,
    binarize_weight,
    binary_modules,
    sign_mlp,
    use_ste,
)
from evoens_binary.ops import binarize_sign, ste
from torch import nn

from evoens.population import Population


def test_weight_scales_are_the_l2_optimal_alphas() -> None:
    w = torch.randn(4, 6)
    s = binarize_sign(w)
    torch.testing.assert_close(binarize_weight(w, "none"), s)
    torch.testing.assert_close(binarize_weight(w, "layer"), w.abs().mean() * s)
    per = binarize_weight(w, "channel")
    torch.testing.assert_close(per, w.abs().sum(1, keepdim=True) / 6 * s)
    # XNOR: alpha_o = ||W_o||_1 / n minimises ||W_o - alpha sign(W_o)||^2 (check against a grid)
    grid = torch.linspace(0, 3, 3001)
    errs = ((w[:, None, :] - grid[None, :, None] * s[:, None, :]) ** 2).sum(-1)  # (out, grid)
    torch.testing.assert_close(grid[errs.argmin(1)], per.abs()[:, 0], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="unknown weight_scale 'row'"):
        binarize_weight(w, "row")  # type: ignore[arg-type]


def test_channel_scale_gives_the_magnitude_aware_gradient() -> None:
    # dC/dW_ij = c_ij * alpha_i * g(W_ij) + (sum_k c_ik sign(W_ik)) * sign(W_ij) / n
    w = (torch.randn(3, 5) * 0.6).requires_grad_(True)
    c = torch.randn(3, 5)
    (binarize_weight(w, "channel", "clipped") * c).sum().backward()
    wd = w.detach()
    alpha = wd.abs().mean(1, keepdim=True)
    s = binarize_sign(wd)
    want = c * alpha * ste("clipped").grad(wd) + (c * s).sum(1, keepdim=True) * s / 5
    torch.testing.assert_close(w.grad, want)


def test_binary_linear_and_conv_forward_values() -> None:
    lin = BinaryLinear(5, 3, bias=True, weight_scale="channel", binarize_input=True)
    x = torch.randn(7, 5)
    alpha = lin.weight.abs().mean(1, keepdim=True)
    want = F.linear(binarize_sign(x), alpha * binarize_sign(lin.weight), lin.bias)
    torch.testing.assert_close(lin(x), want)
    conv = BinaryConv2d(2, 4, 3, padding=1, weight_scale="layer")
    xi = torch.randn(2, 2, 6, 6)
    want = F.conv2d(xi, conv.weight.abs().mean() * binarize_sign(conv.weight), padding=1)
    torch.testing.assert_close(conv(xi), want)
    # same parameters and state-dict keys as the full-precision layer
    assert set(conv.state_dict()) == set(nn.Conv2d(2, 4, 3, bias=False).state_dict())


def test_population_vmap_equals_loop_forward_and_gradients() -> None:
    model = nn.Sequential(
        BinaryConv2d(1, 3, 3, padding=1, weight_scale="channel"),
        BinaryActivation("approxsign"),
        nn.Flatten(),
        BinaryLinear(48, 2, binarize_input=False, weight_scale="layer", estimator="swishsign"),
    )
    base = Population.from_module(model, 4, generator=torch.Generator().manual_seed(1))
    x = torch.randn(5, 1, 4, 4)
    outs, grads = {}, {}
    for strategy in ("vmap", "loop"):
        flat = base.flat.detach().clone().requires_grad_(True)
        pop = Population(model, flat, strategy=strategy)
        out = pop(x)  # (P, B, 2)
        (out**2).sum().backward()
        outs[strategy], grads[strategy] = out.detach(), flat.grad
    torch.testing.assert_close(outs["vmap"], outs["loop"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads["vmap"], grads["loop"], atol=1e-5, rtol=1e-5)


def test_use_ste_swaps_and_restores() -> None:
    model = nn.Sequential(BinaryLinear(3, 3, estimator="clipped", weight_ste="identity"), BinaryActivation("clipped"))
    with use_ste(model, ste("steep", k=3)):
        assert all(m.ste == ste("steep", k=3) for m in binary_modules(model))
        assert model[0].weight_ste == ste("steep", k=3)
    assert model[0].weight_ste == ste("identity") and model[1].ste == ste("clipped")


def test_sign_mlp_is_the_seed_toy_model() -> None:
    m = sign_mlp([4, 4, 4, 1])
    kinds = [type(layer).__name__ for layer in m]
    assert kinds == ["Linear", "BinaryActivation", "Linear", "BinaryActivation", "Linear"]
    assert all(layer.bias is None for layer in m if isinstance(layer, nn.Linear))
    x = torch.randn(9, 4)
    h = binarize_sign(binarize_sign(x @ m[0].weight.T) @ m[2].weight.T)
    torch.testing.assert_close(m(x), h @ m[4].weight.T)
    with pytest.raises(ValueError, match="at least"):
        sign_mlp([3])


@pytest.mark.parametrize("strategy", ["bmm", "vmap"])
def test_elementwise_binary_activation_runs_in_the_batched_strategies(strategy: str) -> None:
    # BinaryActivation declares evoens_elementwise, so the bmm plan accepts it like nn.Tanh.
    model = sign_mlp([3, 5, 4, 2], "swishsign")
    base = Population.from_module(model, 4, generator=torch.Generator().manual_seed(2))
    x = torch.randn(6, 3)
    flat = base.flat.detach().clone().requires_grad_(True)
    out = Population(model, flat, strategy=strategy)(x)
    out.pow(2).sum().backward()
    ref_flat = base.flat.detach().clone().requires_grad_(True)
    ref = Population(model, ref_flat, strategy="loop")(x)
    ref.pow(2).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flat.grad, ref_flat.grad, atol=1e-5, rtol=1e-5)


def test_kbit_activation_checks_bits_when_built() -> None:
    with pytest.raises(ValueError, match="integer bits >= 1, got bits=0"):
        BinaryActivation(convention="kbit", bits=0)
    act = BinaryActivation(convention="kbit", bits=2)
    assert act(torch.tensor([0.0, 0.4, 1.2])).tolist() == pytest.approx([0.0, 1 / 3, 1.0])
