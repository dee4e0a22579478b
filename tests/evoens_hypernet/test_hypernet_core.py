"""Properties of the hypernet plugin's pure-torch core: weight space, refiner, meta-objectives."""

from __future__ import annotations

import math

import pytest
import torch
from evoens_hypernet.generator import GeneratorTooLarge, check_memory
from evoens_hypernet.meta import MetaTerms, inner_targets, meta_loss, plain_evaluate, pull_loss
from evoens_hypernet.models import vq_cnn
from evoens_hypernet.refiner import VQRefiner
from evoens_hypernet.space import WeightSpace, fan_in_scale
from torch import nn
from torch.func import functional_call

from evoens.population import Population


def small_space() -> WeightSpace:
    torch.manual_seed(0)
    return WeightSpace(vq_cnn((1, 8, 8), 3, channels=3, hidden=5))


def refiner(refiner: str = "mlp", **kw) -> VQRefiner:
    torch.manual_seed(1)
    return VQRefiner(small_space(), stages=5, options=3, hidden=7, refiner=refiner, **kw)


def batch(b: int = 3, n: int = 6, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 1, 8, 8, generator=g), torch.randint(3, (b, n), generator=g)


def test_the_seeds_cnn_has_60106_parameters_and_fan_in_scales():
    space = WeightSpace(vq_cnn((1, 28, 28)))
    assert space.dim == 60_106 == 320 + 9_248 + 50_208 + 330
    scales = {name: s for name, _, s in space.param_spec()}
    assert scales["1.weight"] == pytest.approx(1 / 3)  # conv 1x3x3
    assert scales["3.weight"] == pytest.approx(1 / math.sqrt(32 * 9))
    assert scales["6.weight"] == pytest.approx(1 / math.sqrt(1568))
    assert scales["8.bias"] == pytest.approx(1 / math.sqrt(10))
    module = vq_cnn((1, 28, 28))
    u = space.flatten(module)
    params = space.unflatten(u)
    for name, p in module.named_parameters():
        torch.testing.assert_close(params[name], p.detach())


