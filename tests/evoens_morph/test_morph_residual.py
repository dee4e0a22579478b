"""Slice maps: the bookkeeping of R2R residual widening (R2R paper §4.2, App. C.2)."""

from __future__ import annotations

import pytest
import torch
from evoens_morph import families
from evoens_morph.residual import SliceMap
from evoens_morph.widen import widen
from torch import nn

TOL = 1e-5


def _reference(skip: SliceMap, res: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(res.shape[0], skip.out_channels, *res.shape[2:])
    for a, b, k, c in skip.entries:
        for i in range(b - a):
            out[:, c + i] += k * res[:, a + i]
    return out


def _map() -> SliceMap:
    skip = SliceMap(6, 10)
    skip.entries = [(0, 6, 1, 0), (6, 8, 1, 6), (8, 10, -1, 6)]
    return skip


def test_forward_matches_the_entry_by_entry_definition() -> None:
    skip, res = _map(), torch.randn(3, 10, 4, 4)
    torch.testing.assert_close(skip(res), _reference(skip, res), rtol=0, atol=0)
    assert skip.free_dest() == 8


@pytest.mark.parametrize("pos", [0, 3, 6, 7, 10])
def test_source_insertion_keeps_the_map_of_the_old_channels(pos: int) -> None:
    skip, res = _map(), torch.randn(2, 10, 3, 3)
    before = skip(res)
    skip.insert_source(pos, 4)
    junk = torch.randn(2, 4, 3, 3)
    widened = torch.cat([res[:, :pos], junk, res[:, pos:]], 1)  # (B, 14, 3, 3)
    torch.testing.assert_close(skip(widened), before, rtol=0, atol=0)


@pytest.mark.parametrize("pos", [0, 3, 6, 8, 10])
def test_dest_insertion_leaves_the_new_channels_zero(pos: int) -> None:
    skip, res = _map(), torch.randn(2, 10, 3, 3)
    before = skip(res)
    skip.insert_dest(pos, 3)
    after = skip(res)
    assert after.shape[1] == 13 and torch.equal(after[:, pos : pos + 3], torch.zeros_like(after[:, :3]))
    torch.testing.assert_close(torch.cat([after[:, :pos], after[:, pos + 3 :]], 1), before, rtol=0, atol=0)


def test_map_pair_needs_room_in_the_destination() -> None:
    skip = SliceMap(4, 4)
    assert not skip.map_pair(4, 2, (1, -1)) and skip.entries == [(0, 4, 1, 0)]
    skip.insert_dest(4, 2)
    assert skip.map_pair(4, 2, (1, -1))
    assert skip.entries[-2:] == [(4, 6, 1, 4), (6, 8, -1, 4)]


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return families.resnet()


def _diffs(a: nn.Module, b: nn.Module) -> tuple[float, float]:
    x = torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(9))
    out = []
    for train in (False, True):
        with torch.no_grad():
            out.append(float((a.train(train)(x) - b.train(train)(x)).abs().max()))
    return out[0], out[1]


def test_repeated_widening_of_a_residual_source_with_and_without_destination_room() -> None:
    model, g = _resnet(), torch.Generator().manual_seed(1)
    cur = model
    for _ in range(3):  # block 3's identity skip reads the stem volume '0'; its destination is full
        cur, _ = widen(cur, "0", "r2r", amount=2, generator=g)
    assert cur[3].skip.entries == [(0, 8, 1, 0)]
    cur, _ = widen(cur, "3.conv2", "r2r", amount=4, generator=g)  # destination gets room ...
    cur, _ = widen(cur, "0", "r2r", amount=4, generator=g)  # ... so the new L/R halves are mapped +1/-1
    assert cur[3].skip.entries == [(0, 8, 1, 0), (14, 16, 1, 8), (16, 18, -1, 8)]
    cur, _ = widen(cur, "0", "r2r", amount=4, generator=g)
    assert cur[3].skip.entries[-2:] == [(18, 20, 1, 10), (20, 22, -1, 10)]
    assert max(_diffs(model, cur)) <= TOL


def test_zero_pad_skip_maps_new_halves_onto_the_padded_channels() -> None:
    model = _resnet()  # block 4: stride-2 zero-pad skip from 8 to 16 channels
    new, report = widen(model, "3.conv2", "r2r", amount=4, generator=torch.Generator().manual_seed(2))
    assert new[4].skip.entries == [(0, 8, 1, 0), (8, 10, 1, 8), (10, 12, -1, 8)]
    assert new[3].skip.out_channels == 12
    assert max(_diffs(model, new)) <= TOL


def test_projection_skip_consumes_the_source_and_grows_with_the_destination() -> None:
    model, g = _resnet(), torch.Generator().manual_seed(3)
    new, report = widen(model, "4.conv2", "r2r", amount=4, generator=g)  # source of block 5's projection
    assert new[5].proj[0].in_channels == 20 and "5.proj.0.weight" in report.widened
    new, _ = widen(new, "5.conv2", "r2r", amount=6, generator=g)  # destination of the projection skip
    assert new[5].skip.out_channels == 30 and new[5].proj[0].out_channels == 24
    assert max(_diffs(model, new)) <= TOL


def test_random_pad_on_a_residual_source_is_not_preserving() -> None:
    model = _resnet()
    new, _ = widen(model, "3.conv2", "random_pad", amount=4, generator=torch.Generator().manual_seed(4))
    assert new[4].skip.entries[-2:] == [(8, 10, 1, 8), (10, 12, 1, 8)]
    assert min(_diffs(model, new)) > 100 * TOL


def test_the_map_travels_in_the_state_dict() -> None:
    model = _resnet()
    wide, _ = widen(model, "3.conv2", "r2r", amount=4, generator=torch.Generator().manual_seed(5))
    copy_ = widen(model, "3.conv2", "r2r", amount=4, generator=torch.Generator().manual_seed(6))[0]
    copy_[4].skip.entries = [(0, 8, 1, 0)]  # a different map, same shapes
    copy_.load_state_dict(wide.state_dict())
    assert copy_[4].skip.entries == wide[4].skip.entries and max(_diffs(wide, copy_)) == 0.0
