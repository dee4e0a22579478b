"""Gradient estimators: CDG vs autograd, STE last layer vs CDG, NES convergence, batched vs loop."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from evoens_binary import hooks as binary_hooks
from evoens_binary.analysis import best_lr, cosine_per_tensor, loss_decrease, normalize
from evoens_binary.cdg import CdgConfig, CdgGradient, cdg, cdg_loop
from evoens_binary.estimators import SteGradient
from evoens_binary.hybrid import (
    ControlVariateConfig,
    ControlVariateNes,
    GuidedNesGradient,
    HandoverConfig,
    SteThenNes,
    guided_noise,
    nes_control_variate,
)
from evoens_binary.layers import BinaryLinear, sign_mlp
from evoens_binary.nes import NesConfig, NesGradient, nes, nes_loop, nes_nested
from evoens_binary.objective import FunctionObjective, ModelObjective, cross_entropy_loss, mse_loss
from evoens_binary.ops import STES, ste
from torch import nn

from evoens.testing import make_plugin_manager


def _toy(dim: int = 4, batch: int = 256, seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelObjective:
    torch.manual_seed(seed)
    student, teacher = sign_mlp([dim, dim, dim, 1]).to(dtype), sign_mlp([dim, dim, dim, 1]).to(dtype)
    x = torch.randn(batch, dim, dtype=dtype)
    with torch.no_grad():
        y = teacher(x)
    return ModelObjective(student, (x, y), strategy="bmm")


def _quadratic(dim: int = 12, seed: int = 0) -> tuple[FunctionObjective, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    a = a @ a.T / dim + torch.eye(dim, dtype=torch.float64)
    w0 = torch.randn(dim, generator=g, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64)

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        w = p["w"]
        return 0.5 * w @ a @ w + b @ w

    return FunctionObjective(f, {"w": w0}), a @ w0 + b  # the analytic gradient


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def test_cdg_equals_autograd_on_a_full_precision_network() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    g = CdgGradient(eps=1e-4).estimate(model, batch=(x, y), loss_fn=cross_entropy_loss, strategy="bmm")
    ref = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(
        nn.functional.cross_entropy(model(x), y), list(model.parameters()))))  # fmt: skip
    cos = cosine_per_tensor(g, ref)
    assert set(cos) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert min(cos.values()) > 0.9999, cos
    for name in ref:
        torch.testing.assert_close(g[name], ref[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(STES))
def test_ste_last_layer_equals_cdg_with_a_linear_output(name: str) -> None:
    # The loss is quadratic in the last layer, so CDG is exact there, and a proper STE (forward =
    # sign, backward = g) leaves the last layer's input untouched: cosine 1, equal values.
    obj = _toy(dim=6, batch=512, dtype=torch.float64)
    ste_g = SteGradient(ste=name).estimate(obj)
    ref = obj.unflatten(cdg(obj, CdgConfig(eps=0.1)))
    assert cosine_per_tensor(ste_g, ref)["4.weight"] == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(ste_g["4.weight"], ref["4.weight"], atol=1e-8, rtol=1e-6)
    # the hidden layers are NOT exact (that is the point of the comparison)
    assert cosine_per_tensor(ste_g, ref)["0.weight"] < 0.999


def test_nes_converges_to_the_analytic_gradient_as_the_population_grows() -> None:
    obj, grad = _quadratic()
    cos = [_cos(nes(obj, NesConfig(popsize=p, sigma=0.1, seed=3)), grad) for p in (20, 200, 2000, 20000)]
    assert cos[-1] > 0.99, cos
    assert cos[0] < cos[1] < cos[3] and cos[2] > 0.95, cos
    # without mirrored pairs the baseline L(w) keeps it unbiased; shaping keeps the direction
    plain = _cos(nes(obj, NesConfig(popsize=20000, antithetic=False, seed=3)), grad)
    shaped = _cos(nes(obj, NesConfig(popsize=20000, shaping="centered", seed=3)), grad)
    assert plain > 0.95 and shaped > 0.98, (plain, shaped)


SHAPES = [("none", True), ("none", False), ("centered", True), ("nes", False)]


@pytest.mark.parametrize("strategy", ["bmm", "vmap"])
@pytest.mark.parametrize(("shaping", "antithetic"), SHAPES)
def test_nes_batched_equals_the_loop_reference(strategy: str, shaping: str, antithetic: bool) -> None:
    obj = _toy(dim=3, batch=64)
    obj.strategy = strategy
    cfg = NesConfig(popsize=60, sigma=0.2, shaping=shaping, antithetic=antithetic, chunk=7, seed=5)
    torch.testing.assert_close(nes(obj, cfg), nes_loop(obj, cfg), atol=1e-5, rtol=1e-4)


def test_cdg_batched_equals_the_loop_reference() -> None:
    obj = _toy(dim=4, batch=128)
    torch.testing.assert_close(cdg(obj, CdgConfig(eps=0.1, chunk=9)), cdg_loop(obj, CdgConfig(eps=0.1)))


def test_nested_nes_estimates_are_the_prefix_estimates() -> None:
    obj = _toy(dim=3, batch=64)
    cfg = NesConfig(popsize=2, sigma=0.1, chunk=10, seed=1)
    for p, g in zip((20, 100, 300), nes_nested(obj, cfg, (20, 100, 300))):
        torch.testing.assert_close(g, nes(obj, replace(cfg, popsize=p)))


def test_guided_noise_has_the_guided_es_covariance() -> None:
    obj, _ = _quadratic(dim=6)
    u = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))[0]  # (d, k) orthonormal
    s = guided_noise(u, 0.25)(torch.Generator().manual_seed(0), 200_000, obj)  # (N, d)
    cov = s.T @ s / s.shape[0]
    want = 0.25 * torch.eye(6, dtype=torch.float64) + 0.75 * 6 / 2 * u @ u.T
    torch.testing.assert_close(cov, want, atol=0.05, rtol=0.02)


def test_guided_nes_with_an_exact_guide_beats_plain_nes_at_small_popsize() -> None:
    # On a function objective the "STE" is exact autograd: guidance then must help at equal cost.
    obj, grad = _quadratic(dim=40)
    cfg = NesConfig(popsize=40, sigma=0.1, seed=2)
    guided = [_cos(GuidedNesGradient(nes=replace(cfg, seed=s)).flat_gradient(obj), grad) for s in range(5)]
    plain = [_cos(nes(obj, replace(cfg, seed=s)), grad) for s in range(5)]
    assert min(guided) > max(plain), (guided, plain)


def test_ste_then_nes_hands_over_on_a_plateau() -> None:
    obj, grad = _quadratic(dim=8)
    est = SteThenNes(HandoverConfig(patience=3, nes=NesConfig(popsize=400), guided=False))
    for _ in range(3):  # the same loss every call: no gain over the first one in the next 3 calls
        torch.testing.assert_close(est.flat_gradient(obj), grad)  # exact autograd = the STE here
    g = est.flat_gradient(obj)
    assert est.switched_at == 3 and not torch.allclose(g, grad) and _cos(g, grad) > 0.8
    est.reset()
    assert est.switched_at is None and est.history == []


def test_loss_decrease_is_one_population_of_normalised_steps() -> None:
    obj = _toy(dim=3, batch=64)
    grads = [SteGradient().estimate(obj), NesGradient(popsize=100).estimate(obj)]
    lrs = [0.01, 0.1, 1.0]
    dec = loss_decrease(obj, grads, lrs)
    assert dec.shape == (2, 3)
    base = obj.loss(obj.x0)
    for e, g in enumerate(grads):
        step = obj.flatten(normalize(g))
        for j, lr in enumerate(lrs):
            torch.testing.assert_close(dec[e, j], base - obj.loss(obj.x0 - lr * step), atol=1e-5, rtol=1e-4)


def test_normalize_and_cosine_helpers() -> None:
    g = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 0.0, 12.0])}
    per = normalize(g, "per_tensor")
    assert float(per["a"].norm()) == pytest.approx(1.0) and float(per["b"].norm()) == pytest.approx(1.0)
    glob = normalize(g, "global")
    assert float(torch.cat([glob["a"], glob["b"]]).norm()) == pytest.approx(1.0)
    cos = cosine_per_tensor(g, {"a": torch.tensor([-3.0, -4.0]), "b": torch.tensor([1.0, 0.0, 0.0])})
    assert cos == pytest.approx({"a": -1.0, "b": 0.0})
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize(g, "layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing tensors"):
        cosine_per_tensor({"a": g["a"]}, g)


def test_bad_configs_fail_with_one_clear_line() -> None:
    with pytest.raises(ValueError, match="even with antithetic"):
        NesConfig(popsize=5)
    with pytest.raises(ValueError, match="unknown nes shaping"):
        NesConfig(shaping="rank")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps must be > 0"):
        CdgConfig(eps=0)
    with pytest.raises(ValueError, match="not in the model"):
        ModelObjective(sign_mlp([2, 2, 1]), (torch.zeros(1, 2), torch.zeros(1, 1)), params={"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="needs batch"):
        CdgGradient().estimate(sign_mlp([2, 2, 1]))


REGISTRY = make_plugin_manager(("binary", binary_hooks)).registry  # the plugin's own registry


@pytest.mark.parametrize("name", REGISTRY.names("grad_estimator"))
def test_grad_estimator_provider_conformance(name: str) -> None:
    """Every registered grad_estimator: one finite tensor per parameter, of the parameter's shape."""
    torch.manual_seed(0)
    model = nn.Sequential(BinaryLinear(3, 4, weight_scale="channel"), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    est = REGISTRY.create("grad_estimator", name)
    grads = est.estimate(model, batch=(x, y))
    params = dict(model.named_parameters())
    assert set(grads) == set(params)
    for key, p in params.items():
        assert grads[key].shape == p.shape and torch.isfinite(grads[key]).all(), key
    sub = est.estimate(model, params={"2.weight": params["2.weight"]}, batch=(x, y))  # a subset only
    assert set(sub) == {"2.weight"} and sub["2.weight"].shape == (1, 4)


def test_the_registered_names() -> None:
    names = set(REGISTRY.names("grad_estimator"))
    assert {f"ste:{n}" for n in STES} | {"nes", "cdg", "nes_guided", "nes_cv", "ste_nes"} <= names


def test_control_variate_nes_is_exact_with_an_exact_guide_and_unbiased_otherwise() -> None:
    obj, grad = _quadratic(dim=40)
    # mirrored differences of a quadratic are exactly sigma s.grad: the residuals vanish
    cv = nes_control_variate(obj, ControlVariateConfig(nes=NesConfig(popsize=10)))
    assert _cos(cv, grad) > 0.99999
    # on a binary net the STE guide is biased; averaged over draws nes_cv still lands on NES's target
    toy = _toy(dim=4, batch=256)
    mean_cv = torch.stack([ControlVariateNes(popsize=400, seed=s).flat_gradient(toy) for s in range(12)]).mean(0)
    target = nes(toy, NesConfig(popsize=40_000, seed=99))
    one_plain = nes(toy, NesConfig(popsize=400, seed=0))
    assert _cos(mean_cv, target) > 0.97 and _cos(mean_cv, target) > _cos(one_plain, target)
    with pytest.raises(ValueError, match="antithetic"):
        ControlVariateConfig(nes=NesConfig(popsize=10, antithetic=False))


def test_losses_refuse_targets_that_would_broadcast() -> None:
    # (P, B, 1) predictions minus (B,) targets would silently broadcast to (P, B, B)
    pred = torch.zeros(2, 5, 1)
    with pytest.raises(ValueError, match=r"targets of shape \(5,\) do not match .*\(5, 1\)"):
        mse_loss(pred, torch.zeros(5))
    assert mse_loss(pred, torch.ones(5, 1)).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="integer labels"):
        cross_entropy_loss(torch.zeros(2, 5, 3), torch.zeros(5, 1, dtype=torch.long))
    model = sign_mlp([3, 3, 1])
    with pytest.raises(ValueError, match="reshape the targets"):
        SteGradient().estimate(model, batch=(torch.randn(8, 3), torch.randn(8)))


