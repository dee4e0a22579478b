"""Free-weight initialisation: the schemes' std, uniform draws with that std (spec §2.3: U(-sqrt(3) s,
sqrt(3) s)) and Gaussian symmetry-breaking noise."""

from __future__ import annotations

import math

import pytest
import torch
from evoens_morph.init import draw, gaussian_noise, init_std


def test_scheme_stds() -> None:
    ref = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.2
    s = float(ref.std())
    assert init_std("match_std_exact", ref) == pytest.approx(s)
    assert init_std("match_std", ref) == pytest.approx(0.1 * s)
    assert init_std("he", ref) == pytest.approx(math.sqrt(2.0 / 36))
    assert init_std("zero", ref) == 0.0 and init_std(0.05, ref) == 0.05
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        init_std("xavier", ref)


def test_free_weights_are_uniform_with_the_requested_std() -> None:
    like = torch.zeros(1, dtype=torch.float32)
    w = draw((200_000,), 0.3, torch.Generator().manual_seed(1), like)
    assert w.dtype == torch.float32
    assert float(w.std()) == pytest.approx(0.3, rel=0.01)
    bound = math.sqrt(3.0) * 0.3
    assert float(w.abs().max()) <= bound + 1e-6 and float(w.abs().max()) > 0.99 * bound  # uniform, not Gaussian


def test_noise_is_gaussian_and_reproducible() -> None:
    like = torch.zeros(1, dtype=torch.float64)
    n = gaussian_noise((200_000,), 1e-6, torch.Generator().manual_seed(2), like)
    assert float(n.std()) == pytest.approx(1e-6, rel=0.01)
    assert float(n.abs().max()) > 3.5e-6  # Gaussian tails beyond the uniform's sqrt(3) bound
    again = gaussian_noise((200_000,), 1e-6, torch.Generator().manual_seed(2), like)
    assert torch.equal(n, again)
