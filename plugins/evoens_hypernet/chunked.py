"""``chunked``: a plain hypernetwork whose size does not grow as K·D·H.

Ha, Dai, Le, "HyperNetworks", ICLR 2017; the chunked output head of von Oswald, Henning, Grewe,
Sacramento, "Continual learning with hypernetworks", ICLR 2020.

A member's code is a noise vector ``z ~ N(0, I_E)`` (``embedding = "noise"``: infinitely many
members) or the index of one of M learned embeddings (``"learned"``: M members). The D weights are
cut into ``ceil(D / C)`` chunks of C; chunk c of member n is ``head([trunk(z_n), e_c])`` with a
learned chunk embedding ``e_c``, so the generator has ``E·H + n_chunks·E_c + (H + E_c)·H_h + H_h·C``
parameters whatever the target's size (the seed's CNN: 0.29 M against the vq refiner's 164.5 M).
The output gain is set at construction so that the initial members have ``u`` of unit variance,
the sensible initialisation of the normalized space. Pure torch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from evoens_hypernet.generator import Generator, MemoryEstimate
from evoens_hypernet.space import WeightSpace

__all__ = ["EMBEDDINGS", "ChunkedHypernet"]

EMBEDDINGS = ("noise", "learned")
FLOAT = 4


class ChunkedHypernet(Generator):
    """Codes (noise ``(N, E)`` or member indices ``(N,)``) -> ``u`` ``(N, D)`` chunk by chunk."""

    def __init__(
        self, space: WeightSpace, *, noise_dim: int = 32, hidden: int = 128, chunk: int = 2048,
        chunk_embedding: int = 32, embedding: str = "noise", members: int = 16, **kw: object,
    ) -> None:  # fmt: skip
        super().__init__(space, **kw)  # type: ignore[arg-type]
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}, got {embedding!r}")
        if min(noise_dim, hidden, chunk, chunk_embedding, members) < 1:
            raise ValueError("noise_dim, hidden, chunk, chunk_embedding and members must be >= 1")
        device = space.scales.device
        self.noise_dim, self.hidden, self.chunk, self.embedding, self.members_count = (
            noise_dim, hidden, chunk, embedding, members)  # fmt: skip
        self.n_chunks = math.ceil(space.dim / chunk)
        if embedding == "learned":
            self.table = nn.Parameter(torch.randn(members, noise_dim, device=device))  # (M, E)
        self.trunk = nn.Sequential(nn.Linear(noise_dim, hidden), nn.ReLU()).to(device)
        self.chunk_embeddings = nn.Parameter(torch.randn(self.n_chunks, chunk_embedding, device=device))  # (n_c, E_c)
        self.head = nn.Sequential(
            nn.Linear(hidden + chunk_embedding, hidden), nn.ReLU(), nn.Linear(hidden, chunk)
        ).to(device)  # fmt: skip
        self.gain = nn.Parameter(torch.ones((), device=device))
        with torch.no_grad():  # unit variance of the initial members' u
            probe = self.decode(self.sample_codes(8, torch.Generator().manual_seed(0)))
            self.gain.div_(probe.std().clamp_min(1e-6))

    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self.embedding == "learned":
            return torch.randint(self.members_count, (n,), generator=generator).to(self.device)  # (n,)
        return torch.randn(n, self.noise_dim, generator=generator).to(self.device)  # (n, E)

    def decode(self, codes: Tensor) -> Tensor:
        z = self.table.index_select(0, codes.to(self.device)) if self.embedding == "learned" else codes  # (N, E)
        if z.dim() != 2 or z.shape[1] != self.noise_dim:
            want = "(N,) member indices" if self.embedding == "learned" else f"(N, {self.noise_dim}) noise"
            raise ValueError(f"codes must be {want}, got {tuple(codes.shape)}")
        N = z.shape[0]
        h = self.trunk(z)  # (N, H)
        both = torch.cat([
            h[:, None, :].expand(N, self.n_chunks, self.hidden),
            self.chunk_embeddings[None].expand(N, -1, -1),
        ], dim=-1)  # (N, n_c, H + E_c)  # fmt: skip
        out = self.head(both).reshape(N, self.n_chunks * self.chunk)  # (N, n_c * C)
        return self.gain * out[:, : self.space.dim]  # (N, D)

    @staticmethod
    def estimate(dim: int, *, noise_dim: int = 32, hidden: int = 128, chunk: int = 2048, chunk_embedding: int = 32,
                 embedding: str = "noise", members: int = 16, batch: int = 4) -> MemoryEstimate:  # fmt: skip
        n_chunks = math.ceil(dim / chunk)
        params = (noise_dim * hidden + hidden + n_chunks * chunk_embedding + (hidden + chunk_embedding) * hidden
                  + hidden + hidden * chunk + chunk + 1 + (members * noise_dim if embedding == "learned" else 0))
        kept = batch * n_chunks * (2 * (hidden + chunk_embedding) + 2 * hidden + chunk)
        return MemoryEstimate(params, 4 * FLOAT * params, FLOAT * kept)

    def memory_estimate(self, batch: int) -> MemoryEstimate:
        return self.estimate(self.space.dim, noise_dim=self.noise_dim, hidden=self.hidden, chunk=self.chunk,
                             chunk_embedding=self.chunk_embeddings.shape[1], embedding=self.embedding,
                             members=self.members_count, batch=batch)  # fmt: skip
