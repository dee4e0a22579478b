"""Effective robustness: a baseline line fitted on a transformed scale, and each model's distance to it.

Taori, Dave, Shankar, Carlini, Recht, Schmidt, "Measuring Robustness to Natural Distribution Shifts in
Image Classification", NeurIPS 2020 (effective robustness on the logit scale); Miller, Taori,
Raghunathan, Sagawa, Koh, Shankar, Liang, Carmon, Schmidt, "Accuracy on the Line", ICML 2021 (the
probit scale); Andreassen, Bahri, Neyshabur, Roelofs, "The Evolution of Out-of-Distribution
Robustness Throughout Fine-Tuning", arXiv:2106.15831 (2021) (the CIFAR-10.1 and ImageNetV2 lines
below); Recht, Roelofs, Schmidt, Shankar, "Do ImageNet Classifiers Generalize to ImageNet?", ICML
2019 (CIFAR-10.1, ImageNetV2).

With ``T`` = logit or probit and accuracies as fractions clipped to ``[1e-6, 1 - 1e-6]``:

    baseline  beta(a_id) = T^-1(A * T(a_id) + B),  (A, B) = OLS of T(a_ood) on T(a_id) over a testbed
    ER        = a_ood - beta(a_id)

Confidence interval (normal approximation, delta method): each accuracy is a binomial proportion,
``Var(a) = a (1 - a) / n``, the two test sets are independent, and ``beta`` is linearised at ``a_id``:

    Var(ER) = a_ood (1 - a_ood) / n_ood + (d beta / d a_id)^2 * a_id (1 - a_id) / n_id
    d beta / d a_id = A * a_beta (1 - a_beta) / (a_id (1 - a_id))        (logit; a_beta = beta(a_id))
                    = A * phi(A q + B) / phi(q),  q = Phi^-1(a_id)       (probit; phi = normal pdf)
    CI = ER -/+ z_{1 - alpha/2} * sqrt(Var(ER))

``fit_uncertainty=True`` adds the fitted line's own variance, ``(dT^-1/dz)^2 * Var(A T(a_id) + B)``.
:func:`bootstrap_effective_robustness` resamples test examples instead (and refits the line per draw
when given the testbed's per-example correctness).

Units are never guessed: every entry point takes ``unit="fraction"`` (default) or ``"percent"``, a
value outside that unit's range is an error, and results come back in the unit given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import torch
from torch import Tensor

from evoens.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "BASELINES",
    "Baseline",
    "ERResult",
    "RobustnessError",
    "Scale",
    "Unit",
    "bootstrap_effective_robustness",
    "effective_robustness",
    "fit_baseline",
    "get_baseline",
    "inverse_transform",
    "plot_effective_robustness",
    "to_fraction",
    "transform",
]

Scale = Literal["logit", "probit"]
Unit = Literal["fraction", "percent"]
Values = float | Sequence[float] | Tensor
CLIP = 1e-6  # accuracies 0 and 1 have no logit/probit
_UNIT_MAX = {"fraction": 1.0, "percent": 100.0}


class RobustnessError(UserError, ValueError):
    """Accuracies in the wrong unit or range, an unknown scale or baseline, a degenerate fit."""


# --- scales and units -------------------------------------------------------------------------------


def to_fraction(values: Values, unit: Unit = "fraction", *, what: str = "accuracy") -> Tensor:
    """``values`` as float64 fractions; a value outside ``[0, 1]`` (``[0, 100]`` for percent) raises."""
    if unit not in _UNIT_MAX:
        raise RobustnessError(f"unit {unit!r} is not 'fraction' or 'percent'")
    t = torch.as_tensor(values, dtype=torch.float64)
    top = _UNIT_MAX[unit]
    bad = ~((t >= 0) & (t <= top))  # NaN is bad too
    if bool(bad.any()):
        value = float(t[bad].flatten()[0])
        hint = "; pass unit='percent'" if unit == "fraction" and 1 < value <= 100 else ""
        raise RobustnessError(f"{what} {value:g} is outside [0, {top:g}] for unit={unit!r}{hint}")
    return t / top


def _check_scale(scale: str) -> None:
    if scale not in ("logit", "probit"):
        raise RobustnessError(f"scale {scale!r} is not 'logit' or 'probit'")


def transform(p: Tensor, scale: str) -> Tensor:
    """T(p): logit or probit of fractions, clipped to ``[CLIP, 1 - CLIP]`` first."""
    _check_scale(scale)
    p = p.clamp(CLIP, 1 - CLIP)
    return torch.logit(p) if scale == "logit" else torch.special.ndtri(p)


def inverse_transform(z: Tensor, scale: str) -> Tensor:
    """T^-1(z): the sigmoid or the normal CDF."""
    _check_scale(scale)
    return torch.sigmoid(z) if scale == "logit" else torch.special.ndtr(z)


def _inverse_slope(z: Tensor, scale: str) -> Tensor:
    """d T^-1 / dz at z."""
    if scale == "logit":
        s = torch.sigmoid(z)
        return s * (1 - s)
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


# --- the baseline ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """The line ``T(a_ood) = a * T(a_id) + b`` (the papers' A, B) on ``scale``, with its fit statistics
    (NaN / 0 for a published line given without them)."""

    a: float
    b: float
    scale: Scale = "logit"
    r2: float = math.nan
    se_a: float = math.nan
    se_b: float = math.nan
    cov_ab: float = math.nan
    n: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        _check_scale(self.scale)

    def z(self, p: Tensor) -> Tensor:
        """A * T(p) + B: the prediction on the transformed scale, for fractions p."""
        return self.a * transform(p, self.scale) + self.b

    def beta(self, p: Tensor) -> Tensor:
        """beta(p) for fractions p (no unit checks): T^-1(A * T(p) + B)."""
        return inverse_transform(self.z(p), self.scale)

    @overload
    def predict(self, acc_id: float, unit: Unit = "fraction") -> float: ...
    @overload
    def predict(self, acc_id: Tensor | Sequence[float], unit: Unit = "fraction") -> Tensor: ...
    def predict(self, acc_id: Values, unit: Unit = "fraction") -> Tensor | float:
        """beta(acc_id), in ``unit``: the OOD accuracy a model on the line has."""
        p = to_fraction(acc_id, unit, what="acc_id")
        return _out(self.beta(p) * _UNIT_MAX[unit], acc_id)

    def slope(self, acc_id: Tensor) -> Tensor:
        """d beta / d a_id at fractions ``acc_id`` (see the module docstring)."""
        q = transform(acc_id, self.scale)  # dT/dp = 1 / (dT^-1/dz at q), for both scales
        return self.a * _inverse_slope(self.z(acc_id), self.scale) / _inverse_slope(q, self.scale)

    def fit_variance(self, acc_id: Tensor) -> Tensor:
        """Var(beta(acc_id)) from the fitted (A, B) alone (delta method); NaN without fit statistics."""
        q = transform(acc_id, self.scale)
        var_z = q * q * self.se_a**2 + self.se_b**2 + 2 * q * self.cov_ab
        return _inverse_slope(self.z(acc_id), self.scale) ** 2 * var_z


#: Published lines (Andreassen et al. 2021, p. 13, as used by interp_ensembles' plot.py).
BASELINES: dict[str, Baseline] = {
    "cifar10_1": Baseline(0.8318, -0.4736, "logit", name="CIFAR-10 -> CIFAR-10.1"),
    "imagenetv2": Baseline(0.9225, -0.4896, "logit", name="ImageNet -> ImageNetV2"),
}


def get_baseline(spec: str | Baseline | tuple[float, float], scale: Scale = "logit") -> Baseline:
    """A :class:`Baseline` from a built-in name (``"cifar10_1"``, ``"imagenetv2"``), itself, or ``(A, B)``."""
    if isinstance(spec, Baseline):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace(".", "_").replace("-", "_")
        if key not in BASELINES:
            known = ", ".join(BASELINES)
            raise RobustnessError(f"unknown baseline {spec!r}{did_you_mean(spec, BASELINES)}; known: {known}")
        return BASELINES[key]
    a, b = spec
    return Baseline(float(a), float(b), scale)


def fit_baseline(
    points: Sequence[tuple[float, float]] | Tensor,
    scale: Scale = "logit",
    *,
    unit: Unit = "fraction",
    weights: Values | None = None,
) -> Baseline:
    """(Weighted) OLS of ``T(a_ood)`` on ``T(a_id)`` over ``points`` = (a_id, a_ood) pairs, shape (n, 2).

    Standard errors are the classical ones, ``sigma^2 (X^T W X)^-1`` with
    ``sigma^2 = sum w r^2 / (n - 2)`` (NaN when n = 2).
    """
    _check_scale(scale)
    pts = to_fraction(points, unit, what="accuracy")
    if pts.dim() != 2 or pts.shape[1] != 2 or pts.shape[0] < 2:
        raise RobustnessError(f"fit_baseline needs n >= 2 (a_id, a_ood) pairs, got shape {tuple(pts.shape)}")
    x, y = transform(pts[:, 0], scale), transform(pts[:, 1], scale)  # (n,), (n,)
    w = torch.ones_like(x) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    design = torch.stack([x, torch.ones_like(x)], 1)  # (n, 2)
    gram = design.T @ (w[:, None] * design)  # (2, 2)
    if float(torch.linalg.det(gram)) <= 1e-12 * float(gram.diagonal().prod()):
        raise RobustnessError("fit_baseline: all a_id are equal (after clipping); the line is undetermined")
    coef = torch.linalg.solve(gram, design.T @ (w * y))  # (2,) = (A, B)
    resid = y - design @ coef
    n = x.shape[0]
    ss_res = float((w * resid**2).sum())
    ss_tot = float((w * (y - (w * y).sum() / w.sum()) ** 2).sum())
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else math.nan)
    cov = torch.linalg.inv(gram) * (ss_res / (n - 2) if n > 2 else math.nan)  # (2, 2)
    return Baseline(float(coef[0]), float(coef[1]), scale, r2, float(cov[0, 0].sqrt()),
                    float(cov[1, 1].sqrt()), float(cov[0, 1]), n, name=f"fit ({scale}, n={n})")  # fmt: skip


# --- effective robustness ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ERResult:
    """ER with its CI, and the accuracies behind it, all in ``unit`` (Tensors for several models)."""

    er: Tensor | float
    low: Tensor | float
    high: Tensor | float
    se: Tensor | float
    acc_id: Tensor | float
    acc_ood: Tensor | float
    predicted_ood: Tensor | float
    unit: str
    alpha: float


def _out(t: Tensor, like: object) -> Tensor | float:
    """A float when the caller passed a scalar, else the tensor."""
    return float(t) if t.dim() == 0 and not isinstance(like, Tensor) else t


def _z_crit(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise RobustnessError(f"alpha={alpha!r} must be in (0, 1)")
    return float(torch.special.ndtri(torch.tensor(1 - alpha / 2, dtype=torch.float64)))


def _result(er: Tensor, se: Tensor, low: Tensor, high: Tensor, p_id: Tensor, p_ood: Tensor,
            beta: Tensor, unit: str, alpha: float, like: object) -> ERResult:  # fmt: skip
    """Fractions -> an ERResult in ``unit``."""
    k = _UNIT_MAX[unit]
    fields = (er, low, high, se, p_id, p_ood, beta)
    return ERResult(*(_out(f * k, like) for f in fields), unit=unit, alpha=alpha)  # type: ignore[arg-type]


def effective_robustness(
    acc_id: Values,
    acc_ood: Values,
    baseline: str | Baseline | tuple[float, float] = "cifar10_1",
    n_id: int | None = None,
    n_ood: int | None = None,
    alpha: float = 0.05,
    *,
    unit: Unit = "fraction",
    fit_uncertainty: bool = False,
) -> ERResult:
    """``ER = acc_ood - beta(acc_id)`` with a ``1 - alpha`` delta-method CI (module docstring).

    ``n_id`` / ``n_ood`` are the test-set sizes (10 000 and 2 000 for CIFAR-10 / CIFAR-10.1 v6);
    without them the CI is NaN. Several models at once: pass 1-D accuracies (then tensors come back).
    """
    line = get_baseline(baseline)
    p_id, p_ood = to_fraction(acc_id, unit, what="acc_id"), to_fraction(acc_ood, unit, what="acc_ood")
    beta = line.beta(p_id)
    er = p_ood - beta
    var = p_ood * (1 - p_ood) / (n_ood or math.nan) + line.slope(p_id) ** 2 * p_id * (1 - p_id) / (n_id or math.nan)
    if fit_uncertainty:
        var = var + line.fit_variance(p_id)
    se = var.sqrt()
    z = _z_crit(alpha)
    return _result(er, se, er - z * se, er + z * se, p_id, p_ood, beta, unit, alpha, acc_id)


def _accuracies(correct: Tensor, counts: Tensor) -> Tensor:
    """Accuracies of the (M, N) correctness rows under (R, N) resampling counts: (R, M)."""
    return counts @ correct.T.to(counts.dtype) / correct.shape[1]


def _fit_rows(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """OLS of y on x per row: (R, M) -> slopes (R,), intercepts (R,)."""
    xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    a = (xc * yc).sum(1) / (xc * xc).sum(1)
    return a, y.mean(1) - a * x.mean(1)


def bootstrap_effective_robustness(
    correct_id: Tensor,
    correct_ood: Tensor,
    baseline: str | Baseline | tuple[float, float] = "cifar10_1",
    *,
    testbed: tuple[Tensor, Tensor] | None = None,
    scale: Scale = "logit",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    chunk: int = 100,
) -> ERResult:
    """ER with a percentile bootstrap CI over test examples, in fractions.

    ``correct_id`` (N_id,) and ``correct_ood`` (N_ood,) are one model's per-example correctness. With
    ``testbed = (C_id (M, N_id), C_ood (M, N_ood))`` (M >= 2 models scored on the *same* examples) each
    draw refits the line on ``scale`` from the resampled testbed and ``baseline`` is ignored, so the CI
    holds the fit's uncertainty and the shared test examples' correlation. Deterministic in ``seed``.
    """
    rows_id, rows_ood = correct_id.reshape(1, -1), correct_ood.reshape(1, -1)
    if testbed is not None:
        _check_testbed(testbed, rows_id.shape[1], rows_ood.shape[1])
        rows_id, rows_ood = torch.cat([rows_id, testbed[0]]), torch.cat([rows_ood, testbed[1]])  # (1 + M, N)
    line = None if testbed is not None else get_baseline(baseline)
    g = torch.Generator().manual_seed(seed)
    draws = []
    for start in range(0, n_boot, chunk):
        r = min(chunk, n_boot - start)
        acc_id = _accuracies(rows_id.double(), _counts(r, rows_id.shape[1], g))  # (r, 1 + M)
        acc_ood = _accuracies(rows_ood.double(), _counts(r, rows_ood.shape[1], g))
        draws.append(acc_ood[:, 0] - _beta(acc_id, acc_ood, line, scale))  # (r,)
    ers = torch.cat(draws)  # (n_boot,)
    p_id, p_ood = rows_id[0].double().mean(), rows_ood[0].double().mean()
    if line is None:
        line = fit_baseline(torch.stack([rows_id[1:].double().mean(1), rows_ood[1:].double().mean(1)], 1), scale)
    beta = line.beta(p_id)
    q = torch.quantile(ers, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64))
    return _result(p_ood - beta, ers.std(), q[0], q[1], p_id, p_ood, beta, "fraction", alpha, None)


def _check_testbed(testbed: tuple[Tensor, Tensor], n_id: int, n_ood: int) -> None:
    bed_id, bed_ood = testbed
    if (
        bed_id.dim() != 2
        or bed_id.shape[0] < 2
        or bed_id.shape != (bed_ood.shape[0], n_id)
        or bed_ood.shape[1:] != (n_ood,)
    ):
        raise RobustnessError(
            f"testbed must be (M >= 2, {n_id}) and (M, {n_ood}) correctness on the model's own test examples, "
            f"got {tuple(bed_id.shape)} and {tuple(bed_ood.shape)}"
        )


def _counts(r: int, n: int, g: torch.Generator) -> Tensor:
    """How often each of n examples is drawn in r resamples of size n: (r, n) float64."""
    index = torch.randint(n, (r, n), generator=g)
    return torch.zeros(r, n, dtype=torch.float64).scatter_add_(1, index, torch.ones(r, n, dtype=torch.float64))


def _beta(acc_id: Tensor, acc_ood: Tensor, line: Baseline | None, scale: str) -> Tensor:
    """beta of column 0 of (r, 1 + M) accuracies: the fixed line, or one refitted on columns 1.. per row."""
    if line is not None:
        return line.beta(acc_id[:, 0])
    x, y = transform(acc_id[:, 1:], scale), transform(acc_ood[:, 1:], scale)  # (r, M)
    a, b = _fit_rows(x, y)
    return inverse_transform(a * transform(acc_id[:, 0], scale) + b, scale)


# --- the plot ----------------------------------------------------------------------------------------

_ToAxis = Callable[[Tensor], np.ndarray]
_TICKS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 92, 94, 95, 96, 97, 98, 99, 99.5, 99.9)
_STYLE = {"member": ("o", "tab:blue"), "ensemble": ("*", "tab:red"), "other": ("s", "tab:gray")}


def plot_effective_robustness(
    path: str | Path,
    acc_id: Values,
    acc_ood: Values,
    kinds: Sequence[str] | None = None,
    *,
    baseline: str | Baseline | tuple[float, float] = "cifar10_1",
    reference: str | Baseline | None = None,
    unit: Unit = "fraction",
    n_id: int | None = None,
    n_ood: int | None = None,
    title: str | None = None,
) -> Path:
    """OOD vs ID accuracy on ``baseline``'s scale (ticks in percent, as in Taori et al.), written as PNG.

    Draws the points by kind (``"member"``, ``"ensemble"``, ``"other"``), with binomial 95 % error
    bars when ``n_id`` and ``n_ood`` are given; the ER = 0 line ``baseline`` (the testbed's fit, R² in
    the legend); an optional second ``reference`` line (e.g. the published ``"cifar10_1"``); y = x.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = get_baseline(baseline)
    p_id = to_fraction(acc_id, unit, what="acc_id").reshape(-1)
    p_ood = to_fraction(acc_ood, unit, what="acc_ood").reshape(-1)
    kinds = list(kinds) if kinds is not None else ["other"] * len(p_id)
    unknown = sorted(set(kinds) - set(_STYLE))
    if len(kinds) != len(p_id) or unknown:
        raise RobustnessError(f"kinds must be {len(p_id)} of {', '.join(_STYLE)}; got {len(kinds)}, unknown {unknown}")

    def t(p: Tensor) -> np.ndarray:  # fractions -> axis coordinates
        return transform(p.double(), line.scale).numpy()

    lo, hi = _span(torch.cat([p_id, p_ood]))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    grid = torch.linspace(lo, hi, 200, dtype=torch.float64)
    ax.plot(t(grid), t(grid), ":", color="black", label="y = x (no drop)")
    ax.plot(t(grid), t(line.beta(grid)), "-", color="tab:green", label=_label(line))
    if reference is not None:
        ref = get_baseline(reference)
        ax.plot(t(grid), t(ref.beta(grid)), "--", color="tab:olive", label=_label(ref, "reference"))
    for kind in _STYLE:
        mask = torch.tensor([k == kind for k in kinds], dtype=torch.bool)
        if bool(mask.any()):
            _scatter(ax, t, p_id[mask], p_ood[mask], n_id, n_ood, kind)
    _percent_axes(ax, t, lo, hi, line.scale)
    ax.set_title(title or f"effective robustness ({line.scale} scale)")
    ax.legend(fontsize=8, loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _span(p: Tensor) -> tuple[float, float]:
    """A plotting range around fractions p, a little wider on the transformed scale."""
    lo, hi = float(p.min().clamp(0.01, 0.99)), float(p.max().clamp(0.01, 0.99))
    return max(0.005, lo - 0.05), min(0.998, hi + 0.02)


def _label(line: Baseline, what: str = "ER = 0") -> str:
    fit = f", R² = {line.r2:.3f}" if not math.isnan(line.r2) else ""
    return f"{what}: {line.name or 'baseline'} (A = {line.a:.4f}, B = {line.b:.4f}{fit})"


def _scatter(ax: Axes, t: _ToAxis, p_id: Tensor, p_ood: Tensor, n_id: int | None, n_ood: int | None,
             kind: str) -> None:  # fmt: skip
    marker, color = _STYLE[kind]
    x, y = t(p_id), t(p_ood)
    if n_id and n_ood:  # asymmetric bars: the binomial 95 % CI mapped through T
        half_id, half_ood = (1.96 * (p * (1 - p) / n).sqrt() for p, n in ((p_id, n_id), (p_ood, n_ood)))
        # one (2, n) array: matplotlib's check of a list of arrays warns on numpy >= 1.25
        xerr = np.stack([x - t(p_id - half_id), t(p_id + half_id) - x])
        yerr = np.stack([y - t(p_ood - half_ood), t(p_ood + half_ood) - y])
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor=color, alpha=0.4)
    ax.scatter(x, y, marker=marker, color=color, s=70 if kind == "ensemble" else 25, label=kind, zorder=3)


def _percent_axes(ax: Axes, t: _ToAxis, lo: float, hi: float, scale: str) -> None:
    ticks = [v for v in _TICKS if lo <= v / 100 <= hi] or [round(100 * lo, 1), round(100 * hi, 1)]
    where, labels, limits = t(torch.tensor(ticks) / 100), [f"{v:g}" for v in ticks], t(torch.tensor([lo, hi]))
    ax.set_xticks(where, labels)
    ax.set_yticks(where, labels)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_xlabel(f"in-distribution accuracy (%, {scale} scale)")
    ax.set_ylabel(f"out-of-distribution accuracy (%, {scale} scale)")
