"""Activation statistics, mixture fits and PCA metrics: exact against references, parameters
recovered from the spec's samplers, partial reconstructions along the principal axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evoens_sizing.mixtures import digamma_sample, exp_norm_sample, fit_exp_normal, fit_gamma, fit_two_gamma
from evoens_sizing.models import sizing_mlp
from evoens_sizing.pca import pca_size_metrics, principal_axes, reconstruct
from evoens_sizing.stats import ActivationProbe, UnitStats, shapiro_w, two_pass

from evoens.population import Population


def test_streamed_welford_chan_equals_the_two_pass_reference() -> None:
    g = torch.Generator().manual_seed(1)
    acts = torch.relu(torch.randn(5, 1037, 33, generator=g) * 3 + 1e4)  # large mean: the naive formula fails
    acts[:, :, :4] = 0.0  # dead units
    acc = UnitStats()
    for chunk in torch.split(acts, [1, 100, 7, 500, 429], dim=1):  # uneven batches
        acc.update(chunk)
    found = acc.result()
    mean, std = two_pass(acts)
    assert found.n == 1037
    torch.testing.assert_close(found.mean, mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(found.std, std, rtol=1e-9, atol=1e-9)
    assert found.dead[:, :4].all() and not found.dead[:, 4:].any()
    assert found.dead_count.tolist() == [4] * 5


def test_the_probe_sees_every_member_pre_and_post_activation() -> None:
    net = sizing_mlp((6,), 3, [5], layer="plain")
    pop = Population.from_module(net, 4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(20, 6)
    pre = ActivationProbe(net, "1", "pre").activations(pop.params, pop.buffers, x)  # (P, B, N)
    post = ActivationProbe(net, "1", "post").activations(pop.params, pop.buffers, x)
    for i in range(4):
        w, b = pop.params["0.weight"][i], pop.params["0.bias"][i]
        torch.testing.assert_close(pre[i], x @ w.T + b)
    torch.testing.assert_close(post, torch.relu(pre))
    stats = ActivationProbe(net, "1").stats(pop.params, pop.buffers, torch.split(x, 7))
    torch.testing.assert_close(stats.std, two_pass(post)[1])


def test_shapiro_w_is_high_for_normal_values_and_pools_replicates() -> None:
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(11, 600, generator=g)
    skewed = torch.exp(torch.randn(11, 600, generator=g) * 1.5)
    assert shapiro_w(normal) > 0.99 > 0.6 > shapiro_w(skewed)
    per = shapiro_w(normal, pool=False)
    assert isinstance(per, list) and len(per) == 11  # 6600 pooled values: no warning escapes


def test_exp_normal_em_recovers_the_sampler_parameters() -> None:
    rng = np.random.default_rng(0)
    x = exp_norm_sample(20000, 0.3, 0.2, 2.0, 0.3, rng)
    fit = fit_exp_normal(x)
    assert fit.converged and fit.degenerate is None and fit.n_iter < 100
    assert fit.pi == pytest.approx(0.3, abs=0.015)
    assert fit.params["l"] == pytest.approx(0.2, rel=0.05)
    assert fit.params["mu"] == pytest.approx(2.0, abs=0.02) and fit.params["sigma"] == pytest.approx(0.3, rel=0.05)
    assert fit.tau.shape == x.shape and ((fit.tau >= 0) & (fit.tau <= 1)).all()


def test_exp_normal_em_finds_no_exponential_in_normal_values() -> None:
    x = np.random.default_rng(1).normal(5.0, 0.5, 5000)
    fit = fit_exp_normal(x)
    assert fit.pi < 1e-5 and fit.params["mu"] == pytest.approx(5.0, abs=0.05)
    pure = fit_exp_normal(x, pi=1e-7)  # below tol at the start: the journal's degenerate exit
    assert pure.degenerate == "normal" and pure.pi == 0.0 and not pure.tau.any()


def test_weighted_gamma_mle_and_two_gamma_em_recover_parameters() -> None:
    rng = np.random.default_rng(2)
    k, theta = fit_gamma(rng.gamma(3.0, 2.0, 50000))
    assert k == pytest.approx(3.0, rel=0.03) and theta == pytest.approx(2.0, rel=0.03)
    x = rng.gamma(3.0, 2.0, 20000)
    w = (np.arange(20000) % 2).astype(float)  # weights pick half of the values: the same MLE as that half
    assert fit_gamma(x, w) == pytest.approx(fit_gamma(x[1::2]), rel=1e-9)
    x = digamma_sample(20000, 0.4, 0.8, 0.05, 12.0, 0.1, rng)
    fit = fit_two_gamma(x)
    assert fit.converged and fit.pi == pytest.approx(0.4, abs=0.02)
    assert fit.params["k1"] == pytest.approx(0.8, rel=0.1) and fit.params["theta1"] == pytest.approx(0.05, rel=0.15)
    assert fit.params["k2"] == pytest.approx(12.0, rel=0.1) and fit.params["theta2"] == pytest.approx(0.1, rel=0.1)


def _anisotropic(n: int = 4000, d: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    scales = torch.tensor([2.0**-i for i in range(d)], dtype=torch.float64) * 4
    acts = (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ rotation.T + 3.0
    return acts, rotation, scales


def test_pca_partial_reconstruction_lies_along_the_principal_axes() -> None:
    acts, rotation, _ = _anisotropic()
    mean, var, axes = principal_axes(acts)
    for k in (1, 3, 5):
        rec = reconstruct(acts, mean, axes, k) - mean  # (n, d)
        top = rotation[:, :k]  # the true top-k directions (columns)
        torch.testing.assert_close(rec, rec @ top @ top.T, atol=0.05 * float(rec.abs().max()), rtol=0)
    found = pca_size_metrics(acts)
    n = acts.shape[0]
    tail = [float(var[k:].sum()) * (n - 1) / n for k in range(9)]  # the discarded eigenvalues
    assert found.error == pytest.approx(tail, rel=1e-6, abs=1e-9)
    assert found.error[-1] == pytest.approx(0.0, abs=1e-18)


def test_the_journals_basis_is_exact_only_with_every_component() -> None:
    acts, _, _ = _anisotropic()
    right = pca_size_metrics(acts, basis="principal")
    journal = pca_size_metrics(acts, basis="journal")
    assert journal.error[-1] == pytest.approx(0.0, abs=1e-12)  # the full reconstruction is exact
    assert all(j >= r - 1e-9 for j, r in zip(journal.error, right.error))  # never better
    assert journal.error[1] > 2 * right.error[1]  # and far worse with one component


def test_pca_accuracy_curve_goes_through_the_head() -> None:
    acts, _, _ = _anisotropic(500, 4)
    head = torch.nn.Linear(4, 3).double()
    labels = head(torch.relu(acts)).argmax(-1)
    found = pca_size_metrics(acts.float(), head=lambda a: head(torch.relu(a.double())), labels=labels)
    assert found.accuracy is not None and found.accuracy[-1] == pytest.approx(1.0)
    assert found.accuracy[0] < 1.0
