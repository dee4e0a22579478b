"""Population: every strategy agrees with the per-member loop (outputs and gradients), the flat layout
is EvoTorch's, chunking and out-of-memory halving are invisible, and unsupported layers are named."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from evoens import population
from evoens.bench import benchmark_strategies
from evoens.population import (
    Population,
    flat_layout,
    module_to_flat,
)
from evoens.strategies import STRATEGIES

TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {"atol": 1e-5, "rtol": 1e-4}


# ------------------------------------------------------------------ architectures (input shape per sample)


def mlp_relu() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def mlp_tanh() -> nn.Module:  # nested Sequential, bias-free layer, in-place activation
    return nn.Sequential(
        nn.Sequential(nn.Linear(5, 6), nn.Tanh()),
        nn.Sequential(nn.Linear(6, 6, bias=False), nn.LeakyReLU(0.1, inplace=True)),
        nn.Linear(6, 2),
        nn.LogSoftmax(dim=-1),
    )


def flatten_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.GELU(), nn.Linear(4, 3), nn.Sigmoid())


def bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)).eval()


def convnet_bn() -> nn.Module:  # Conv + ReLU + MaxPool + Conv + BatchNorm2d + Flatten + Linear, 8x8 input
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(24, 3),
    ).eval()


def conv_misc() -> nn.Module:  # stride, dilation, circular padding, avg pool, groups=2, no bias, 9x9 input
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2, padding_mode="circular"),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 1, groups=2, bias=False),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def evojax_convnet() -> nn.Module:  # EvoJAX's MNIST ConvNet: 11,274 parameters
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(784, 10),
    )


ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp_relu": (mlp_relu, (5,)),
    "mlp_tanh": (mlp_tanh, (5,)),
    "flatten_mlp": (flatten_mlp, (3, 4)),
    "bn_mlp": (bn_mlp, (5,)),
    "convnet_bn": (convnet_bn, (1, 8, 8)),
    "conv_misc": (conv_misc, (2, 9, 9)),
    "evojax_convnet": (evojax_convnet, (1, 28, 28)),
}


def make_pop(arch: str, P: int, dtype: torch.dtype = torch.float32, **kw) -> Population:
    """Distinct members with distinct (random) BatchNorm running statistics."""
    template = ARCHS[arch][0]().to(dtype)
    g = torch.Generator().manual_seed(P)
    flat = Population.from_module(template, P, generator=g).flat
    buffers = {}
    for name, b in template.named_buffers():
        if name.endswith("running_mean"):
            buffers[name] = 0.3 * torch.randn(P, *b.shape, generator=g, dtype=dtype)
        elif name.endswith("running_var"):
            buffers[name] = 0.5 + torch.rand(P, *b.shape, generator=g, dtype=dtype)
        else:
            buffers[name] = b.expand(P, *b.shape).clone()
    return Population(template, flat, buffers or None, **kw)


def make_x(arch: str, P: int, per_member: bool, batch: int = 3, dtype: torch.dtype = torch.float32) -> Tensor:
    shape = ARCHS[arch][1]
    g = torch.Generator().manual_seed(1000 + P)
    return torch.randn((P, batch, *shape) if per_member else (batch, *shape), generator=g, dtype=dtype)


def cases() -> list:
    out = []
    for arch, (factory, _) in ARCHS.items():
        supported = [n for n, s in STRATEGIES.items() if s.supports(factory())] + ["auto"]
        out += [pytest.param(arch, name, id=f"{arch}-{name}") for name in supported if name != "loop"]
    return out


# ------------------------------------------------------------------ parity with the loop


@pytest.mark.parametrize("arch,strategy", cases())
@pytest.mark.parametrize("P,max_chunk", [(1, None), (5, None), (7, 3)])
@pytest.mark.parametrize("per_member", [False, True], ids=["shared", "per_member"])
def test_strategy_matches_loop(arch: str, strategy: str, P: int, max_chunk: int | None, per_member: bool) -> None:
    pop = make_pop(arch, P, max_chunk=max_chunk)
    x = make_x(arch, P, per_member)
    with torch.no_grad():
        ref = pop(x, strategy="loop", per_member=per_member)
        out = pop(x, strategy=strategy, per_member=per_member)
    assert out.shape == ref.shape
    assert_close(out, ref, **TOL)


@pytest.mark.parametrize("arch", ["mlp_tanh", "convnet_bn", "conv_misc"])
def test_float64_parity(arch: str) -> None:
    pop = make_pop(arch, 4, dtype=torch.float64)
    x = make_x(arch, 4, False, dtype=torch.float64)
    ref = pop(x, strategy="loop")
    assert ref.dtype == torch.float64
    for name, strat in STRATEGIES.items():
        if strat.supports(pop.template):
            assert_close(pop(x, strategy=name), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("per_member", [False, True], ids=["shared", "per_member"])
def test_loop_is_each_member_alone(arch: str, per_member: bool) -> None:
    pop = make_pop(arch, 3)
    x = make_x(arch, 3, per_member)
    out = pop(x, strategy="loop", per_member=per_member)
    for i in range(pop.size):
        with torch.no_grad():
            alone = pop.member(i)(x[i] if per_member else x)
        assert_close(out[i], alone, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ layout


def test_evojax_convnet_has_11274_parameters() -> None:
    assert Population.from_module(evojax_convnet(), 2).num_params == 11_274


@pytest.mark.parametrize("arch", list(ARCHS))
def test_flat_layout_round_trips(arch: str) -> None:
    pop = make_pop(arch, 4)
    names = [n for n, _ in pop.template.named_parameters()]
    slots = flat_layout(pop.template)
    assert [s.name for s in slots] == names == list(pop.params)
    assert [s.offset for s in slots] == [sum(t.numel for t in slots[:k]) for k in range(len(slots))]
    for i in range(pop.size):
        assert torch.equal(module_to_flat(pop.member(i)), pop.flat[i])
    every = torch.cat([p.reshape(-1) for p in pop.template.parameters()])
    assert torch.equal(module_to_flat(pop.template), every)


def test_flat_layout_is_evotorch_parameter_vector() -> None:
    net = pytest.importorskip("evotorch.neuroevolution.net")
    module = convnet_bn()
    assert torch.equal(module_to_flat(module), net.parameter_vector(module))


def test_params_are_views_of_flat() -> None:
    pop = make_pop("mlp_relu", 3)
    with torch.no_grad():
        pop.flat[1, flat_layout(pop.template)[2].offset] = 42.0  # "2.weight"[0, 0] of member 1
    assert pop.params["2.weight"][1, 0, 0] == 42.0
    with torch.no_grad():
        pop.params["0.bias"][2].fill_(-3.0)
    assert torch.all(pop.member(2)[0].bias == -3.0)
    for view in pop.params.values():
        assert view.untyped_storage().data_ptr() == pop.flat.untyped_storage().data_ptr()


def test_flat_is_not_copied() -> None:
    flat = torch.randn(4, module_to_flat(mlp_relu()).numel())
    assert Population(mlp_relu(), flat).flat is flat


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("arch", ["mlp_relu", "mlp_tanh", "bn_mlp", "convnet_bn", "conv_misc"])
@pytest.mark.parametrize("per_member", [False, True], ids=["shared", "per_member"])
def test_gradients_match_loop(arch: str, per_member: bool) -> None:
    base = make_pop(arch, 5)
    x = make_x(arch, 5, per_member)

    def grad(strategy: str, max_chunk: int | None = None) -> Tensor:
        flat = base.flat.detach().clone().requires_grad_(True)
        pop = Population(base.template, flat, base.buffers, max_chunk=max_chunk)
        pop(x, strategy=strategy, per_member=per_member).sum().backward()
        assert flat.grad is not None
        return flat.grad

    ref = grad("loop")
    assert ref.abs().sum() > 0
    for name, strat in STRATEGIES.items():
        if strat.supports(base.template):
            assert_close(grad(name), ref, **GRAD_TOL)
            assert_close(grad(name, max_chunk=2), ref, **GRAD_TOL)  # chunking keeps the graph
    assert_close(grad("auto"), ref, **GRAD_TOL)


# ------------------------------------------------------------------ chunking and out-of-memory


@pytest.mark.parametrize("strategy", ["loop", "vmap", "bmm"])
def test_forced_small_chunks_equal_unchunked(strategy: str) -> None:
    pop = make_pop("bn_mlp", 7)
    x = make_x("bn_mlp", 7, False)
    whole = pop(x, strategy=strategy)
    for chunk in (1, 2, 3, 6):
        assert_close(
            Population(pop.template, pop.flat, pop.buffers, max_chunk=chunk)(x, strategy=strategy),
            whole,
            atol=1e-6,
            rtol=1e-6,
        )


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory"),
    ],
)
def test_out_of_memory_halves_the_chunk(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    monkeypatch.setattr(population, "_CHUNK_LIMIT", {})
    strat = STRATEGIES["bmm"]
    real, sizes = strat.forward, []

    def flaky(*args, size: int, **kw) -> Tensor:
        sizes.append(size)
        if size > 2:
            raise error
        return real(*args, size=size, **kw)

    monkeypatch.setattr(strat, "forward", flaky)
    pop = make_pop("mlp_relu", 9)
    x = make_x("mlp_relu", 9, False)
    out = pop(x, strategy="bmm")
    assert_close(out, pop(x, strategy="loop"), **TOL)
    assert sizes == [9, 4, 2, 2, 2, 2, 1]  # halved until it fits, then the rest in chunks of 2
    sizes.clear()
    pop(x, strategy="bmm")
    assert max(sizes) == 2  # the smaller chunk is remembered


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(*args, **kw) -> Tensor:
        calls.append(1)
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(STRATEGIES["bmm"], "forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        make_pop("mlp_relu", 4)(make_x("mlp_relu", 4, False), strategy="bmm")
    assert len(calls) == 1


def test_budget_chunks_large_activations() -> None:
    pop = make_pop("evojax_convnet", 3)
    x = make_x("evojax_convnet", 3, False, batch=200)  # 2 x 8x28x28 maps x 200 x 4 B = 10 MB
    assert pop._budget_chunk(x, False) == (1, (8 << 20) // (2 * 8 * 28 * 28 * 4))  # one member, 167 samples
    members, samples = make_pop("mlp_relu", 3)._budget_chunk(make_x("mlp_relu", 3, False), False)
    assert members > 1000 and samples == 3  # the whole batch


def _record_batches(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    batches: list[int] = []
    strat = STRATEGIES[name]
    real = strat.forward

    def spy(*args, **kw) -> Tensor:
        x = args[3]
        batches.append(x.shape[1] if kw["per_member"] else x.shape[0])
        return real(*args, **kw)

    monkeypatch.setattr(strat, "forward", spy)
    return batches


@pytest.mark.parametrize("per_member", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_sample_chunks_match_the_loop(monkeypatch: pytest.MonkeyPatch, per_member: bool, grad: bool) -> None:
    """A member too big for the budget runs in sample chunks: outputs and gradients as the loop's."""
    monkeypatch.setattr(population, "budget_bytes", lambda device: 2 * 8 * 28 * 28 * 4 * 70)  # 70 samples
    pop, ref = make_pop("evojax_convnet", 3), make_pop("evojax_convnet", 3)
    ref.flat = pop.flat.detach().clone()
    x = make_x("evojax_convnet", 3, per_member, batch=150)
    batches = _record_batches(monkeypatch, "grouped_conv")
    with torch.set_grad_enabled(grad):
        pop.flat.requires_grad_(grad)
        ref.flat.requires_grad_(grad)
        members, samples = pop._budget_chunk(x, per_member)
        out, want = pop(x, strategy="grouped_conv"), ref(x, strategy="loop")
    assert members == 1 and 1 < samples < 150
    assert batches == [n for n in (samples,) * (150 // samples) + (150 % samples,) if n for _ in range(3)]
    assert_close(out, want, **TOL)
    if grad:
        weights = torch.randn_like(want)
        (g,) = torch.autograd.grad((out * weights).sum(), pop.flat)
        (g_ref,) = torch.autograd.grad((want * weights).sum(), ref.flat)
        assert_close(g, g_ref, **GRAD_TOL)


@pytest.mark.parametrize("name", ["loop", "vmap"])
def test_generic_strategies_keep_the_batch_whole(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # A user's module may mix samples (attention over the batch): only known layers are split.
    monkeypatch.setattr(population, "budget_bytes", lambda device: 1)
    batches = _record_batches(monkeypatch, name)
    make_pop("evojax_convnet", 2)(make_x("evojax_convnet", 2, False, batch=9), strategy=name)
    assert batches == [9, 9]


# ------------------------------------------------------------------ unsupported architectures


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * 2


@pytest.mark.parametrize(
    "template,strategy,layer",
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 1)), "bmm", "'0' (Conv2d)"),
        (nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4)), "bmm", "'1' (LayerNorm)"),
        (nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4)), "grouped_conv", "'1' (LayerNorm)"),
        (nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2)), "grouped_conv", "no conv layer"),
        (Custom(), "bmm", "(Custom)"),
        (nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)).train(), "bmm", "'1' (BatchNorm1d)"),
        (nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5)).train(), "bmm", "'1' (Dropout)"),
    ],
)
def test_unsupported_layer_is_named(template: nn.Module, strategy: str, layer: str) -> None:
    assert not STRATEGIES[strategy].supports(template)
    pop = Population.from_module(template, 2)
    with pytest.raises(ValueError, match=layer.replace("(", r"\(").replace(")", r"\)")):
        pop(torch.randn(3, 5), strategy=strategy)


