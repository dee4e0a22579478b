"""``vq``: the vq-ensemble refiner, a generator that is an ensemble of K^T classifiers.

A. Nichol, ``unixpickle/vq-ensemble`` (2020), ``meta_models.py`` ``Refiner``; it descends from
VQ-DRAW (A. Nichol, "VQ-DRAW: A Sequential Discrete VAE", arXiv:2003.01599).

A code ``z ∈ {0..K-1}^T`` is decoded in T stages from ``u_0 = 0``: stage t proposes K refinements
of the current weights and the code picks one, ``u_{t+1} = u_t + σ_t · o_{t, z_t}(u_t)`` with

    mlp:   h = in(u_t) + e_t;  h = mid(h) + e_t;  o_{t,k} = out_k(h) + b_{t,k}
    bias:  o_{t,k} = b_{t,k}                     (the NO_NN ablation: u_T = Σ_t σ_t · b_{t, z_t})

``in`` is Linear(D, H)+ReLU+Linear(H, H)+ReLU, ``mid`` 2 (``mlp_large``: 4) Linear(H, H)+ReLU,
``out`` Linear(H, K·D). Only the chosen option's block of ``out`` is computed per member (the
original computes all K and indexes; same numbers, K times fewer output-layer FLOPs); the bias
variant allocates no MLP (the original kept an unused one). A decode of ``u_T`` runs in the
refiner's hidden space (:mod:`evoens_hypernet.fused`: the big weights enter K times instead of T·N
times) where that costs less than the stages (``path = "auto"``: from two members on at the seed's
sizes); the stage-by-stage path
(``"stages"``, always for ``return_sequence``) can recompute every stage in the backward pass
(``torch.utils.checkpoint``), so a decode keeps T inputs ``(N, D)`` instead of every stage's
activations. ``encode`` is VQ-DRAW's greedy encoder (argmin MSE per stage). Pure torch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from evoens_hypernet.deferred import DeferredWeights
from evoens_hypernet.fused import decode_hidden, hidden_cost, stages_cost
from evoens_hypernet.generator import Generator, MemoryEstimate
from evoens_hypernet.space import WeightSpace

__all__ = ["PATHS", "REFINERS", "VQRefiner", "uses_hidden"]

REFINERS = ("mlp", "mlp_large", "bias")
PATHS = ("auto", "hidden", "stages")
FLOAT = 4  # bytes


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class VQRefiner(Generator):
    """The refiner ``R(t, u)`` with T stages of K options over a :class:`WeightSpace` of D weights."""

    def __init__(
        self, space: WeightSpace, *, stages: int = 40, options: int = 4, hidden: int = 512, refiner: str = "mlp",
        output_scale: float = 0.1, use_checkpoint: bool = False, deferred_grads: bool = True, path: str = "auto",
        **kw: object,
    ) -> None:  # fmt: skip
        super().__init__(space, **kw)  # type: ignore[arg-type]
        if refiner not in REFINERS:
            raise ValueError(f"refiner must be one of {', '.join(REFINERS)}, got {refiner!r}")
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
        if min(stages, options, hidden) < 1:
            raise ValueError(f"stages, options and hidden must be >= 1, got {stages}, {options}, {hidden}")
        D, H, K, T = space.dim, hidden, options, stages
        self.stages, self.options, self.hidden, self.refiner = T, K, H, refiner
        self.use_checkpoint, self.deferred_grads, self.path = use_checkpoint, deferred_grads, path
        device = space.scales.device
        self.biases = nn.Parameter(torch.randn(T, K, D, device=device))  # (T, K, D)
        self.output_scales = nn.Parameter(torch.full((T,), float(output_scale), device=device))  # (T,)
        if refiner != "bias":
            self.stage_embedding = nn.Parameter(torch.randn(T, H, device=device))  # (T, H)
            self.in_layer = _mlp([D, H, H]).to(device)
            self.mid_layer = _mlp([H] * (5 if refiner == "mlp_large" else 3)).to(device)
            self.out_layer = nn.Linear(H, K * D, device=device)  # weight (K·D, H)

    # ------------------------------------------------------------------ codes
    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniform i.i.d. stage choices ``(n, T)`` (int64), drawn on the CPU (the same on any device)."""
        return torch.randint(self.options, (n, self.stages), generator=generator).to(self.device)

    def _check_codes(self, codes: Tensor) -> None:
        if codes.dim() != 2 or codes.shape[1] != self.stages or codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be integer (N, T={self.stages}), got {tuple(codes.shape)} {codes.dtype}")

    # ------------------------------------------------------------------ one stage
    def _hidden(self, e: Tensor, u: Tensor, token: Tensor | None = None,
                deferred: DeferredWeights | None = None) -> Tensor:  # fmt: skip
        """The refiner's hidden state for rows ``u`` (N, D) at the stage of embedding ``e`` (H,): ``(N, H)``."""
        if deferred is None:
            h = self.in_layer(u) + e  # (N, H)
        else:
            h = self.in_layer[1:](deferred.linear(token, "in", u)) + e  # (N, H), dW deferred
        return self.mid_layer(h) + e  # (N, H)

    def proposals(self, t: int, u: Tensor) -> Tensor:
        """All K proposals of stage ``t`` for rows ``u`` (N, D): ``(N, K, D)`` (the original's R(t, u))."""
        N, D, K = u.shape[0], self.space.dim, self.options
        if self.refiner == "bias":
            o = self.biases[t].expand(N, K, D)  # (N, K, D)
        else:
            o = self.out_layer(self._hidden(self.stage_embedding[t], u)).view(N, K, D) + self.biases[t]  # (N, K, D)
        return self.output_scales[t] * o + u[:, None, :]

    def step(self, u: Tensor, rows: list[Tensor], b: Tensor, e: Tensor, sigma: Tensor, token: Tensor | None = None,
             deferred: DeferredWeights | None = None) -> Tensor:  # fmt: skip
        """One stage of the MLP refiner: ``rows[k]`` are the members choosing option k, ``b = b_{t, z}``
        (N, D) their biases, ``e`` (H,) the stage's embedding and ``sigma`` () its scale:
        ``u + σ_t · o_{t, z}(u)`` ``(N, D)``, computing only the chosen blocks of the output layer."""
        h = self._hidden(e, u, token, deferred)  # (N, H)
        D = self.space.dim
        o = torch.zeros_like(u)  # (N, D)
        for k, members in enumerate(rows):
            if not len(members):
                continue
            block = slice(k * D, (k + 1) * D)
            if deferred is None:
                out = F.linear(h.index_select(0, members), self.out_layer.weight[block], self.out_layer.bias[block])
            else:
                out = deferred.linear(token, "out", h.index_select(0, members), block)  # (n_k, D)
            o = o.index_copy(0, members, out)
        return u + sigma * (o + b)

    # ------------------------------------------------------------------ decode / encode
    def decode(self, codes: Tensor, *, return_sequence: bool = False) -> Tensor:
        """``u_T`` ``(N, D)`` of ``codes`` (N, T); ``return_sequence``: ``[u_1 .. u_T]`` ``(N, T, D)``."""
        self._check_codes(codes)
        codes = codes.to(self.device)
        N, T, K, D = codes.shape[0], self.stages, self.options, self.space.dim
        if not return_sequence and self.hidden_path(N):
            return decode_hidden(codes, self._option_rows(codes), first=self.in_layer[0], rest=self.in_layer[1:],
                                 mid=self.mid_layer, out=self.out_layer, embedding=self.stage_embedding,
                                 biases=self.biases, scales=self.output_scales)  # fmt: skip
        if self.refiner == "bias" and not return_sequence:  # u_T = Σ_t σ_t b_{t, z_t}: one (N, T·K) x (T·K, D) product
            weights = F.one_hot(codes, K).to(self.biases.dtype) * self.output_scales[None, :, None]  # (N, T, K)
            return weights.view(N, T * K) @ self.biases.view(T * K, D)
        stage_rows = torch.arange(T, device=self.device) * K + codes  # (N, T) rows of biases (T*K, D)
        chosen = self.biases.view(T * K, D).index_select(0, stage_rows.reshape(-1)).view(N, T, D)  # b_{t, z_t}
        if self.refiner == "bias":  # the closed form's sequence: u_t = Σ_{s<t} σ_s b_{s, z_s}
            return (self.output_scales[None, :, None] * chosen).cumsum(1)  # (N, T, D)
        # Per-stage slices through unbind: ONE gradient buffer for all stages, not a full-size one each.
        b_t, e_t, sigma_t = chosen.unbind(1), self.stage_embedding.unbind(0), self.output_scales.unbind(0)
        u = torch.zeros(N, D, device=self.device, dtype=self.biases.dtype)  # (N, D)
        grad = torch.is_grad_enabled()
        deferred = self._deferred() if grad and self.deferred_grads else None
        token = deferred.token() if deferred is not None else None
        groups = self._option_rows(codes)
        sequence = []
        for t in range(T):
            args = (u, groups[t], b_t[t], e_t[t], sigma_t[t], token, deferred)
            u = checkpoint(self.step, *args, use_reentrant=False) if grad and self.use_checkpoint else self.step(*args)
            if return_sequence:
                sequence.append(u)
        return torch.stack(sequence, dim=1) if return_sequence else u

    def hidden_path(self, n: int) -> bool:
        """Whether a decode of ``u_T`` for ``n`` members runs in the hidden space (:func:`uses_hidden`)."""
        return uses_hidden(self.path, self.refiner, n, self.stages, self.options, self.hidden, self.space.dim)

    def _option_rows(self, codes: Tensor) -> list[list[Tensor]]:
        """``[t][k]``: the members choosing option k at stage t, grouped on the host from ONE copy of
        the codes (not a device sync per stage and option)."""
        host = codes.cpu()  # (N, T)
        return [[(host[:, t] == k).nonzero().squeeze(1).to(self.device, non_blocking=True)
                 for k in range(self.options)] for t in range(self.stages)]  # fmt: skip

    def _deferred(self) -> DeferredWeights:
        first = self.in_layer[0]
        return DeferredWeights({"in": (first.weight, first.bias), "out": (self.out_layer.weight, self.out_layer.bias)})

    @torch.no_grad()
    def encode(self, targets: Tensor) -> Tensor:
        """VQ-DRAW's greedy encoder: at each stage the option closest (MSE) to ``targets`` (N, D) -> ``(N, T)``."""
        u = torch.zeros_like(targets)
        codes = []
        for t in range(self.stages):
            props = self.proposals(t, u)  # (N, K, D)
            k = (props - targets[:, None, :]).pow(2).sum(-1).argmin(-1)  # (N,)
            codes.append(k)
            u = props[torch.arange(len(k), device=k.device), k]  # (N, D)
        return torch.stack(codes, dim=1)

    # ------------------------------------------------------------------ memory
    @staticmethod
    def estimate(dim: int, *, stages: int = 40, options: int = 4, hidden: int = 512, refiner: str = "mlp",
                 batch: int = 4, use_checkpoint: bool = False, path: str = "auto") -> MemoryEstimate:  # fmt: skip
        """Memory of a refiner over D = ``dim`` weights, before building it (float32)."""
        D, T, K, H = dim, stages, options, hidden
        params = T * K * D + T
        if refiner != "bias":
            mids = 4 if refiner == "mlp_large" else 2
            params += T * H + (D * H + H) + (H * H + H) * (1 + mids) + (H * K * D + K * D)
        if uses_hidden(path, refiner, batch, T, K, H, D):
            # every stage's (N, H) activations, the (N, D) base and output, the big weights' transient gradients
            kept = 4 * (4 + mids) * T * batch * H + 2 * batch * D + H * (K + 1) * D
            return MemoryEstimate(params, 4 * FLOAT * params, FLOAT * kept)
        per_stage = batch * D * 4  # input, chosen block, bias row, output
        kept = T * batch * D + per_stage if use_checkpoint and refiner != "bias" else T * per_stage
        if refiner != "bias":
            kept += 2 * T * batch * D  # the deferred weight gradients' rows (inputs of 'in', deltas of 'out')
        return MemoryEstimate(params, 4 * FLOAT * params, FLOAT * kept)

    def memory_estimate(self, batch: int) -> MemoryEstimate:
        return self.estimate(self.space.dim, stages=self.stages, options=self.options, hidden=self.hidden,
                             refiner=self.refiner, batch=batch, use_checkpoint=self.use_checkpoint,
                             path=self.path)  # fmt: skip


def uses_hidden(path: str, refiner: str, n: int, stages: int, options: int, hidden: int, dim: int) -> bool:
    """Whether a decode of ``u_T`` for ``n`` members runs in the hidden space (:mod:`evoens_hypernet.fused`):
    ``path = "hidden"``, or ``"auto"`` where it costs less than the stages (``fused.stages_cost``)."""
    if refiner == "bias" or path == "stages":
        return False
    sizes = (n, stages, options, hidden, dim)
    return path == "hidden" or hidden_cost(*sizes) <= stages_cost(*sizes)
