"""Lean sampling and updates for EvoTorch's Gaussian searchers: a shared noise table.

EvoTorch samples a fresh ``(N, D)`` Gaussian every generation; its antithetic (PGPE) path
draws into a strided half of the population and interleaves with ``torch.cat``, which on a CPU
costs as much as the whole batched forward of a small MLP population. A shared noise table
(Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement Learning",
2017) replaces that with a gather: each direction is a window ``table[o : o + D]`` at a random
offset ``o``, so a generation draws N integers instead of N·D normals.

The search gradients of SNES and PGPE are EvoTorch's formulas computed in row chunks: its code
builds several fresh ``(N, D)`` temporaries per generation (52 MB each for a 784-64-10 MLP at
N = 256), which costs more than the batched forward; a chunk of about 4 MB stays in cache.

The searcher's layout (``mu + s``, ``mu - s`` interleaved for symmetric sampling), ranking, the
parameter updates and the optimizers stay EvoTorch's own code. The table is regenerated from its
seed (never checkpointed); the offsets come from the problem's generator, which checkpoints
hold, so resumed runs draw the same windows.
"""

from __future__ import annotations

from typing import Any

import torch
from evotorch.distributions import ExpSeparableGaussian, SymmetricSeparableGaussian

from evoens import _evotorch_compat as compat

__all__ = ["DEFAULT_TABLE_SIZE", "noise_table", "table_rows", "use_noise_table"]

DEFAULT_TABLE_SIZE = 1 << 24  # 16M floats (64 MB float32); grown to 64·D for very wide networks
TABLE_SEED = 20170310  # fixed: the table is part of the algorithm, not of the run's randomness
_TABLES: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}


