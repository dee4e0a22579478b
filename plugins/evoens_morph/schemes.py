"""How each widening scheme fills the new channels (producer rows, BN entries, consumer columns).

* R2WiderR (Painter 2019, §4.1 / App. C.1): producer [W; U; U], consumer [W', V, −V]; BN entries
  equal across halves (γ, β = means of the old ones, running stats 0/1). Old tensors untouched.
* random pad: as R2WiderR with consumer [W', V, +V] (the halves do not cancel): the baseline.
* NetMorph (Wei et al., ICML 2016, as in the R2R code): the new incoming consumer weights (or the
  new producer filters) are zero plus 1e-6 Gaussian noise, the other side free; which side is
  zero is chosen by :func:`evoens_morph.widen.netmorph_zero_side` unless given.
* Net2WiderNet (Chen, Goodfellow, Shlens, ICLR 2016): new channels copy random old channels g(j)
  (filters, bias, BN entries); consumer columns of a copied channel are divided by its count.
All tensors are seen as (out, in, kh, kw): Linear as 1x1, a Linear after a flatten as (out, C, H·W, 1).
"""

from __future__ import annotations

import torch
from torch import nn

from evoens_morph.init import InitScheme, draw, gaussian_noise, init_std

Insert = tuple[int, int, torch.Tensor | None]  # (position in the volume, n new channels, copied channels)


