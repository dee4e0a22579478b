"""The noise-table sampler changes how EvoTorch's Gaussian searchers sample, nothing else."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from evotorch.distributions import ExpSeparableGaussian, SymmetricSeparableGaussian

from evoens.builtins.searchers import evoens_register_providers as searcher_providers
from evoens.config import ConfigError
from evoens.evolution import PopulationProblem
from evoens.fitness import neg_cross_entropy
from evoens.models import mlp
from evoens.noise import _table_class, noise_table, table_rows, use_noise_table
from evoens.population import module_to_flat

SEARCHERS = {p.name: p.factory for p in searcher_providers()}


def _problem(seed: int = 0) -> tuple[PopulationProblem, torch.Tensor]:
    template = mlp((6,), 3, [5], "tanh")
    problem = PopulationProblem(template, neg_cross_entropy, seed=seed, strategy="bmm")
    gen = torch.Generator().manual_seed(1)
    problem.batch = (torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen))
    return problem, module_to_flat(template)


def test_rows_are_table_windows_at_the_drawn_offsets() -> None:
    table = noise_table(1000, "cpu")
    gen = torch.Generator().manual_seed(3)
    replay = torch.Generator().manual_seed(3)
    rows = table_rows(table, 5, 40, gen)  # (5, 40)
    offsets = torch.randint(0, 1000 - 40 + 1, (5,), generator=replay)
    for row, o in zip(rows, offsets.tolist()):
        assert torch.equal(row, table[o : o + 40])


def test_table_is_standard_normal_and_fixed() -> None:
    table = noise_table(1 << 20, "cpu")
    assert abs(float(table.mean())) < 5e-3 and abs(float(table.std()) - 1) < 5e-3
    assert noise_table(1 << 20, "cpu") is table  # built once per process, from a fixed seed


def test_a_window_wider_than_the_table_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="narrower than a solution"):
        table_rows(torch.zeros(10), 2, 11, None)


@pytest.mark.parametrize("name", ["pgpe", "snes", "cem"])
def test_samples_are_center_plus_scaled_table_windows(name: str) -> None:
    problem, center = _problem()
    searcher = SEARCHERS[name](problem, 8, {}, center)
    dist = searcher._distribution
    mu, sigma = dist.parameters["mu"].clone(), dist.parameters["sigma"].clone()
    replay = torch.Generator().set_state(problem.generator.get_state())
    searcher.step()
    values = searcher.population.values.as_subclass(torch.Tensor)  # (8, D)
    table = noise_table(max(type(dist).table_size, 64 * values.shape[1]), "cpu")
    if name == "pgpe":  # antithetic pairs: mu + s_k, mu - s_k
        steps = table_rows(table, 4, values.shape[1], replay) * sigma
        torch.testing.assert_close(values[0::2], mu + steps)
        torch.testing.assert_close(values[1::2], mu - steps)
    else:
        torch.testing.assert_close(values, mu + table_rows(table, 8, values.shape[1], replay) * sigma)


@pytest.mark.parametrize("name", ["pgpe", "snes", "cem"])
def test_given_the_same_samples_the_update_is_evotorchs_own(name: str) -> None:
    """Stock and table searchers, fed the same population, end the step in the same state."""
    problem, center = _problem()
    lean = SEARCHERS[name](problem, 8, {}, center)
    stock = SEARCHERS[name](_problem()[0], 8, {"noise_table": False}, center)
    assert type(stock._distribution).__name__ != type(lean._distribution).__name__
    lean.step()
    sampled = lean.population.values.as_subclass(torch.Tensor).clone()  # (8, D)

    def replay(out: torch.Tensor, *, generator: Any = None) -> None:
        out.copy_(sampled)

    stock._distribution._fill = replay  # one step: EvoTorch rebuilds the distribution after it
    stock.step()
    for key in ("mu", "sigma"):
        torch.testing.assert_close(lean._distribution.parameters[key], stock._distribution.parameters[key])
    torch.testing.assert_close(lean.population.evals, stock.population.evals)


def test_noise_table_option_is_validated() -> None:
    problem, center = _problem()
    with pytest.raises(ConfigError, match="noise_table"):
        SEARCHERS["pgpe"](problem, 8, {"noise_table": "big"}, center)
    small = SEARCHERS["snes"](problem, 8, {"noise_table": 4096}, center)
    assert type(small._distribution).table_size == 4096


def test_only_separable_gaussians_take_a_table() -> None:
    problem, center = _problem()
    xnes = SEARCHERS["xnes"](problem, 8, {}, center)
    with pytest.raises(ValueError, match="separable Gaussian"):
        use_noise_table(xnes)


@pytest.mark.parametrize(
    ("base", "ranking"),
    [(ExpSeparableGaussian, "nes"), (ExpSeparableGaussian, "centered"), (SymmetricSeparableGaussian, "centered"),
     (SymmetricSeparableGaussian, None)],
)  # fmt: skip
def test_chunked_gradients_equal_evotorchs(base: type, ranking: str | None) -> None:
    """Several row chunks (D = 50k): the lean gradients are EvoTorch's formulas, to rounding."""
    gen = torch.Generator().manual_seed(0)
    D, N = 50_000, 64
    params = {"mu": torch.randn(D, generator=gen), "sigma": torch.rand(D, generator=gen) * 0.1 + 0.01}
    if base is SymmetricSeparableGaussian:  # as EvoTorch's PGPE builds it
        params.update(divide_mu_grad_by="num_directions", divide_sigma_grad_by="num_directions")
    stock = base(dict(params), dtype=torch.float32, device="cpu")
    lean = _table_class(base, 1 << 20)(dict(params), dtype=torch.float32, device="cpu")
    samples = params["mu"] + params["sigma"] * torch.randn(N, D, generator=gen)  # (N, D)
    weights = torch.randn(N, generator=gen)  # (N,)
    want = stock._compute_gradients(samples, weights, ranking)
    got = lean._compute_gradients(samples, weights, ranking)
    for key in ("mu", "sigma"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
