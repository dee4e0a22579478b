"""Per-unit activation statistics of a population: exact streamed mean and standard deviation.

Chan, Golub, LeVeque, "Updating Formulae and a Pairwise Algorithm for Computing Sample Variances"
(1979) for merging batches; Welford (1962) is the one-sample case. The journal's
``variance_metric.py`` (mitdbg/fastdeepnets, 2017-10-06) used a running mean inside the sum, so its
"variance" (in fact a standard deviation) was approximate; here it is exact, for all P members at
once, in float64. Shapiro-Wilk: Shapiro & Wilk, Biometrika 52 (1965). These are diagnostics: the
journal concludes that no layer-local metric decides whether a layer is too big or too small.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


@dataclass
class ActivationStats:
    """Per member and unit, over ``n`` examples: ``mean``, ``std`` (1/n), ``dead`` (std == 0 exactly)."""

    n: int
    mean: Tensor  # (P, N) float64
    std: Tensor  # (P, N) float64
    dead: Tensor  # (P, N) bool

    @property
    def dead_count(self) -> Tensor:
        return self.dead.sum(-1)  # (P,)


class UnitStats:
    """Streams batches of activations ``(P, B, N)`` into exact per-unit mean and variance."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None  # (P, N)
        self.m2: Tensor | None = None  # (P, N): sum of squared deviations

    def update(self, acts: Tensor) -> None:
        """Merge one batch (Chan et al.'s pairwise update)."""
        a = acts.detach().to(torch.float64).flatten(2)  # (P, B, N)
        b = a.shape[1]
        if b == 0:
            return
        mean_b = a.mean(1)  # (P, N)
        m2_b = (a - mean_b[:, None]).pow(2).sum(1)  # (P, N)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = b, mean_b, m2_b
            return
        total = self.n + b
        delta = mean_b - self.mean  # (P, N)
        self.mean = self.mean + delta * (b / total)
        self.m2 = self.m2 + m2_b + delta.pow(2) * (self.n * b / total)
        self.n = total

    def result(self) -> ActivationStats:
        if self.mean is None or self.m2 is None:
            raise ValueError("no activations seen")
        std = (self.m2 / self.n).clamp_min(0).sqrt()  # (P, N), the journal's 1/n
        return ActivationStats(self.n, self.mean, std, self.m2 == 0)


def two_pass(acts: Tensor) -> tuple[Tensor, Tensor]:
    """Reference mean and 1/n standard deviation of ``(P, n, N)`` activations, in float64."""
    a = acts.to(torch.float64)
    mean = a.mean(1)
    return mean, (a - mean[:, None]).pow(2).mean(1).sqrt()


class ActivationProbe:
    """Activations of module ``layer`` of a population's ``template``: its input (``where="pre"``)
    or its output (``"post"``), for all P members in one vmapped forward: ``(P, B, N)``.

    For the journal's post-ReLU statistics probe the ReLU with ``post`` (or the switch/gated layer
    with ``pre`` on the ReLU, its pre-activation)."""

    def __init__(self, template: nn.Module, layer: str, where: str = "post") -> None:
        if where not in ("pre", "post"):
            raise ValueError(f"where must be 'pre' or 'post', got {where!r}")
        self.template, self.layer, self.where = template, layer, where
        self.module = template.get_submodule(layer)

    def activations(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        """``params``/``buffers``: name -> (P, ...); ``x`` (B, ...) shared -> (P, B, N)."""

        def one(p: dict[str, Tensor], b: dict[str, Tensor], xi: Tensor) -> Tensor:
            seen: list[Tensor] = []

            def grab(_m: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
                seen.append(args[0] if self.where == "pre" else out)

            handle = self.module.register_forward_hook(grab)
            try:
                functional_call(self.template, ({**p, **b},), (xi,))
            finally:
                handle.remove()
            return seen[0].flatten(1)  # (B, N)

        with torch.no_grad():
            return torch.vmap(one, in_dims=(0, 0, None))(params, buffers, x)  # (P, B, N)

    def stats(self, params: dict[str, Tensor], buffers: dict[str, Tensor],
              batches: Iterable[Tensor]) -> ActivationStats:  # fmt: skip
        """Exact per-unit statistics over every example of ``batches``."""
        acc = UnitStats()
        for x in batches:
            acc.update(self.activations(params, buffers, x))
        return acc.result()


def shapiro_w(std: Tensor, pool: bool = True) -> float | list[float]:
    """Shapiro-Wilk W of the standard deviations ``(P, N)``: pooled over the members (the journal
    concatenates its replicates) or one per member. scipy's warning that the p-value is inaccurate
    for n > 5000 is silenced: W itself is what the journal plots."""
    from scipy import stats as st

    values = std.detach().to(torch.float64).cpu()
    rows = [values.flatten()] if pool else list(values.reshape(values.shape[0], -1))
    found = []
    for row in rows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            found.append(float(st.shapiro(row.numpy()).statistic) if row.numel() >= 3 else float("nan"))
    return found[0] if pool else found
