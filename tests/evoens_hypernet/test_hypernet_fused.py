"""The vq refiner's hidden-space decode (evoens_hypernet.fused) computes the stage-by-stage decode:
the same u_T, the same gradients of every parameter (both ways of the big weights' gradients),
the same meta-loss gradient; and the auto choice, the estimate and the option check."""

from __future__ import annotations

import pytest
import torch
from evoens_hypernet.meta import MetaTerms, meta_loss
from evoens_hypernet.models import vq_cnn
from evoens_hypernet.refiner import VQRefiner, uses_hidden
from evoens_hypernet.space import WeightSpace


def refiner(path: str, kind: str = "mlp", hidden: int = 16, **kw) -> VQRefiner:
    torch.manual_seed(1)
    space = WeightSpace(vq_cnn((1, 8, 8), 3, channels=3, hidden=5))
    return VQRefiner(space, stages=5, options=3, hidden=hidden, refiner=kind, path=path, **kw)


def codes(n: int, seed: int = 0) -> torch.Tensor:
    return refiner("auto").sample_codes(n, torch.Generator().manual_seed(seed))


def grads(r: VQRefiner, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    r.zero_grad(set_to_none=True)
    u = r.decode(z)
    (u * torch.linspace(-1, 1, r.space.dim)).pow(2).sum().backward()
    return u.detach(), [p.grad.clone() for p in r.parameters()]


@pytest.mark.parametrize("kind", ["mlp", "mlp_large"])
@pytest.mark.parametrize("n", [1, 2, 12])  # 1: few rows per option (the rows' way), 12: more than H/2 (dM's)
def test_hidden_decode_equals_the_stages_forward_and_backward(kind, n):
    z = codes(n, seed=n)
    hidden, stages = refiner("hidden", kind), refiner("stages", kind, deferred_grads=False)
    assert hidden.hidden_path(n) and not stages.hidden_path(n)
    u_h, g_h = grads(hidden, z)
    u_s, g_s = grads(stages, z)
    torch.testing.assert_close(u_h, u_s, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(hidden.named_parameters(), g_h, g_s):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    with torch.no_grad():
        torch.testing.assert_close(hidden.decode(z), u_s, rtol=1e-5, atol=1e-5)


def test_an_option_no_member_takes_and_a_single_stage():
    z = torch.zeros(4, 5, dtype=torch.int64)  # option 0 everywhere: options 1 and 2 unused
    u_h, g_h = grads(refiner("hidden"), z)
    u_s, g_s = grads(refiner("stages"), z)
    torch.testing.assert_close(u_h, u_s, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_h, g_s):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.manual_seed(1)
    space = WeightSpace(vq_cnn((1, 8, 8), 3, channels=3, hidden=5))
    one = [VQRefiner(space, stages=1, options=3, hidden=16, path=p) for p in ("hidden", "stages")]
    one[1].load_state_dict(one[0].state_dict())
    z1 = torch.tensor([[2], [0]])
    for a, b in zip(grads(one[0], z1)[1], grads(one[1], z1)[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("objective", ["pull", "direct"])
def test_the_meta_loss_and_its_gradient_are_the_same_through_both_paths(objective):
    z = codes(3, seed=7)
    g = torch.Generator().manual_seed(2)
    batch = torch.rand(3, 6, 1, 8, 8, generator=g), torch.randint(3, (3, 6), generator=g)
    found = []
    for path in ("hidden", "stages"):
        r = refiner(path)
        loss, _, _ = meta_loss(r, z, batch, MetaTerms(objective, inner_lr=0.05))
        found.append((loss.detach(), torch.autograd.grad(loss, list(r.parameters()))))
    torch.testing.assert_close(found[0][0], found[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(found[0][1], found[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_bias_refiner_product_has_the_closed_forms_gradient():
    r = refiner("auto", "bias")
    z = codes(5, seed=3)
    u = r.decode(z)
    seq = r.decode(z, return_sequence=True)  # the cumulative closed form
    torch.testing.assert_close(u, seq[:, -1])
    a = torch.autograd.grad(u.pow(2).sum(), [r.biases, r.output_scales])
    b = torch.autograd.grad(seq[:, -1].pow(2).sum(), [r.biases, r.output_scales])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_auto_takes_the_hidden_path_from_two_members_at_the_seeds_sizes():
    seed = dict(stages=40, options=4, hidden=512, dim=60_106)
    assert not uses_hidden("auto", "mlp", 1, **seed)
    assert all(uses_hidden("auto", "mlp", n, **seed) for n in (2, 4, 16, 64, 1024))
    assert not uses_hidden("auto", "bias", 64, **seed) and not uses_hidden("stages", "mlp", 64, **seed)
    assert uses_hidden("hidden", "mlp", 1, **seed)
    # the hidden path keeps (N, H) rows per stage, not (N, D) ones; the rest is a transient gradient
    hidden = VQRefiner.estimate(60_106, batch=64, path="hidden").activation_bytes
    stages = VQRefiner.estimate(60_106, batch=64, path="stages").activation_bytes
    assert hidden < stages / 4


def test_an_unknown_path_is_refused():
    with pytest.raises(ValueError, match="path must be one of auto, hidden, stages"):
        refiner("fused")
