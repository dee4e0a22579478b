"""PCA size metrics of a layer's (pre-)activations, with the principal axes the right way round.

I. T. Jolliffe, "Principal Component Analysis" (2nd ed., 2002), ch. 3: the best rank-k
reconstruction of centred data ``A`` is ``A_k = (A V_k^T) V_k`` where the rows of ``V`` are the
principal axes (sklearn's ``components_``), and its mean squared error is the sum of the discarded
eigenvalues. The journal's ``pca_metric.py`` (mitdbg/fastdeepnets, 2017-10-17..20) took
coefficients on the *columns* of ``components_`` and reconstructed with its inverse: exact with
every component, but its partial reconstructions are projections onto the span of the first k
columns, not principal subspaces. ``basis="journal"`` reproduces that for comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PCAMetrics:
    """``explained_variance`` (N,) descending; ``ks`` and, per k, the mean squared reconstruction
    error ``mean_n ||a - a_k||^2`` and (with a head) the accuracy through ``head``."""

    explained_variance: Tensor  # (N,)
    components: Tensor  # (N, N): rows are principal axes
    ks: list[int]
    error: list[float]
    accuracy: list[float] | None


def principal_axes(acts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``acts`` (n, N) -> mean (N,), explained variance (N,) (1/(n-1), descending), axes (N, N) as rows."""
    a = acts.to(torch.float64)
    mean = a.mean(0)
    c = a - mean  # (n, N)
    cov = c.T @ c / max(a.shape[0] - 1, 1)  # (N, N): never the (n, n) side of an SVD
    var, vecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(var, descending=True)
    return mean, var[order].clamp_min(0), vecs[:, order].T.contiguous()  # rows = principal axes


def reconstruct(acts: Tensor, mean: Tensor, axes: Tensor, k: int, basis: str = "principal") -> Tensor:
    """The rank-``k`` reconstruction of ``acts`` (n, N): ``principal`` ``(a V_k^T) V_k``; ``journal``
    coefficients on the columns ``a V[:, :k]`` and the inverse's rows ``V^{-1}[:k]``."""
    a = acts.to(torch.float64) - mean  # (n, N)
    if basis == "principal":
        vk = axes[:k]  # (k, N)
        return (a @ vk.T) @ vk + mean  # (n, N)
    if basis == "journal":
        inv = torch.linalg.inv(axes)  # (N, N)
        return (a @ axes[:, :k]) @ inv[:k] + mean  # (n, N)
    raise ValueError(f"basis must be 'principal' or 'journal', got {basis!r}")


def pca_size_metrics(acts: Tensor, ks: Sequence[int] | None = None, *, basis: str = "principal",
                     head: Callable[[Tensor], Tensor] | None = None,
                     labels: Tensor | None = None) -> PCAMetrics:  # fmt: skip
    """The journal's three PCA metrics on pre-activations ``acts`` (n, N): explained variance per
    component, reconstruction error with k components and, given ``head`` (pre-activation (n, N)
    -> logits, e.g. ReLU + output layer) and ``labels``, the accuracy of the reconstruction."""
    n, width = acts.shape
    ks = list(range(width + 1)) if ks is None else [int(k) for k in ks]
    mean, var, axes = principal_axes(acts)
    errors, accs = [], [] if head is not None else None
    for k in ks:
        rec = reconstruct(acts, mean, axes, k, basis)  # (n, N)
        errors.append(float((acts.to(torch.float64) - rec).pow(2).sum(1).mean()))
        if head is not None and accs is not None:
            if labels is None:
                raise ValueError("an accuracy curve needs labels")
            with torch.no_grad():
                pred = head(rec.to(acts.dtype)).argmax(-1)  # (n,)
            accs.append(float((pred == labels).float().mean()))
    return PCAMetrics(var, axes, ks, errors, accs)


def components_for(metrics: PCAMetrics, fraction: float = 0.99) -> int:
    """The fewest components that explain ``fraction`` of the variance."""
    total = metrics.explained_variance.sum()
    cum = torch.cumsum(metrics.explained_variance, 0) / total.clamp_min(1e-300)
    return int((cum < fraction).sum()) + 1