def noise_table(size: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The shared N(0, 1) table of ``size`` values on ``device`` (built once per process)."""
    key = (size, str(torch.device(device)), dtype)
    if key not in _TABLES:
        gen = torch.Generator().manual_seed(TABLE_SEED)
        _TABLES[key] = torch.randn(size, generator=gen, dtype=dtype).to(device)  # (size,)
    return _TABLES[key]


def table_rows(table: torch.Tensor, rows: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
    """``rows`` windows of ``width`` consecutive table values at random offsets: ``(rows, width)``."""
    if width > table.numel():
        raise ValueError(f"noise table of {table.numel()} values is narrower than a solution ({width}); enlarge it")
    windows = table.as_strided((table.numel() - width + 1, width), (1, 1))  # (offsets, width), a view
    offsets = torch.randint(0, windows.shape[0], (rows,), generator=generator, device=table.device)  # (rows,)
    return windows[offsets]  # (rows, width): one gather


class _TableFill:
    """Mixin over an EvoTorch separable Gaussian: ``_fill`` gathers from the noise table.

    Both methods override EvoTorch privates (:data:`evoens._evotorch_compat.DISTRIBUTION_HOOKS`).
    """

    table_size: int  # set per generated class (see _table_class)

    def _fill(self, out: torch.Tensor, *, generator: Any = None) -> None:
        mu, sigma = self.parameters["mu"], self.parameters["sigma"]  # (D,), (D,)
        table = noise_table(max(self.table_size, 64 * out.shape[1]), out.device, out.dtype)
        gen = compat.sampling_generator(generator)  # EvoTorch passes the Problem
        if isinstance(self, SymmetricSeparableGaussian):  # rows 2k, 2k+1 = mu + s_k, mu - s_k
            steps = table_rows(table, out.shape[0] // 2, out.shape[1], gen) * sigma  # (N/2, D)
            torch.add(mu, steps, out=out[0::2])
            torch.sub(mu, steps, out=out[1::2])
        else:
            torch.addcmul(mu, table_rows(table, out.shape[0], out.shape[1], gen), sigma, out=out)  # (N, D)

    def _compute_gradients(self, samples: torch.Tensor, weights: torch.Tensor, ranking_used: Any) -> dict:
        if isinstance(self, ExpSeparableGaussian):
            return _snes_gradients(self, samples, weights, ranking_used)
        if isinstance(self, SymmetricSeparableGaussian) and not compat.uses_elites(self):  # type: ignore[arg-type]
            return _pgpe_gradients(self, samples, weights, ranking_used)
        return super()._compute_gradients(samples, weights, ranking_used)  # type: ignore[misc]


def _row_chunks(rows: int, width: int) -> list[slice]:
    step = max(1, (1 << 20) // max(width, 1))  # ~4 MB of float32 per temporary
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _snes_gradients(dist: Any, samples: torch.Tensor, weights: torch.Tensor, ranking_used: Any) -> dict:
    """EvoTorch's ``ExpSeparableGaussian`` gradients: sum_k w_k (s_k - mu), sum_k w_k (z_k^2 - 1)."""
    if ranking_used != "nes":
        weights = weights / torch.sum(torch.abs(weights))
    mu, sigma = dist.mu, dist.sigma  # (D,), (D,)
    mu_grad, sigma_grad = torch.zeros_like(mu), torch.zeros_like(mu)
    for rows in _row_chunks(*samples.shape):
        scaled = samples[rows] - mu  # (n, D)
        mu_grad.addmv_(scaled.T, weights[rows])
        sigma_grad.addmv_(scaled.div_(sigma).square_().T, weights[rows])  # raw noise squared
    return {"mu": mu_grad, "sigma": sigma_grad - weights.sum()}


def _pgpe_gradients(dist: Any, samples: torch.Tensor, weights: torch.Tensor, ranking_used: Any) -> dict:
    """EvoTorch's ``SymmetricSeparableGaussian`` gradients over the N/2 directions ``s_k - mu``:
    sum_k (u+_k - u-_k)/2 (s_k - mu) and sum_k (u+_k + u-_k)/2 ((s_k - mu)^2 - sigma^2) / sigma."""
    if ranking_used not in ("centered", "normalized"):
        weights = weights - torch.mean(weights)
    mu, sigma = dist.mu, dist.sigma  # (D,), (D,)
    plus, fplus, fminus = samples[0::2], weights[0::2], weights[1::2]  # (N/2, D), (N/2,), (N/2,)
    mu_grad, sigma_grad = torch.zeros_like(mu), torch.zeros_like(mu)
    for rows in _row_chunks(*plus.shape):
        scaled = plus[rows] - mu  # (n, D)
        mu_grad.addmv_(scaled.T, (fplus[rows] - fminus[rows]) / 2)
        sigma_grad.addmv_(scaled.square_().T, (fplus[rows] + fminus[rows]) / 2)
    sigma_grad = (sigma_grad - ((fplus + fminus) / 2).sum() * sigma.square()) / sigma
    return {
        "mu": compat.divide_grad(dist, "mu", mu_grad, weights),
        "sigma": compat.divide_grad(dist, "sigma", sigma_grad, weights),
    }


_CLASSES: dict[tuple[type, int], type] = {}


def _table_class(base: type, size: int) -> type:
    """One subclass per (distribution class, table size): EvoTorch rebuilds the distribution
    from its class at every update, so the size must live on the class."""
    if (base, size) not in _CLASSES:
        _CLASSES[(base, size)] = type(f"Table{base.__name__}", (_TableFill, base), {"table_size": size})
    return _CLASSES[(base, size)]


def use_noise_table(searcher: Any, size: int = DEFAULT_TABLE_SIZE) -> Any:
    """Make ``searcher`` (EvoTorch SNES, PGPE or CEM) sample from the shared noise table.

    The distribution is swapped for a subclass that differs only in ``_fill`` (sampling) and, for
    SNES and PGPE, in ``_compute_gradients`` (the same formulas in row chunks); EvoTorch's
    ``modified_copy`` keeps the class across updates. Returns ``searcher``.
    """
    dist = compat.search_distribution(searcher)
    if dist is None or "sigma" not in dist.parameters or dist.parameters["sigma"].dim() != 1:
        raise ValueError(f"{type(searcher).__name__}: the noise table needs a separable Gaussian searcher")
    compat.set_search_distribution(searcher, compat.retyped_distribution(dist, _table_class(type(dist), int(size))))
    return searcher