def test_a_shape_without_a_fan_in_is_a_clear_error():
    with pytest.raises(ValueError, match="no fan-in scale"):
        fan_in_scale("temperature", ())

    class Scalar(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.t = nn.Parameter(torch.tensor(1.0))

    with pytest.raises(ValueError, match="parameter 't' of shape"):
        WeightSpace(Scalar())


@pytest.mark.parametrize("path", ["hidden", "stages"])
@pytest.mark.parametrize("kind", ["mlp", "mlp_large", "bias"])
def test_decode_is_deterministic_and_equals_the_all_proposals_reference(kind, path):
    r = refiner(kind, path=path)
    codes = r.sample_codes(4, torch.Generator().manual_seed(0))
    a, b = r.decode(codes), r.decode(codes.clone())
    assert torch.equal(a, b)
    with torch.no_grad():  # the original: all K proposals of every stage, then the code's pick
        u = torch.zeros(4, r.space.dim)
        for t in range(r.stages):
            u = r.proposals(t, u)[torch.arange(4), codes[:, t]]
    torch.testing.assert_close(a, u, rtol=1e-5, atol=1e-5)
    seq = r.decode(codes, return_sequence=True)
    assert seq.shape == (4, r.stages, r.space.dim)
    torch.testing.assert_close(seq[:, -1], a)


def test_bias_refiner_is_the_additive_codebook():
    r = refiner("bias")
    codes = r.sample_codes(5, torch.Generator().manual_seed(3))
    closed = sum(r.output_scales[t] * r.biases[t, codes[:, t]] for t in range(r.stages))  # Σ_t σ_t b_{t,z_t}
    torch.testing.assert_close(r.decode(codes), closed)
    assert not hasattr(r, "out_layer")  # the ablation allocates no network


def _grads(r: VQRefiner, codes: torch.Tensor) -> list[torch.Tensor]:
    r.zero_grad(set_to_none=True)
    w = torch.linspace(-1, 1, r.space.dim)
    (r.decode(codes) * w).pow(2).sum().backward()
    return [p.grad.clone() for p in r.parameters()]


def test_checkpointed_deferred_and_plain_decodes_give_the_same_gradients():
    codes = refiner().sample_codes(6, torch.Generator().manual_seed(4))
    reference = refiner(use_checkpoint=False, deferred_grads=False, path="stages")
    plain = _grads(reference, codes)
    for kw in ({"use_checkpoint": True}, {"use_checkpoint": False}, {"use_checkpoint": True, "deferred_grads": False}):
        got = _grads(refiner(**kw, path="stages"), codes)
        for a, b in zip(got, plain):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_batched_members_equal_members_evaluated_one_by_one():
    r = refiner()
    codes = r.sample_codes(3, torch.Generator().manual_seed(5))
    x, _ = batch()
    u = r.decode(codes)
    out = r.space.population(u)(x, per_member=True)  # (3, n, C)
    template = r.space.template
    for i in range(3):
        one = functional_call(template, r.space.unflatten(u[i]), (x[i],))
        torch.testing.assert_close(out[i], one, rtol=1e-5, atol=1e-6)
    # backward: each member's gradient w.r.t. its own row equals its own loss's gradient
    loss = out.pow(2).sum(dim=(1, 2))  # (3,)
    (g,) = torch.autograd.grad(loss.sum(), u, retain_graph=True)
    for i in range(3):
        (gi,) = torch.autograd.grad(loss[i], u, retain_graph=True)
        torch.testing.assert_close(g[i], gi[i])
        assert gi[[j for j in range(3) if j != i]].abs().max() == 0


def test_pull_gradient_is_the_fan_in_preconditioned_task_gradient():
    r, lr = refiner(), 0.05
    codes = r.sample_codes(3, torch.Generator().manual_seed(6))
    x, y = batch()
    u = r.decode(codes)
    target, _ = inner_targets(r, u, (x, y), lr, plain_evaluate())
    pull = pull_loss(u, target)
    (g_u,) = torch.autograd.grad(pull, u, retain_graph=True)
    # the task gradient of each member in raw space, one member at a time
    s = r.space.scales
    task = torch.stack([
        torch.autograd.grad(
            nn.functional.cross_entropy(functional_call(r.space.template, r.space.unflatten(ui), (x[i],)), y[i]), ui
        )[0] / s  # ∇_raw L_i = ∇_u L_i / s
        for i, ui in enumerate(u.detach().clone().requires_grad_(True).unbind(0))
    ])  # fmt: skip
    # ∂pull/∂U_i = (2 lr / B) · ∇_raw L_i / s = (2 lr / B) · s⁻² ⊙ ∇_u L_i
    torch.testing.assert_close(g_u, (2 * lr / 3) * task / s, rtol=1e-4, atol=1e-7)
    # and so on the generator's parameters: pull's gradient = the preconditioned task gradient's
    grads_pull = torch.autograd.grad(pull, list(r.parameters()), retain_graph=True)
    surrogate = (u * ((2 * lr / 3) * task / s).detach()).sum()
    grads_task = torch.autograd.grad(surrogate, list(r.parameters()))
    for a, b in zip(grads_pull, grads_task):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_pull_refuses_broadcasting_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        pull_loss(torch.zeros(4, 10), torch.zeros(4, 1, 10))  # the original's B x B x P bug


def test_meta_loss_objectives_and_terms():
    r = refiner()
    codes = r.sample_codes(3, torch.Generator().manual_seed(7))
    for objective in ("pull", "direct"):
        loss, stats, evaluated = meta_loss(r, codes, batch(), MetaTerms(objective, ensemble_nll=0.5, diversity=0.1))
        assert loss.requires_grad and torch.isfinite(loss)
        assert evaluated.fitness.shape == (3,)
        assert {"meta_loss", "inner_loss", "output_variance", "ensemble_nll"} <= set(stats)
        grads = torch.autograd.grad(loss, list(r.parameters()), allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="objective"):
        MetaTerms("vqdraw")
    with pytest.raises(ValueError, match="batch must be"):
        meta_loss(r, codes, batch(b=2), MetaTerms())


def test_direct_objective_gradient_is_the_task_gradient_through_the_generator():
    r = refiner()
    codes = r.sample_codes(3, torch.Generator().manual_seed(8))
    x, y = batch()
    loss, _, _ = meta_loss(r, codes, (x, y), MetaTerms("direct"))
    u = r.decode(codes)
    logits = Population(r.space.template, r.space.to_raw(u))(x, per_member=True)  # (3, n, C)
    ref = torch.stack([nn.functional.cross_entropy(logits[i], y[i]) for i in range(3)]).mean()
    torch.testing.assert_close(loss, ref)


def test_memory_guard_refuses_before_allocating_with_the_numbers_and_the_knob():
    estimate = VQRefiner.estimate(1_000_000, stages=40, options=4, hidden=512)  # a 10^6-weight target
    assert estimate.parameters > 2e9
    with pytest.raises(GeneratorTooLarge, match=r"needs about \d+\.\d GiB .*M parameters.*hidden"):
        check_memory("vq", estimate, torch.device("cpu"), "lower hidden or use the 'chunked' generator")
    small = VQRefiner.estimate(small_space().dim, stages=5, options=3, hidden=7)
    check_memory("vq", small, torch.device("cpu"), "")  # fits: no error


def test_greedy_encoder_reconstructs_a_bias_codebook_member():
    r = refiner("bias")
    with torch.no_grad():
        r.output_scales.copy_(torch.tensor([1.0, 0.5, 0.25, 0.125, 0.0625]))  # well separated stages
    codes = r.sample_codes(6, torch.Generator().manual_seed(9))
    with torch.no_grad():
        found = r.encode(r.decode(codes))
        err = (r.decode(found) - r.decode(codes)).pow(2).sum(1)
        random = (r.decode(r.sample_codes(6, torch.Generator().manual_seed(10))) - r.decode(codes)).pow(2).sum(1)
    assert found.shape == codes.shape
    assert (err <= random + 1e-6).all() and err.mean() < 0.1 * random.mean()