def test_model_objective_fixes_the_point_even_if_the_model_moves() -> None:
    # loss() (autograd, loops) and losses() (batched) must see the same weights for unselected tensors
    torch.manual_seed(0)
    model = sign_mlp([3, 3, 1])
    x = torch.randn(16, 3)
    obj = ModelObjective(model, (x, torch.randn(16, 1)), params={"2.weight": model[2].weight}, strategy="bmm")
    before = float(obj.loss(obj.x0))
    with torch.no_grad():
        model[0].weight.add_(1.0)  # e.g. an optimiser step after the objective was built
    assert float(obj.loss(obj.x0)) == pytest.approx(before)
    assert float(obj.losses(obj.x0[None])[0]) == pytest.approx(before, rel=1e-5)
    with pytest.raises(ValueError, match="params is empty"):
        ModelObjective(model, (x, torch.randn(16, 1)), params={})
    with pytest.raises(ValueError, match="pass it alone"):
        SteGradient().estimate(obj, batch=(x, torch.randn(16, 1)))  # would silently keep obj's own batch


def test_estimator_keywords_are_checked_and_ste_parameters_pass_through() -> None:
    assert SteGradient(ste="steep", k=3).ste == ste("steep", k=3)
    assert REGISTRY.create("grad_estimator", "ste:swishsign", beta=2.0).ste.params == {"beta": 2.0}
    with pytest.raises(ValueError, match="does not take parameters"):
        SteGradient(ste="clipped", k=3)
    for name, bad in [("nes", {"popsiz": 10}), ("cdg", {"epsilon": 0.1}), ("nes_guided", {"alpah": 0.5}),
                      ("nes_cv", {"guide": "clipped"}), ("ste_nes", {"patients": 3})]:  # fmt: skip
        with pytest.raises(ValueError, match=f"estimator '{name}' has no option.*its options are"):
            REGISTRY.create("grad_estimator", name, **bad)
    assert GuidedNesGradient(popsize=40, alpha=0.3).config.nes.popsize == 40
    with pytest.raises(ValueError, match="not both"):
        NesGradient(NesConfig(), popsize=10)
    with pytest.raises(ValueError, match="alpha must be in"):
        HandoverConfig(alpha=1.5)


