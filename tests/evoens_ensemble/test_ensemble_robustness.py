"""Effective robustness: the published lines give the spec's numbers, OLS recovers a known line and
matches the closed-form standard errors, units are never guessed, the delta-method CI covers a model
on the line about 1 - alpha of the time and narrows as 1/sqrt(n), and the plot is written."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from evoens_ensemble import robustness as r
from scipy.stats import norm


@pytest.mark.parametrize(
    ("acc_id", "expected"), [(90, 79.48), (93.07, 84.38), (94, 86.00), (95, 87.82), (96, 89.75), (97, 91.82)]
)
def test_cifar10_1_line_gives_the_spec_check_values(acc_id: float, expected: float) -> None:
    line = r.get_baseline("cifar10_1")
    assert (line.a, line.b, line.scale) == (0.8318, -0.4736, "logit")
    assert line.predict(acc_id, unit="percent") == pytest.approx(expected, abs=0.006)
    assert line.predict(acc_id / 100) == pytest.approx(expected / 100, abs=6e-5)  # fractions by default


def test_imagenetv2_line_gives_the_spec_check_value() -> None:
    line = r.get_baseline("imagenetv2")
    assert (line.a, line.b) == (0.9225, -0.4896)
    assert line.predict(76.0, unit="percent") == pytest.approx(63.96, abs=0.006)


def test_baseline_specs() -> None:
    assert r.get_baseline("cifar10.1") is r.BASELINES["cifar10_1"]
    assert r.get_baseline((1.0, 0.0)).predict(0.8) == pytest.approx(0.8)  # A = 1, B = 0 is y = x
    with pytest.raises(r.RobustnessError, match="did you mean 'imagenetv2'"):
        r.get_baseline("imagenet_v2")
    with pytest.raises(r.RobustnessError, match="scale"):
        r.Baseline(1.0, 0.0, "probitt")  # type: ignore[arg-type]


def test_probit_line_is_the_normal_cdf() -> None:
    line = r.Baseline(0.9, -0.2, "probit")
    a = np.array([0.6, 0.8, 0.95])
    expected = norm.cdf(0.9 * norm.ppf(a) - 0.2)
    assert np.allclose(line.predict(torch.tensor(a)).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("scale", ["logit", "probit"])
def test_fit_recovers_a_noiseless_line_exactly(scale: r.Scale) -> None:
    truth = r.Baseline(0.87, -0.31, scale)
    acc_id = torch.linspace(0.55, 0.97, 12, dtype=torch.float64)
    points = torch.stack([acc_id, truth.predict(acc_id)], 1)
    fit = r.fit_baseline(points, scale)
    assert (fit.a, fit.b) == (pytest.approx(0.87, abs=1e-10), pytest.approx(-0.31, abs=1e-10))
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.se_a < 1e-8 and fit.se_b < 1e-8 and fit.n == 12
    in_percent = r.fit_baseline((points * 100).tolist(), scale, unit="percent")
    assert in_percent.a == pytest.approx(fit.a, abs=1e-10) and in_percent.b == pytest.approx(fit.b, abs=1e-10)


def _noisy_points(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a_id = rng.uniform(0.6, 0.97, n)
    z = 0.8 * np.log(a_id / (1 - a_id)) - 0.4 + rng.normal(0, 0.1, n)
    return a_id, 1 / (1 + np.exp(-z))


def test_standard_errors_match_the_closed_form_and_polyfit() -> None:
    a_id, a_ood = _noisy_points()
    fit = r.fit_baseline(np.stack([a_id, a_ood], 1).tolist(), "logit")
    x, y = np.log(a_id / (1 - a_id)), np.log(a_ood / (1 - a_ood))
    n, sxx = len(x), ((x - x.mean()) ** 2).sum()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    intercept = y.mean() - slope * x.mean()
    sigma2 = ((y - slope * x - intercept) ** 2).sum() / (n - 2)
    assert fit.a == pytest.approx(slope, rel=1e-10) and fit.b == pytest.approx(intercept, rel=1e-10)
    assert fit.se_a == pytest.approx(math.sqrt(sigma2 / sxx), rel=1e-9)
    assert fit.se_b == pytest.approx(math.sqrt(sigma2 * (1 / n + x.mean() ** 2 / sxx)), rel=1e-9)
    assert fit.cov_ab == pytest.approx(-x.mean() * sigma2 / sxx, rel=1e-9)
    coef, cov = np.polyfit(x, y, 1, cov=True)
    assert np.allclose([fit.a, fit.b], coef, rtol=1e-10)
    assert np.allclose([fit.se_a, fit.se_b], np.sqrt(np.diag(cov)), rtol=1e-9)
    residual = ((y - slope * x - intercept) ** 2).sum()
    assert fit.r2 == pytest.approx(1 - residual / ((y - y.mean()) ** 2).sum(), rel=1e-10)


def test_integer_weights_act_as_repeated_points() -> None:
    a_id, a_ood = _noisy_points(8)
    weights = np.array([1, 2, 3, 1, 1, 2, 1, 4])
    weighted = r.fit_baseline(np.stack([a_id, a_ood], 1).tolist(), weights=weights.tolist())
    repeated = r.fit_baseline(np.repeat(np.stack([a_id, a_ood], 1), weights, axis=0).tolist())
    assert weighted.a == pytest.approx(repeated.a, rel=1e-10) and weighted.b == pytest.approx(repeated.b, rel=1e-10)


@pytest.mark.parametrize(
    "call",
    [
        lambda: r.get_baseline("cifar10_1").predict(93.07),  # a percentage given as a fraction
        lambda: r.get_baseline("cifar10_1").predict(-0.1),
        lambda: r.get_baseline("cifar10_1").predict(math.nan),
        lambda: r.get_baseline("cifar10_1").predict(101.0, unit="percent"),
        lambda: r.effective_robustness(0.93, 84.4, "cifar10_1", 10_000, 2_000),
        lambda: r.fit_baseline([(93.0, 84.0), (95.0, 88.0)]),
        lambda: r.to_fraction(0.5, "percentage"),  # type: ignore[arg-type]
    ],
)
def test_unit_mistakes_raise(call: Callable[[], object]) -> None:
    with pytest.raises(r.RobustnessError):
        call()


def test_the_unit_error_says_how_to_fix_it() -> None:
    with pytest.raises(ValueError, match=r"93.07 is outside \[0, 1\] for unit='fraction'; pass unit='percent'"):
        r.effective_robustness(93.07, 84.38, "cifar10_1", 10_000, 2_000)


def test_degenerate_fits_raise() -> None:
    with pytest.raises(r.RobustnessError, match="all a_id are equal"):
        r.fit_baseline([(0.9, 0.8), (0.9, 0.7), (0.9, 0.75)])
    with pytest.raises(r.RobustnessError, match="n >= 2"):
        r.fit_baseline([(0.9, 0.8)])


def test_er_of_the_spec_model_and_units() -> None:
    frac = r.effective_robustness(0.9307, 0.85, "cifar10_1", 10_000, 2_000)
    pct = r.effective_robustness(93.07, 85.0, "cifar10_1", 10_000, 2_000, unit="percent")
    assert frac.predicted_ood == pytest.approx(0.8438, abs=6e-5)
    assert pct.er == pytest.approx(100 * frac.er) and pct.low == pytest.approx(100 * frac.low)
    assert pct.unit == "percent" and frac.low < frac.er < frac.high
    without_n = r.effective_robustness(0.9307, 0.85)
    assert math.isnan(without_n.low) and without_n.er == pytest.approx(frac.er)


@pytest.mark.parametrize("scale", ["logit", "probit"])
def test_delta_method_slope_is_the_derivative(scale: r.Scale) -> None:
    line = r.Baseline(0.85, -0.45, scale)
    a = torch.tensor([0.3, 0.7, 0.93, 0.99], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(r.inverse_transform(line.z(a), scale).sum(), a)
    assert torch.allclose(line.slope(a.detach()), grad, rtol=1e-10)


def test_ci_contains_zero_on_the_line_and_narrows_with_n() -> None:
    line = r.get_baseline("cifar10_1")
    on_line = line.predict(0.93)
    widths = []
    for n in (1_000, 10_000, 100_000):
        res = r.effective_robustness(0.93, on_line, line, n, n)
        assert res.er == pytest.approx(0.0, abs=1e-12) and res.low < 0 < res.high
        widths.append(res.high - res.low)
    assert widths[0] / widths[1] == pytest.approx(math.sqrt(10), rel=1e-9)
    assert widths[1] / widths[2] == pytest.approx(math.sqrt(10), rel=1e-9)


def test_ci_covers_simulated_models_on_the_line() -> None:
    line, n_id, n_ood, models = r.get_baseline("cifar10_1"), 10_000, 2_000, 4_000
    g = torch.Generator().manual_seed(1)
    true_id = torch.full((models,), 0.92, dtype=torch.float64)
    true_ood = line.predict(true_id)
    acc_id = torch.binomial(torch.full((models,), float(n_id)), true_id.float(), generator=g).double() / n_id
    acc_ood = torch.binomial(torch.full((models,), float(n_ood)), true_ood.float(), generator=g).double() / n_ood
    res = r.effective_robustness(acc_id, acc_ood, line, n_id, n_ood)
    coverage = float(((res.low <= 0) & (res.high >= 0)).double().mean())  # type: ignore[operator]
    assert coverage == pytest.approx(0.95, abs=0.015)
    assert float(res.er.std()) == pytest.approx(float(res.se.mean()), rel=0.05)  # type: ignore[union-attr]


def test_fit_uncertainty_widens_the_ci() -> None:
    a_id, a_ood = _noisy_points()
    fit = r.fit_baseline(np.stack([a_id, a_ood], 1).tolist())
    plain = r.effective_robustness(0.9, 0.8, fit, 10_000, 2_000)
    wide = r.effective_robustness(0.9, 0.8, fit, 10_000, 2_000, fit_uncertainty=True)
    assert wide.er == plain.er and wide.high - wide.low > plain.high - plain.low


def _correct(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def test_bootstrap_agrees_with_the_delta_method_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    c_id, c_ood = _correct(10_000, 0.93, g), _correct(2_000, 0.845, g)
    boot = r.bootstrap_effective_robustness(c_id, c_ood, "cifar10_1", n_boot=800, seed=3)
    acc_id, acc_ood = float(c_id.double().mean()), float(c_ood.double().mean())
    delta = r.effective_robustness(acc_id, acc_ood, "cifar10_1", 10_000, 2_000)
    assert boot.er == pytest.approx(delta.er, abs=1e-12)
    assert boot.se == pytest.approx(delta.se, rel=0.1)
    assert boot.high - boot.low == pytest.approx(delta.high - delta.low, rel=0.15)
    again = r.bootstrap_effective_robustness(c_id, c_ood, "cifar10_1", n_boot=800, seed=3)
    assert (again.low, again.high) == (boot.low, boot.high)


def test_bootstrap_with_a_testbed_refits_the_line() -> None:
    g = torch.Generator().manual_seed(0)
    truth = r.get_baseline("cifar10_1")
    levels = torch.linspace(0.85, 0.95, 10, dtype=torch.float64)
    bed_id = torch.stack([_correct(5_000, float(p), g) for p in levels])  # (10, 5000)
    bed_ood = torch.stack([_correct(1_000, truth.predict(float(p)), g) for p in levels])  # (10, 1000)
    c_id, c_ood = _correct(5_000, 0.9, g), _correct(1_000, truth.predict(0.9), g)
    res = r.bootstrap_effective_robustness(c_id, c_ood, testbed=(bed_id, bed_ood), n_boot=400, seed=0)
    fixed = r.bootstrap_effective_robustness(c_id, c_ood, truth, n_boot=400, seed=0)
    assert res.low < 0 < res.high
    assert res.high - res.low > fixed.high - fixed.low  # the refitted line adds its own uncertainty


def test_plot_is_written(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    acc_id = 0.88 + 0.1 * torch.rand(12, generator=g, dtype=torch.float64)
    acc_ood = r.get_baseline("cifar10_1").predict(acc_id) + 0.01 * torch.randn(12, generator=g, dtype=torch.float64)
    fit = r.fit_baseline(torch.stack([acc_id[:9], acc_ood[:9]], 1))
    kinds = ["member"] * 9 + ["ensemble"] * 2 + ["other"]
    out = r.plot_effective_robustness(
        tmp_path / "plots" / "er.png", acc_id * 100, acc_ood * 100, kinds, baseline=fit, reference="cifar10_1",
        unit="percent", n_id=10_000, n_ood=2_000,
    )  # fmt: skip
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = r.plot_effective_robustness(tmp_path / "probit.png", [0.6, 0.7], [0.5, 0.6], baseline=(1.0, -0.2))
    assert plain.stat().st_size > 1000
    with pytest.raises(r.RobustnessError, match="kinds"):
        r.plot_effective_robustness(tmp_path / "x.png", [0.6, 0.7], [0.5, 0.6], ["member", "teacher"])


def test_bootstrap_testbed_must_share_the_examples() -> None:
    c_id, c_ood = torch.ones(100, dtype=torch.bool), torch.ones(50, dtype=torch.bool)
    with pytest.raises(r.RobustnessError, match="testbed"):
        r.bootstrap_effective_robustness(c_id, c_ood, testbed=(torch.ones(3, 100), torch.ones(3, 40)))
