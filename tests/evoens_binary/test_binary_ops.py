"""Binarisation forwards and the STE family: values, surrogate derivatives, vmap."""

from __future__ import annotations

import pytest
import torch
from evoens_binary.ops import STES, binarize_sign, binarize_step, quantize, quantize_kbit, ste
from torch.func import functional_call, grad, vmap

ALL = [("identity", {}), ("clipped", {}), ("relu", {}), ("steep", {"k": 2.0}), ("steep", {"k": 3.0}),
       ("approxsign", {}), ("swishsign", {}), ("swishsign", {"beta": 2.0})]  # fmt: skip


def test_sign_maps_zero_to_plus_one_and_step_thresholds_at_half() -> None:
    x = torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 0.49, 0.5, 3.0])
    assert binarize_sign(x).tolist() == [-1, -1, 1, 1, 1, 1, 1]
    assert binarize_step(x).tolist() == [0, 0, 0, 0, 0, 1, 1]
    # step(x) = (sign(2x - 1) + 1) / 2: the affine link between the two conventions
    torch.testing.assert_close(binarize_step(x), (binarize_sign(2 * x - 1) + 1) / 2)


def test_kbit_levels_and_one_bit_is_step() -> None:
    x = torch.linspace(-0.5, 1.5, 201)
    assert sorted(set(quantize_kbit(x, 2).tolist())) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    torch.testing.assert_close(quantize_kbit(x, 1), binarize_step(x))
    # ternary-like thresholds of the 2-level quantiser (n = 2 would be 0.25/0.75; n = 3 here: 1/6, 1/2, 5/6)
    assert quantize_kbit(torch.tensor([0.16, 0.17]), 2).tolist() == pytest.approx([0, 1 / 3])
    with pytest.raises(ValueError, match="bits"):
        quantize(x, "kbit", bits=0)


@pytest.mark.parametrize("convention", ["sign", "step"])
@pytest.mark.parametrize(("name", "params"), ALL)
def test_backward_is_the_derivative_of_the_surrogate(name: str, params: dict, convention: str) -> None:
    est = ste(name, **params)
    x = torch.linspace(-1.7, 1.7, 341, dtype=torch.float64)
    if convention == "step":
        x = (x + 1) / 2  # the same points in 0/1 coordinates
    kinks = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    kinks = torch.cat([kinks, kinks / params.get("k", 1.0)])
    u = x if convention == "sign" else 2 * x - 1
    x = x[(u[:, None] - kinks).abs().min(1).values > 1e-3]  # finite differences are wrong at kinks
    h = 1e-6
    fd = (est.surrogate(x + h, convention) - est.surrogate(x - h, convention)) / (2 * h)
    xr = x.clone().requires_grad_(True)
    out = est(xr, convention)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(xr.grad, fd, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(est.grad(x, convention), fd, atol=1e-6, rtol=1e-6)
    # ... while the forward is the hard quantiser
    torch.testing.assert_close(out.detach(), quantize(x, convention))


def test_surrogates_saturate_to_the_quantiser() -> None:
    x = torch.tensor([-5.0, -1.5, 1.5, 5.0])
    for name in ("clipped", "approxsign", "steep"):
        torch.testing.assert_close(ste(name).surrogate(x), binarize_sign(x))
    torch.testing.assert_close(ste("swishsign").surrogate(torch.tensor([-20.0, 20.0])), torch.tensor([-1.0, 1.0]))
    assert ste("steep", k=2).grad(torch.tensor([0.4, 0.6])).tolist() == [2.0, 0.0]
    # Yin et al.'s ReLU STE: in the 0/1 convention F = relu and g = 1[x > 0]
    x01 = torch.tensor([-0.5, 0.25, 2.0])
    torch.testing.assert_close(ste("relu").surrogate(x01, "step"), torch.relu(x01))
    assert ste("relu").grad(x01, "step").tolist() == [0.0, 1.0, 1.0]


def test_ste_under_vmap_and_functional_call_matches_the_loop() -> None:
    est = ste("approxsign")
    layer = torch.nn.Linear(3, 4, bias=False)
    x = torch.randn(6, 3)
    ws = torch.randn(5, 4, 3)

    def loss(w: torch.Tensor) -> torch.Tensor:
        return est(functional_call(layer, {"weight": w}, (x,))).mul(torch.arange(4.0)).sum()

    batched = vmap(grad(loss))(ws)
    loop = torch.stack([grad(loss)(w) for w in ws])
    torch.testing.assert_close(batched, loop)
    manual = torch.stack([((torch.arange(4.0)[None] * est.grad(x @ w.T)).T @ x) for w in ws])
    torch.testing.assert_close(batched, manual)


def test_registry_names_aliases_and_errors() -> None:
    assert set(STES) == {"identity", "clipped", "relu", "steep", "approxsign", "swishsign"}
    assert ste("vanilla") == ste("clipped") and ste("poly") == ste("approxsign")
    assert ste("steep", k=4).params == {"k": 4.0} and ste("swishsign").params == {"beta": 5.0}
    with pytest.raises(ValueError, match="unknown STE 'nope'.*known: "):
        ste("nope")
    with pytest.raises(ValueError, match="does not take parameters"):
        ste("clipped", k=2)
    with pytest.raises(ValueError, match="k > 0"):
        ste("steep", k=0)
    with pytest.raises(ValueError, match="unknown convention"):
        ste("clipped")(torch.zeros(2), "ternary")  # type: ignore[arg-type]