def test_auto_never_picks_unsupported_and_train_mode_is_per_member() -> None:
    template = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    before = template[1].running_mean.clone()
    loop = Population.from_module(template, 3, generator=torch.Generator().manual_seed(0))
    vmap = loop.with_flat(loop.flat.clone())
    x = torch.randn(6, 5)
    assert_close(vmap(x, strategy="vmap"), loop(x, strategy="loop"), **TOL)
    assert_close(vmap.buffers["1.running_mean"], loop.buffers["1.running_mean"], **TOL)
    assert not torch.allclose(loop.buffers["1.running_mean"][0], loop.buffers["1.running_mean"][1])
    assert torch.equal(template[1].running_mean, before)  # the template's own stats are untouched
    auto = loop.with_flat(loop.flat.clone())
    auto(x)
    assert auto.last_strategy in {"loop", "vmap"}


def test_unknown_strategy_lists_known() -> None:
    with pytest.raises(ValueError, match="known: auto, loop, vmap, bmm, grouped_conv"):
        Population(mlp_relu(), torch.zeros(2, module_to_flat(mlp_relu()).numel()), strategy="fast")


# ------------------------------------------------------------------ construction and input kinds


def test_from_module_is_deterministic_and_leaves_global_rng() -> None:
    template = mlp_relu()
    state = torch.get_rng_state()
    a = Population.from_module(template, 4, generator=torch.Generator().manual_seed(3)).flat
    b = Population.from_module(template, 4, generator=torch.Generator().manual_seed(3)).flat
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    torch.manual_seed(5)
    c = Population.from_module(mlp_relu(), 2).flat
    torch.manual_seed(5)
    assert torch.equal(c, Population.from_module(mlp_relu(), 2).flat)
    template = mlp_relu()
    copies = Population.from_module(template, 3, reinit=False).flat
    assert torch.equal(copies, module_to_flat(template).expand(3, -1))


