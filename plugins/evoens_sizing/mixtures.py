"""Two-component mixture fits of the non-zero unit standard deviations (EM), as in the journal.

A. P. Dempster, N. M. Laird, D. B. Rubin, "Maximum Likelihood from Incomplete Data via the EM
Algorithm" (JRSS B, 1977); the weighted gamma MLE solves Minka's fixed-point equation
``ln k - digamma(k) = ln(mean x) - mean(ln x)`` (T. Minka, "Estimating a Gamma distribution",
2002) by bisection. Journal: mitdbg/fastdeepnets ``algorithms/exp_norm_mixture_fit.py`` and
``digamma_mixture_fit.py`` (2017-10-09..16). The reported scalar is pi, the weight of the
"useless" (near-zero) component. Diagnostics, not controllers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats


@dataclass
class MixtureFit:
    """An EM fit: ``pi`` (weight of the first, near-zero component), the components' ``params``,
    the responsibilities ``tau`` of that component per value, and how it ended."""

    pi: float
    params: dict[str, float]
    tau: np.ndarray = field(repr=False)
    n_iter: int
    converged: bool
    degenerate: str | None = None  # "normal" / "exponential" / "gamma2" when one component vanished


def _as_values(x: np.ndarray | list[float]) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64).ravel()
    if v.size < 2 or not np.isfinite(v).all():
        raise ValueError(f"need at least 2 finite values, got {v.size}")
    return v


def exp_norm_sample(size: int, pi: float, l: float, mu: float, sigma: float,  # noqa: E741
                    rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """``size`` draws: Exp(scale=l) with probability pi, else N(mu, sigma)."""
    first = rng.random(size) < pi
    return np.where(first, rng.exponential(l, size), rng.normal(mu, sigma, size))


def fit_exp_normal(x: np.ndarray | list[float], maxiter: int = 100, tol: float = 1e-6, l: float = 1.0,  # noqa: E741
                   pi: float = 0.5) -> MixtureFit:  # fmt: skip
    """Exponential (scale l) + Normal (mu, sigma) mixture by EM; stops when |delta pi| < tol.

    The journal's degenerate exits, checked at the top of each iteration on the previous values:
    pi or l below tol -> pure normal; 1 - pi or sigma below tol -> pure exponential."""
    v = _as_values(x)
    mu, sigma = float(v.mean()), float(v.std())
    tau = np.full(v.shape, pi)
    for it in range(1, maxiter + 1):
        if pi < tol or l < tol:
            return MixtureFit(0.0, {"l": 0.0, "mu": float(v.mean()), "sigma": float(v.std())},
                              np.zeros_like(v), it, True, "normal")  # fmt: skip
        if 1 - pi < tol or sigma < tol:
            return MixtureFit(1.0, {"l": float(v.mean()), "mu": 0.0, "sigma": 1.0}, np.ones_like(v), it, True,
                              "exponential")  # fmt: skip
        a = pi * stats.expon.pdf(v, scale=l)
        b = (1 - pi) * stats.norm.pdf(v, mu, sigma)
        tau = a / np.maximum(a + b, 1e-300)
        new_pi = float(tau.mean())
        l = float((tau * v).sum() / max(tau.sum(), 1e-300))  # noqa: E741
        rest = 1 - tau
        mu = float((rest * v).sum() / max(rest.sum(), 1e-300))
        sigma = math.sqrt(float((rest * (v - mu) ** 2).sum() / max(rest.sum(), 1e-300)))
        done = abs(new_pi - pi) < tol
        pi = new_pi
        if done:
            return MixtureFit(pi, {"l": l, "mu": mu, "sigma": sigma}, tau, it, True)
    return MixtureFit(pi, {"l": l, "mu": mu, "sigma": sigma}, tau, maxiter, False)


def fit_gamma(x: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    """Weighted gamma MLE ``(k, theta)``: solve ``ln k - digamma(k) = ln(sum wx/N) - sum w ln x / N``
    by bisection on the journal's bracket (start [0.5, 1]; halve a while f(a) < 0, double b while
    f(b) > 0; k = 1 if b overflows), then ``theta = sum wx / (N k)``."""
    w = np.ones_like(x) if w is None else w
    n = float(w.sum())
    mean = float((w * x).sum()) / n
    target = math.log(mean) - float((w * np.log(x)).sum()) / n  # >= 0 (Jensen)

    def f(k: float) -> float:
        return math.log(k) - float(special.digamma(k)) - target  # decreasing in k

    a, b = 0.5, 1.0
    while f(a) < 0 and a > 1e-300:
        a /= 2
    while f(b) > 0:
        b *= 2
        if not math.isfinite(b) or b > 1e300:
            return 1.0, mean
    for _ in range(200):
        m = 0.5 * (a + b)
        if f(m) > 0:
            a = m
        else:
            b = m
        if b - a <= 1e-12 * b:
            break
    k = 0.5 * (a + b)
    return k, mean / k


def digamma_sample(size: int, pi: float, k1: float, theta1: float, k2: float, theta2: float,
                   rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """``size`` draws: Gamma(k1, theta1) with probability pi, else Gamma(k2, theta2)."""
    first = rng.random(size) < pi
    return np.where(first, rng.gamma(k1, theta1, size), rng.gamma(k2, theta2, size))


def fit_two_gamma(x: np.ndarray | list[float], maxiter: int = 100, tol: float = 1e-5,
                  pi: float = 0.5) -> MixtureFit:  # fmt: skip
    """Two-gamma mixture by EM with the weighted gamma MLE per component. As the journal: x is
    shifted by 1e-5; init k1 = 0.5, theta1 = 1 (near zero), k2 = 10, theta2 = mean / 10."""
    v = _as_values(x) + 1e-5
    if (v <= 0).any():
        raise ValueError("two-gamma fit needs non-negative values")
    k1, t1, k2, t2 = 0.5, 1.0, 10.0, float(v.mean()) / 10
    tau = np.full(v.shape, pi)
    for it in range(1, maxiter + 1):
        a = pi * stats.gamma.pdf(v, k1, scale=t1)
        b = (1 - pi) * stats.gamma.pdf(v, k2, scale=t2)
        tau = a / np.maximum(a + b, 1e-300)
        new_pi = float(tau.mean())
        if new_pi < tol or 1 - new_pi < tol:  # one component took everything
            side = "gamma2" if new_pi < tol else "gamma1"
            return MixtureFit(new_pi, {"k1": k1, "theta1": t1, "k2": k2, "theta2": t2}, tau, it, True, side)
        k1, t1 = fit_gamma(v, tau)
        k2, t2 = fit_gamma(v, 1 - tau)
        done = abs(new_pi - pi) < tol
        pi = new_pi
        if done:
            return MixtureFit(pi, {"k1": k1, "theta1": t1, "k2": k2, "theta2": t2}, tau, it, True)
    return MixtureFit(pi, {"k1": k1, "theta1": t1, "k2": k2, "theta2": t2}, tau, maxiter, False)