def insert_along(
    t: torch.Tensor, dim: int, inserts: list[tuple[int, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` with each block placed at its position along ``dim``; also where the old entries went."""
    pieces, positions, prev, shift = [], [], 0, 0
    for pos, block in sorted(inserts, key=lambda pb: pb[0]):
        pieces += [t.narrow(dim, prev, pos - prev), block]
        positions.append(torch.arange(prev, pos) + shift)
        shift += block.shape[dim]
        prev = pos
    pieces.append(t.narrow(dim, prev, t.shape[dim] - prev))
    positions.append(torch.arange(prev, t.shape[dim]) + shift)
    return torch.cat(pieces, dim), torch.cat(positions)


class Scheme:
    """R2WiderR; the other schemes override a step or two."""

    DEFAULT_NOISE = 0.0
    name = "r2r"
    even = True  # new channels come in identical L/R pairs
    skip_signs: tuple[int, int] | None = (1, -1)
    consumer_sign = -1.0

    def __init__(
        self, init: InitScheme = "match_std_exact", noise: float | None = None, generator: torch.Generator | None = None
    ) -> None:
        if noise is not None and noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.init, self.gen = init, generator
        self.noise = self.DEFAULT_NOISE if noise is None else float(noise)

    def exact_modes(self, has_bn: bool) -> tuple[str, ...]:
        return ("eval", "train")

    def _pair(self, shape: tuple[int, ...], like: torch.Tensor, sign: float = 1.0, dim: int = 0) -> torch.Tensor:
        half = list(shape)
        half[dim] //= 2
        u = draw(tuple(half), init_std(self.init, like), self.gen, like)
        return torch.cat([u, sign * u], dim)

    def producer(self, w: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, in, kh, kw) new filters and the copied channel indices (Net2Net) or None."""
        return self._pair((n, *w.shape[1:]), w), None

    def bias(self, b: torch.Tensor, n: int, src: torch.Tensor | None) -> torch.Tensor:
        return b.new_zeros(n)

    def per_channel(self, bn: nn.Module, n: int, src: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = {}
        for key in ("weight", "bias"):
            value = getattr(bn, key, None)
            if value is not None:
                out[key] = value.detach().mean().expand(n).clone()
        if getattr(bn, "running_mean", None) is not None:
            out["running_mean"] = bn.running_mean.new_zeros(n)
            out["running_var"] = bn.running_var.new_ones(n)
        return out

    def consumer(self, w: torch.Tensor, inserts: list[Insert]) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = [
            (pos, self._pair((w.shape[0], n, *w.shape[2:]), w, self.consumer_sign, dim=1)) for pos, n, _ in inserts
        ]
        return insert_along(w, 1, blocks)

    def add_producer(self, w: torch.Tensor, n: int, src: torch.Tensor | None) -> torch.Tensor:
        return self._pair((n, *w.shape[1:]), w)


class RandomPad(Scheme):
    name = "random_pad"
    skip_signs = (1, 1)
    consumer_sign = 1.0

    def exact_modes(self, has_bn: bool) -> tuple[str, ...]:
        return ()


class NetMorph(Scheme):
    name = "netmorph"
    even = False
    skip_signs = None
    DEFAULT_NOISE = 1e-6  # absolute std of the "zero" side, as in the R2R code

    def __init__(self, *args: object, zero_side: str = "consumer", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if zero_side not in ("consumer", "producer"):
            raise ValueError(f"zero_side must be 'consumer' or 'producer', got '{zero_side}'")
        self.zero_side = zero_side

    def exact_modes(self, has_bn: bool) -> tuple[str, ...]:
        if self.noise > 0:
            return ()  # near-exact only: the noise passes through (and train-mode BN scales it)
        # zero new filters + train-mode BN would renormalise them to O(1)
        return ("eval",) if self.zero_side == "producer" and has_bn else ("eval", "train")

    def _side(self, shape: tuple[int, ...], like: torch.Tensor, zero: bool) -> torch.Tensor:
        if zero:
            return gaussian_noise(shape, self.noise, self.gen, like)  # the zero side: 0 + N(0, noise²)
        return draw(shape, init_std(self.init, like), self.gen, like)

    def producer(self, w: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._side((n, *w.shape[1:]), w, self.zero_side == "producer"), None

    def per_channel(self, bn: nn.Module, n: int, src: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = super().per_channel(bn, n, src)
        if self.zero_side == "producer" and "bias" in out:
            out["bias"].zero_()  # so BN(≈0) ≈ 0 in eval mode
        return out

    def consumer(self, w: torch.Tensor, inserts: list[Insert]) -> tuple[torch.Tensor, torch.Tensor]:
        zero = self.zero_side == "consumer"
        return insert_along(w, 1, [(pos, self._side((w.shape[0], n, *w.shape[2:]), w, zero)) for pos, n, _ in inserts])

    def add_producer(self, w: torch.Tensor, n: int, src: torch.Tensor | None) -> torch.Tensor:
        return self._side((n, *w.shape[1:]), w, self.zero_side == "producer")


class Net2Net(Scheme):
    name = "net2net"
    even = False
    skip_signs = None

    def exact_modes(self, has_bn: bool) -> tuple[str, ...]:
        return () if self.noise > 0 else ("eval", "train")

    def producer(self, w: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        src = torch.randint(0, w.shape[0], (n,), generator=self.gen)
        rows = w.detach()[src.to(w.device)].clone()
        if self.noise > 0:  # symmetry breaking (spec pitfall 6: <= 5e-5 x std keeps it near-exact)
            rows += gaussian_noise(tuple(rows.shape), self.noise * float(w.detach().std()), self.gen, w)
        return rows, src

    def bias(self, b: torch.Tensor, n: int, src: torch.Tensor | None) -> torch.Tensor:
        return b.detach()[src.to(b.device)].clone()

    def per_channel(self, bn: nn.Module, n: int, src: torch.Tensor | None) -> dict[str, torch.Tensor]:
        keys = ("weight", "bias", "running_mean", "running_var")
        return {
            k: getattr(bn, k).detach()[src.to(getattr(bn, k).device)].clone()
            for k in keys
            if getattr(bn, k, None) is not None
        }

    def consumer(self, w: torch.Tensor, inserts: list[Insert]) -> tuple[torch.Tensor, torch.Tensor]:
        counts = torch.ones(w.shape[1], dtype=w.dtype, device=w.device)
        for _, _, src in inserts:
            counts.index_add_(0, src.to(w.device), torch.ones(len(src), dtype=w.dtype, device=w.device))
        scaled = w.detach() / counts.view(1, -1, *([1] * (w.dim() - 2)))  # (out, C, kh, kw)
        return insert_along(scaled, 1, [(pos, scaled[:, src.to(w.device)]) for pos, _, src in inserts])

    def add_producer(self, w: torch.Tensor, n: int, src: torch.Tensor | None) -> torch.Tensor:
        return w.detach()[src.to(w.device)].clone()


SCHEMES: dict[str, type[Scheme]] = {"r2r": Scheme, "random_pad": RandomPad, "netmorph": NetMorph, "net2net": Net2Net}