def test_from_modules_stacks_parameters_and_buffers() -> None:
    modules = [make_pop("bn_mlp", 3).member(i) for i in range(3)]
    pop = Population.from_modules(modules)
    x = make_x("bn_mlp", 3, False)
    for i, m in enumerate(modules):
        assert_close(pop(x, strategy="bmm")[i], m(x), **TOL)
    with pytest.raises(ValueError, match="differs in architecture"):
        Population.from_modules([mlp_relu(), mlp_tanh()])


def test_with_flat_keeps_buffers_and_reexpands_shared_ones() -> None:
    pop = make_pop("bn_mlp", 3)
    same = pop.with_flat(pop.flat * 2)
    assert same.buffers["1.running_var"] is pop.buffers["1.running_var"]
    with pytest.raises(ValueError, match="per-member buffers"):
        pop.with_flat(pop.flat[:2])
    shared = Population.from_module(bn_mlp(), 3)
    bigger = shared.with_flat(torch.zeros(5, shared.num_params))
    assert bigger.buffers["1.running_var"].shape == (5, 8)


def test_auto_choice_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(population, "_AUTO_CHOICE", {})
    calls = []
    real = Population._fastest
    monkeypatch.setattr(Population, "_fastest", lambda self, *a: calls.append(1) or real(self, *a))
    pop = make_pop("mlp_tanh", 6)
    x = make_x("mlp_tanh", 6, False)
    pop(x)
    pop.with_flat(pop.flat + 1)(x)
    make_pop("mlp_tanh", 6)(x)
    assert len(calls) == 1 and pop.last_strategy in STRATEGIES
    make_pop("mlp_tanh", 6)(make_x("mlp_tanh", 6, False, batch=4))  # another batch shape: timed again
    assert len(calls) == 2


