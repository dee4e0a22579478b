"""The planned strategies' exact rewrites: strided-view max pooling equals ``F.max_pool2d`` and a
monotone activation moves after a max pool only where the two orders give the same values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evoens.population import Population
from evoens.strategies import STRATEGIES, _tiles, cpu_tanh, plan, tile_max

KINDS = STRATEGIES["grouped_conv"].kinds  # type: ignore[attr-defined]


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 9), (3, 1, 5, 4)])
@pytest.mark.parametrize("kernel", [2, 3, (2, 3), (1, 2)])
def test_tile_max_equals_max_pool(shape: tuple[int, ...], kernel: int | tuple[int, int]) -> None:
    h = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    h[0, 0, 0, 0] = float("nan")  # NaN propagates the same way
    h[-1, -1, 1, :] = -float("inf")
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    assert torch.equal(tile_max(h, kh, kw).isnan(), F.max_pool2d(h, kernel).isnan())
    torch.testing.assert_close(tile_max(h, kh, kw), F.max_pool2d(h, kernel), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    "pool,tiles",
    [
        (nn.MaxPool2d(2), (2, 2)),
        (nn.MaxPool2d((2, 3)), (2, 3)),
        (nn.MaxPool2d(3, stride=2), None),  # overlapping windows
        (nn.MaxPool2d(2, padding=1), None),
        (nn.MaxPool2d(2, dilation=2), None),
        (nn.MaxPool2d(2, ceil_mode=True), None),
        (nn.AvgPool2d(2), None),
    ],
)
def test_only_tiling_max_pools_take_the_fast_path(pool: nn.Module, tiles: tuple[int, int] | None) -> None:
    assert _tiles(pool) == tiles


def _kinds(template: nn.Module) -> list[str]:
    ops = plan(template, KINDS)
    assert not isinstance(ops, str)
    return [type(op.module).__name__ for op in ops]


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1), nn.Tanh(), nn.ELU(), nn.Sigmoid(), nn.Dropout().eval()])
def test_monotone_activation_runs_after_the_max_pool(act: nn.Module) -> None:
    template = nn.Sequential(nn.Conv2d(1, 2, 3), act, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 1))
    assert _kinds(template) == ["Conv2d", "MaxPool2d", type(act).__name__, "Flatten", "Linear"]
    pop = Population.from_module(template, 3, generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(pop(x, strategy="grouped_conv"), pop(x, strategy="loop"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "act,pool",
    [
        (nn.GELU(), nn.MaxPool2d(2)),  # not monotone
        (nn.SiLU(), nn.MaxPool2d(2)),
        (nn.LeakyReLU(-0.5), nn.MaxPool2d(2)),
        (nn.ELU(alpha=-1.0), nn.MaxPool2d(2)),
        (nn.ReLU(), nn.AvgPool2d(2)),  # relu(mean) != mean(relu)
    ],
)
def test_order_is_kept_where_it_matters(act: nn.Module, pool: nn.Module) -> None:
    template = nn.Sequential(nn.Conv2d(1, 2, 3), act, pool, nn.Flatten(), nn.Linear(2, 1))
    assert _kinds(template) == ["Conv2d", type(act).__name__, type(pool).__name__, "Flatten", "Linear"]


def test_cpu_tanh_is_tanh_to_rounding() -> None:
    h = torch.cat([torch.linspace(-20, 20, 100_001), torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-30])])
    got, want = cpu_tanh(h), torch.tanh(h)
    assert float((got - want).abs().max()) < 2.5e-7
    assert torch.isnan(cpu_tanh(torch.tensor([float("nan")]))).all()
    assert torch.equal(h, torch.cat([torch.linspace(-20, 20, 100_001), h[-5:]]))  # the input is not written


def test_tanh_nets_keep_exact_autograd() -> None:
    template = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    pop = Population.from_module(template, 2, generator=torch.Generator().manual_seed(3))
    pop.flat.requires_grad_(True)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(4))
    (g,) = torch.autograd.grad(pop(x, strategy="bmm").sum(), pop.flat)
    (g_ref,) = torch.autograd.grad(pop(x, strategy="loop").sum(), pop.flat)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
