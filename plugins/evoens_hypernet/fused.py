"""The vq refiner's decode run in its hidden space: the big weights enter K times, not T·N times.

A. Nichol, ``unixpickle/vq-ensemble`` (2020), ``meta_models.py`` ``Refiner``. Stage t of the MLP
refiner reads the weights ``u_t`` only through the input layer's pre-activation
``a_t = W_in u_t + b_in`` (H,), and writes ``u_{t+1} = u_t + σ_t (W_z h_t + β_z + b_{t,z})`` with
``W_k`` (D, H) and ``β_k`` the output layer's block and bias of option k. So, exactly,

    a_{t+1} = a_t + σ_t (M_{z_t} h_t + c_{t, z_t}),     M_k = W_in W_k (H, H),  c_{t,k} = W_in (β_k + b_{t,k})
    u_T     = Σ_k W_k g_k + Σ_t σ_t (β_{z_t} + b_{t, z_t}),   g_k = Σ_{t: z_t = k} σ_t h_t    (H,)

The D-sized work of a decode becomes K products ``W_in W_k`` (independent of N and T), one product
of the T·K bias rows with ``W_in`` and one ``(N, K·H) x (K·H, D)`` output product; the T stages run
on ``(N, H)`` rows, so nothing ``(N, D)`` is kept per stage (no checkpointing is needed). The
stage-by-stage decode computes the same function (equal up to float summation order, tested). The
gradients are autograd's, except the big weights': each is written once, in place, from the rows of
every stage's use (as :mod:`evoens_hypernet.deferred` does for the stages), through the rows when
they are fewer than H/2 per option. First-order only. Pure torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["READ_COST", "decode_hidden", "hidden_cost", "stages_cost"]

#: flops that reading one float of the big weights costs: a stage's products with few rows are
#: memory-bound. About the balance of a 2-core CPU and of a GPU alike; with it the two paths cost the
#: same for one member at the seed's sizes, as measured (the hidden path was 1.5-6x faster from 2 to 64).
READ_COST = 48


def hidden_cost(n: int, stages: int, options: int, hidden: int, dim: int) -> int:
    """Flops of a hidden-space decode's big products (its backward costs about twice as much)."""
    return 2 * dim * hidden * (options * hidden + stages * options + n * options)


def stages_cost(n: int, stages: int, options: int, hidden: int, dim: int) -> int:
    """The same for the stage-by-stage decode: at each stage the input layer and the chosen output
    blocks, their products or the reading of their weights, whichever costs more."""
    return stages * dim * hidden * max(4 * n, READ_COST * (1 + min(options, n)))


class _Grads:
    """What the uses of the big weights leave for :class:`_Products`'s backward, per option k:
    the rows ``(h, δ)`` of every stage's ``h @ M_k^T`` and the output product's ``(g_k, dy)``."""

    def __init__(self, options: int) -> None:
        self.stage_rows: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(options)]
        self.output: tuple[Tensor, Tensor] | None = None  # g (N, K, H), dy (N, D)


class _Products(torch.autograd.Function):
    """From ``w_in`` (H, D), ``blocks`` (K, D, H), ``biases`` (T, K, D) and ``beta`` (K, D):
    ``M_k = W_in W_k`` ``(K, H, H)`` (its uses record their rows instead of a gradient),
    ``c_{t,k} = W_in (β_k + b_{t,k})`` ``(T, K, H)`` and a 0-d token every use of the weights takes,
    so this backward runs once, after all of them, and writes each big weight gradient once:
    ``dM_k = Σ δ^T h``, ``dW_in = Σ_k dM_k W_k^T + ...``, ``dW_k = W_in^T dM_k + dy^T g_k``. With
    R_k < H/2 rows the products go through the rows (``δ^T (h W_k^T)``, ``(δ W_in)^T h``: 4·R_k·H·D
    flops, not 2·H·H·D)."""

    @staticmethod
    def forward(ctx: Any, grads: _Grads, w_in: Tensor, blocks: Tensor, biases: Tensor, beta: Tensor) -> Any:
        ctx.grads = grads
        ctx.save_for_backward(w_in, blocks, biases, beta)
        ctx.set_materialize_grads(False)
        (T, K, D), H = biases.shape, w_in.shape[0]
        m = w_in.new_empty(K, H, blocks.shape[2])  # (K, H, H)
        for k in range(K):
            torch.mm(w_in, blocks[k], out=m[k])
        c = (biases.view(T * K, D) @ w_in.t()).view(T, K, H) + beta @ w_in.t()  # (T, K, H)
        ctx.mark_non_differentiable(m)
        return m, c, w_in.new_zeros(())

    @staticmethod
    def backward(ctx: Any, _: Tensor | None, dc: Tensor | None, __: Tensor | None) -> tuple[Tensor | None, ...]:
        w_in, blocks, biases, beta = ctx.saved_tensors
        grads: _Grads = ctx.grads
        (T, K, D), H = biases.shape, w_in.shape[0]
        g_in, g_blocks = torch.zeros_like(w_in), torch.zeros_like(blocks)  # (H, D), (K, D, H)
        g_biases = g_beta = None
        if dc is not None:  # c = (b + β) W_in^T
            g_in.addmm_(dc.reshape(T * K, H).t(), biases.view(T * K, D)).addmm_(dc.sum(0).t(), beta)
            g_biases, g_beta = (dc.reshape(T * K, H) @ w_in).view(T, K, D), dc.sum(0) @ w_in
        for k, rows in enumerate(grads.stage_rows):
            if not rows:
                continue
            h, delta = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])  # (R_k, H) each
            if 2 * len(h) < H:  # through the rows
                g_in.addmm_(delta.t(), h @ blocks[k].t())  # (H, R) @ (R, D)
                g_blocks[k].addmm_((delta @ w_in).t(), h)  # (D, R) @ (R, H)
            else:
                dm = delta.t() @ h  # (H, H)
                g_in.addmm_(dm, blocks[k].t())
                g_blocks[k].addmm_(w_in.t(), dm)
        if grads.output is not None:  # u_T = base + Σ_k g_k W_k^T
            g, dy = grads.output
            for k in range(K):
                g_blocks[k].addmm_(dy.t(), g[:, k])  # (D, N) @ (N, H)
        for rows in grads.stage_rows:  # in place: a retained graph's next backward records into these lists
            rows.clear()
        grads.output = None
        return None, g_in, g_blocks, g_biases, g_beta