def test_per_member_input_is_inferred() -> None:
    pop = make_pop("mlp_relu", 4)
    shared, per = torch.randn(4, 5), torch.randn(4, 4, 5)  # B == P on purpose
    assert_close(pop(shared), pop(shared, strategy="loop", per_member=False), **TOL)
    assert_close(pop(per), pop(per, strategy="loop", per_member=True), **TOL)
    conv = make_pop("convnet_bn", 3)
    assert conv(make_x("convnet_bn", 3, True)).shape == (3, 3, 3)
    with pytest.raises(ValueError, match="per_member"):
        Population.from_module(nn.Sequential(nn.LayerNorm(5)), 4)(torch.randn(4, 5))


def test_benchmark_strategies_reports_each_supported_strategy() -> None:
    result = benchmark_strategies(mlp_relu(), P=3, batch=2, repeats=1)
    assert set(result) == {"loop", "vmap", "bmm"}
    assert all(t > 0 for t in result.values())


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["mlp_tanh", "bn_mlp", "convnet_bn", "evojax_convnet"])
@pytest.mark.parametrize("per_member", [False, True], ids=["shared", "per_member"])
def test_cuda_matches_cpu_loop(monkeypatch: pytest.MonkeyPatch, arch: str, per_member: bool) -> None:
    # cuDNN convolutions default to TF32 (10-bit mantissa): compare in true float32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = make_pop(arch, 6, max_chunk=4)
    x = make_x(arch, 6, per_member)
    ref = cpu(x, strategy="loop", per_member=per_member)
    gpu = cpu.to("cuda")
    assert gpu.flat.is_cuda and all(b.is_cuda for b in gpu.buffers.values())
    for name in [*STRATEGIES, "auto"]:
        if name == "auto" or STRATEGIES[name].supports(gpu.template):
            out = gpu(x.cuda(), strategy=name, per_member=per_member)
            assert out.device.type == "cuda"
            assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)
    flat = gpu.flat.clone().requires_grad_(True)
    gpu.with_flat(flat)(x.cuda(), per_member=per_member).sum().backward()
    assert flat.grad is not None and flat.grad.is_cuda