def test_best_lr_picks_the_largest_decrease_of_one_curve() -> None:
    assert best_lr([0.01, 0.1, 1.0], torch.tensor([0.1, 0.3, -0.2])) == (0.1, pytest.approx(0.3))
    with pytest.raises(ValueError, match="one \\(L,\\) row"):
        best_lr([0.01, 0.1], torch.zeros(2, 2))


def test_misshapen_gradients_are_refused_not_misaligned() -> None:
    obj = _toy(dim=3, batch=16)
    g = SteGradient().estimate(obj)
    bad = {**g, "4.weight": g["4.weight"].reshape(3, 1)}  # the right size, the wrong shape
    with pytest.raises(ValueError, match=r"tensor '4.weight' must have shape \(1, 3\), got \(3, 1\)"):
        loss_decrease(obj, [bad], [0.1])
    with pytest.raises(ValueError, match="gradient '4.weight' has shape"):
        cosine_per_tensor(bad, g)


@pytest.mark.parametrize("name", ["nes", "nes_guided", "nes_cv"])
def test_sampling_estimators_draw_fresh_noise_each_call_and_repeat_after_reset(name: str) -> None:
    # A training loop calls the estimator once per step: a fixed seed would reuse the same directions.
    obj = _toy(dim=3, batch=64)  # not a quadratic: there nes_cv with an exact guide is noise-free
    est = REGISTRY.create("grad_estimator", name, popsize=20, seed=4)
    first, second = est.flat_gradient(obj), est.flat_gradient(obj)
    assert not torch.allclose(first, second)
    est.reset()
    torch.testing.assert_close(est.flat_gradient(obj), first)
    # call 0 is exactly the one-shot estimate with the configured seed (what the benchmark reports)
    if name == "nes":
        torch.testing.assert_close(first, nes(obj, NesConfig(popsize=20, seed=4)))
