"""binary_mlp / binary_cnn providers: batched = loop, ±1 forward, STE gradients by hand, options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from evoens_binary import hooks
from evoens_binary.layers import BinaryActivation, BinaryConv2d, BinaryLinear
from evoens_binary.ops import binarize_sign, ste
from torch import nn

from evoens.config import ConfigError, ModelConfig
from evoens.fitness import neg_cross_entropy
from evoens.population import Population
from evoens.testing import make_plugin_manager

REGISTRY = make_plugin_manager(("binary", hooks)).registry
MODELS = ("binary_mlp", "binary_cnn")


def _build(name: str, shape: tuple[int, ...], hidden: list[int] | None = None, **options: object) -> nn.Module:
    cfg = ModelConfig(name=name, hidden=hidden or [12, 10], options=dict(options))
    return REGISTRY.create("model", name, shape, 10, cfg)


def _pop(template: nn.Module, size: int = 3, seed: int = 0) -> Population:
    return Population.from_module(template, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
def test_conformance_shape_64_default_config(name: str) -> None:
    """What tests/test_providers.py runs for every model: (64,) inputs, ModelConfig() defaults."""
    template = REGISTRY.create("model", name, (64,), 10, ModelConfig())
    pop = _pop(template)
    x = torch.rand(5, 64)
    out = pop(x)
    assert out.shape == (3, 5, 10)
    torch.testing.assert_close(out, pop(x, strategy="loop"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [
        ("binary_mlp", (1, 8, 8), {"norm": "layer", "weight_scale": "layer", "ste": "swishsign"}),
        ("binary_mlp", (64,), {"norm": "batch", "weight_scale": "xnor", "ste": "approxsign", "fp_ends": False}),
        ("binary_mlp", (64,), {"norm": "none", "weight_scale": "none", "binary_activations": False}),
        ("binary_cnn", (1, 8, 8), {"norm": "layer", "weight_scale": "channel", "channels": [4, 6]}),
        ("binary_cnn", (64,), {"norm": "batch", "ste": "steep", "ste_params": {"k": 3.0}, "fp_ends": False}),
    ],
)
def test_batched_forward_and_gradients_equal_the_member_loop(
    name: str, shape: tuple[int, ...], options: dict, train: bool
) -> None:
    template = _build(name, shape, hidden=[12, 10, 8], **options).train(train)
    base = _pop(template, 4, seed=1)
    # batch statistics of +-1 sums tie at the threshold in small batches (see evoens_binary.models)
    batch = 64 if options["norm"] == "batch" else 6
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    outs, grads = {}, {}
    for strategy in ("vmap", "loop"):
        flat = base.flat.detach().clone().requires_grad_(True)
        out = Population(template, flat, strategy=strategy)(x)  # (P, B, 10)
        (-neg_cross_entropy(out, y).sum()).backward()
        outs[strategy], grads[strategy] = out.detach(), flat.grad
    # and each member alone, as an ordinary module
    single = torch.stack([base.member(i).train(train)(x) for i in range(base.size)]).detach()
    torch.testing.assert_close(outs["vmap"], outs["loop"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["loop"], single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads["vmap"], grads["loop"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("scale", ["none", "layer", "channel"])
def test_forward_computes_with_plus_minus_one(name: str, scale: str) -> None:
    extra = {"channels": [4, 6, 5]} if name == "binary_cnn" else {}
    template = _build(name, (1, 8, 8), hidden=[16, 12, 8], weight_scale=scale, **extra)
    model = _pop(template, 2).member(1)
    acts: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    binary = [m for m in model.modules() if isinstance(m, (BinaryLinear, BinaryConv2d))]
    for m in model.modules():
        if isinstance(m, BinaryActivation):
            m.register_forward_hook(lambda _m, _i, out: acts.append(out))
    for m in binary:
        m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    model(torch.randn(7, 1, 8, 8))
    assert len(binary) == 2 and len(acts) == 3 and len(inputs) == 2
    for t in acts + inputs:  # every hidden activation and every binary layer's input is exactly +-1
        assert set(t.unique().tolist()) == {-1.0, 1.0}
    for m in binary:  # the effective weight is alpha * sign(latent W), one alpha per scale group
        w = m.binary_weight().detach()
        groups = w.flatten(1) if scale == "channel" else w.reshape(1, -1)
        assert all(torch.allclose(row.abs(), row.abs()[0].expand_as(row)) for row in groups)
        torch.testing.assert_close(w.sign(), binarize_sign(m.weight.detach()))
        if scale == "none":
            assert set(w.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("estimator", ["clipped", "identity", "approxsign", "swishsign", "steep"])
@pytest.mark.parametrize("scale", ["none", "layer", "channel"])
def test_latent_weight_gradient_is_the_ste_backward_by_hand(estimator: str, scale: str) -> None:
    """x -> Linear -> sign -> BinaryLinear -> sign -> Linear, mean CE: the gradient w.r.t. the latent
    weights through the batched population equals the chain rule with g = the STE derivative."""
    template = _build("binary_mlp", (5,), hidden=[6, 4], norm="none", weight_scale=scale, ste=estimator)
    pop = _pop(template, 2, seed=3)
    flat = (pop.flat.detach() * 3).requires_grad_(True)  # wider latent spread: some |w| > 1 for clipped
    x, y = torch.randn(9, 5), torch.randint(0, 10, (9,))
    out = Population(template, flat, strategy="vmap")(x)  # (P, B, 10)
    (-neg_cross_entropy(out, y).sum()).backward()
    g = ste(estimator).grad
    sign = binarize_sign
    params = Population(template, flat.detach()).params
    grads = {s.name: flat.grad[:, s.offset : s.offset + s.numel].view(-1, *s.shape) for s in pop.layout}
    for i in range(pop.size):
        names = ("0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias")
        W1, b1, W2, b2, W3, b3 = (params[k][i] for k in names)
        s2 = sign(W2)
        alpha = {"none": torch.ones(()), "layer": W2.abs().mean(), "channel": W2.abs().mean(1, keepdim=True)}[scale]
        z1 = x @ W1.T + b1
        a1 = sign(z1)
        z2 = a1 @ (alpha * s2).T + b2
        a2 = sign(z2)
        o = a2 @ W3.T + b3
        d_o = (F.softmax(o, dim=1) - F.one_hot(y, 10)) / len(y)  # d mean-CE / d logits
        d_z2 = (d_o @ W3) * g(z2)
        G = d_z2.T @ a1  # d L / d (alpha * sign(W2)), (out, in)
        d_W2 = alpha * g(W2) * G
        if scale == "layer":
            d_W2 = d_W2 + s2 * (G * s2).sum() / W2.numel()
        if scale == "channel":
            d_W2 = d_W2 + s2 * (G * s2).sum(1, keepdim=True) / W2.shape[1]
        d_z1 = (d_z2 @ (alpha * s2)) * g(z1)
        torch.testing.assert_close(grads["3.weight"][i], d_W2, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grads["3.bias"][i], d_z2.sum(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grads["0.weight"][i], d_z1.T @ x, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grads["6.weight"][i], d_o.T @ a2, atol=1e-5, rtol=1e-4)


def test_full_precision_variant_has_no_binarizing_module() -> None:
    model = _build("binary_mlp", (64,), binary_weights=False, binary_activations=False)
    assert not [m for m in model.modules() if isinstance(m, (BinaryActivation, BinaryLinear))]
    assert [type(m).__name__ for m in model] == ["Linear", "LayerNorm", "Tanh", "Linear", "LayerNorm", "Tanh", "Linear"]


@pytest.mark.parametrize(
    ("name", "options", "shape", "match"),
    [
        ("binary_mlp", {"stee": "clipped"}, (64,), r"unknown option\(s\) stee; options: ste \("),
        ("binary_mlp", {"ste": "sgn"}, (64,), "options.ste = 'sgn' is not a known STE"),
        ("binary_mlp", {"weight_scale": "row"}, (64,), "options.weight_scale = 'row' must be one of none, layer"),
        ("binary_mlp", {"ste": "steep", "ste_params": {"k": -1}}, (64,), "steep STE needs k > 0"),
        ("binary_mlp", {"ste": "steep", "ste_params": {"k": "2"}}, (64,), "ste_params.k = '2' must be a number"),
        ("binary_mlp", {"weight_scale": ["layer"]}, (64,), r"options.weight_scale = \['layer'\] must be one of"),
        ("binary_mlp", {"channels": [4]}, (64,), r"unknown option\(s\) channels"),
        ("binary_mlp", {"norm": "group"}, (64,), "options.norm = 'group' must be one of layer, batch, none"),
        ("binary_cnn", {"kernel": 4}, (64,), "options.kernel = 4 must be an odd positive integer"),
        ("binary_cnn", {"fp_ends": "yes"}, (64,), "options.fp_ends = 'yes' must be true or false"),
        ("binary_cnn", {}, (10,), r"needs \(C, H, W\) inputs or a flat square"),
        ("binary_cnn", {"channels": [4, 4, 4, 4]}, (64,), "pool a 8x8 input below 1x1"),
    ],
)
def test_bad_options_are_one_config_error_line(name: str, options: dict, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        REGISTRY.create("model", name, shape, 10, ModelConfig(name=name, options=options))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="model.hidden is empty"):
        REGISTRY.create("model", "binary_mlp", (64,), 10, ModelConfig(hidden=[]))