class _Apply(torch.autograd.Function):
    """``h @ M_k^T`` for rows ``h`` (R, H); ``M_k``'s gradient is left to the token's node."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, token: Tensor, m: Tensor, rows: list[tuple[Tensor, Tensor]]) -> Tensor:
        ctx.save_for_backward(h, m)
        ctx.rows = rows
        return h @ m.t()  # (R, H)

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor, Tensor, None, None]:
        h, m = ctx.saved_tensors
        ctx.rows.append((h, delta))
        return delta @ m, delta.new_zeros(()), None, None


class _BlockSum(torch.autograd.Function):
    """``base + Σ_k g[:, k] @ W_k^T`` for ``g`` (N, K, H), ``blocks`` (K, D, H), ``base`` (N, D):
    ``(N, D)``; the blocks' gradient is left to the token's node."""

    @staticmethod
    def forward(ctx: Any, g: Tensor, base: Tensor, token: Tensor, blocks: Tensor, grads: _Grads) -> Tensor:
        ctx.save_for_backward(g, blocks)
        ctx.grads = grads
        out = torch.addmm(base, g[:, 0], blocks[0].t())  # (N, D)
        for k in range(1, blocks.shape[0]):
            out.addmm_(g[:, k], blocks[k].t())
        return out

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        g, blocks = ctx.saved_tensors
        ctx.grads.output = (g, dy)
        g_g = torch.stack([dy @ blocks[k] for k in range(blocks.shape[0])], dim=1)  # (N, K, H)
        return g_g, dy, dy.new_zeros(()), None, None


def decode_hidden(
    codes: Tensor, groups: list[list[Tensor]], *, first: nn.Linear, rest: nn.Module, mid: nn.Module, out: nn.Linear,
    embedding: Tensor, biases: Tensor, scales: Tensor,
) -> Tensor:  # fmt: skip
    """``u_T`` ``(N, D)`` of ``codes`` (N, T) for the refiner whose input layer is ``first`` (Linear
    D->H) then ``rest``, whose hidden layers are ``mid`` and output layer ``out`` (Linear H->K·D);
    ``groups[t][k]`` are the members choosing option k at stage t; ``embedding`` (T, H),
    ``biases`` (T, K, D), ``scales`` (T,)."""
    N, T = codes.shape
    _, K, D = biases.shape
    H = first.weight.shape[0]
    blocks, beta = out.weight.view(K, D, H), out.bias.view(K, D)  # W_k, β_k
    grads = _Grads(K)
    M, c, token = _Products.apply(grads, first.weight, blocks, biases, beta)  # (K, H, H), (T, K, H), 0-d
    stage_rows = (torch.arange(T, device=codes.device) * K + codes).reshape(-1)  # (N·T,) rows of (T·K, ·)
    c_chosen = c.reshape(T * K, H).index_select(0, stage_rows).view(N, T, H)  # c_{t, z_t}
    e_t, sigma_t = embedding.unbind(0), scales.unbind(0)
    a = first.bias.expand(N, H)  # the pre-activation at u_0 = 0
    hs = []
    for t in range(T):
        h = mid(rest(a) + e_t[t]) + e_t[t]  # (N, H)
        hs.append(h)
        if t + 1 < T:  # u_T is read from the g_k, not from a
            mh = torch.zeros_like(h)
            for k, members in enumerate(groups[t]):
                if len(members):
                    rows = _Apply.apply(h.index_select(0, members), token, M[k], grads.stage_rows[k])
                    mh = mh.index_copy(0, members, rows)
            a = a + sigma_t[t] * (mh + c_chosen[:, t])  # (N, H)
    weights = F.one_hot(codes, K).to(scales.dtype) * scales[None, :, None]  # (N, T, K): σ_t at z_t
    g = torch.einsum("ntk,nth->nkh", weights, torch.stack(hs, dim=1))  # (N, K, H)
    base = torch.addmm(weights.sum(1) @ beta, weights.reshape(N, T * K), biases.view(T * K, D))  # (N, D)
    return _BlockSum.apply(g, base, token, blocks.detach(), grads)
