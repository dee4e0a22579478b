"""Slice maps: residual connections that survive widening of their source and destination.

R2R paper §4.2 / App. C.2 (Painter 2019): when the skip source x^(ℓ) is widened to
[x; x_L; x_R], the skip becomes r(x) + r_L(x_L) − r_R(x_R) with r_L ≡ r_R at init. As data: a
list of entries (a, b, k, c) meaning ``out[:, c:c+b-a] += k * res[:, a:b]``; old slices map with
k=+1 onto themselves, the L half of a widened slice with k=+1 and the R half with k=−1 onto the
SAME new output channels. A plain identity skip is one entry; a zero-pad skip maps C_in channels
into the first C_in of C_out; a 1x1 projection is a conv in front of an identity map.
"""

from __future__ import annotations

import torch
from torch import nn

Entry = tuple[int, int, int, int]  # (src_start, src_end, sign, dst_start)


class SliceMap(nn.Module):
    """``out = Σ_entries k · res[:, a:b]`` placed at ``out[:, c:...]``, with ``out_channels`` channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if out_channels < 1 or in_channels < 1:
            raise ValueError("SliceMap needs >= 1 input and output channel")
        self.out_channels = out_channels
        self.stride = stride
        self.entries: list[Entry] = [(0, min(in_channels, out_channels), 1, 0)]

    def forward(self, res: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            res = res[:, :, :: self.stride, :: self.stride]  # zero-pad shortcut "option A"
        out = res.new_zeros((res.shape[0], self.out_channels, *res.shape[2:]))  # (B, C_out, ...)
        for a, b, k, c in self.entries:
            out[:, c : c + b - a] += k * res[:, a:b]
        return out

    def get_extra_state(self) -> torch.Tensor:
        # the map is part of the function: keep it in state dicts (checkpoints of widened nets), as a
        # tensor so state-dict code that clones/compares values keeps working; row 0 = (C_out, stride)
        return torch.tensor([[self.out_channels, self.stride, 0, 0], *self.entries], dtype=torch.long)

    def set_extra_state(self, state: torch.Tensor) -> None:
        rows = state.tolist()
        self.out_channels, self.stride = int(rows[0][0]), int(rows[0][1])
        self.entries = [(a, b, k, c) for a, b, k, c in rows[1:]]

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}, entries={self.entries}"

    def insert_source(self, pos: int, n: int) -> None:
        """``n`` channels were inserted into the source at ``pos``: shift/split entries."""
        self.entries = [e for entry in self.entries for e in _shift(entry, pos, n, src=True)]

    def insert_dest(self, pos: int, n: int) -> None:
        """``n`` channels were inserted into the destination at ``pos``."""
        self.entries = [e for entry in self.entries for e in _shift(entry, pos, n, src=False)]
        self.out_channels += n

    def free_dest(self) -> int:
        """First destination channel no entry writes to (new channels go there)."""
        return max((c + b - a for a, b, _, c in self.entries), default=0)

    def map_pair(self, pos: int, half: int, signs: tuple[int, int]) -> bool:
        """Map source halves [pos, pos+half) and [pos+half, pos+2·half) onto the same free
        destination channels with ``signs``; False (nothing mapped) when the destination has no room."""
        c0 = self.free_dest()
        if c0 + half > self.out_channels:
            return False
        self.entries += [(pos, pos + half, signs[0], c0), (pos + half, pos + 2 * half, signs[1], c0)]
        return True


def _shift(entry: Entry, pos: int, n: int, *, src: bool) -> list[Entry]:
    a, b, k, c = entry
    lo, hi = (a, b) if src else (c, c + b - a)
    if hi <= pos:
        return [entry]
    if lo >= pos:
        return [(a + n, b + n, k, c)] if src else [(a, b, k, c + n)]
    cut = pos - lo  # the insertion falls inside this entry: split it
    if src:
        return [(a, a + cut, k, c), (a + cut + n, b + n, k, c + cut)]
    return [(a, a + cut, k, c), (a + cut, b, k, c + cut + n)]
