"""Shifted test sets: every corruption is seeded and chunk-independent, keeps labels, shape, dtype and
range, grows with severity, and the geometric ones are exact at their edge cases (0 degrees, 90
degrees, whole-pixel shifts); OOD specs parse and CIFAR-10.1 is read locally, never downloaded."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from evoens_ensemble import shift as s

from evoens.datasets import DataError, DataSplits, Split, load_digits

RANDOM = ("rotate", "translate", "shot_noise", "fog")


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_digits(seed=0, val_fraction=0.1, test_fraction=0.2)  # flat (N, 64) 8x8 in [0, 1]


def _colour(x: torch.Tensor) -> torch.Tensor:
    """Flat 8x8 digits as (N, 3, 16, 16) colour images (each channel scaled differently)."""
    up = F.interpolate(x.reshape(-1, 1, 8, 8), size=(16, 16), mode="bilinear", align_corners=False)
    return up * torch.tensor([1.0, 0.7, 0.4]).view(1, 3, 1, 1)


@pytest.mark.parametrize("name", s.CORRUPTIONS)
def test_seeded_and_independent_of_chunking(digits: DataSplits, name: str) -> None:
    x = digits.test.x[:60]
    whole = s.corrupt(x, name, 3, seed=7)
    assert torch.equal(whole, s.corrupt(x, name, 3, seed=7))
    assert torch.equal(torch.cat([s.corrupt(x[:25], name, 3, 7), s.corrupt(x[25:], name, 3, 7, start=25)]), whole)
    split = Split(x, digits.test.y[:60])
    assert torch.equal(s.shifted_split(split, name, 3, seed=7, chunk=11).x, whole)
    if name in RANDOM:
        assert not torch.equal(s.corrupt(x, name, 3, seed=8), whole)


@pytest.mark.parametrize("name", s.CORRUPTIONS)
def test_labels_shape_dtype_and_range_are_kept(digits: DataSplits, name: str) -> None:
    shifted = s.shifted_split(digits.test, name, 4, seed=0)
    assert shifted.y is digits.test.y and len(shifted) == len(digits.test)
    assert shifted.x.shape == digits.test.x.shape and shifted.x.dtype == torch.float32
    assert float(shifted.x.min()) >= 0 and float(shifted.x.max()) <= 1
    colour = _colour(digits.test.x[:20]).double() * 2 - 1  # (20, 3, 16, 16) float64 in [-1, 1]
    out = s.corrupt(colour, name, 4, seed=0, value_range=(-1.0, 1.0))
    assert out.shape == colour.shape and out.dtype == torch.float64
    assert float(out.min()) >= -1 and float(out.max()) <= 1


@pytest.mark.parametrize("name", s.CORRUPTIONS)
def test_the_change_grows_with_severity(digits: DataSplits, name: str) -> None:
    for x in (digits.test.x, _colour(digits.test.x[:100])):
        change = [float((s.corrupt(x, name, k, seed=0) - x).abs().mean()) for k in range(6)]
        assert change[0] == 0.0
        assert all(a < b for a, b in zip(change, change[1:])), change


def test_severity_zero_is_a_copy(digits: DataSplits) -> None:
    x = digits.test.x[:5]
    out = s.corrupt(x, "fog", 0, seed=1)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_rotation_edge_cases() -> None:
    x = torch.rand(4, 2, 9, 9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s.rotate(x, torch.zeros(4)), x, atol=1e-6)
    quarter = torch.rot90(x, 1, (2, 3))  # counter-clockwise on screen
    assert torch.allclose(s.rotate(x, torch.full((4,), 90.0)), quarter, atol=1e-6)
    wide = torch.rand(3, 1, 6, 10)
    assert torch.allclose(s.rotate(wide, torch.full((3,), 180.0)), torch.rot90(wide, 2, (2, 3)), atol=1e-6)


def test_whole_pixel_translation_shifts_and_fills_with_zero() -> None:
    x = torch.rand(2, 1, 8, 8) + 0.1
    out = s.translate(x, torch.tensor([[2.0, -1.0], [0.0, 3.0]]))
    assert torch.allclose(out[0, :, :-1, 2:], x[0, :, 1:, :-2], atol=1e-6)
    assert float(out[0, :, :, :2].abs().max()) < 1e-6 and float(out[0, :, -1].abs().max()) < 1e-6
    assert torch.allclose(out[1, :, 3:], x[1, :, :-3], atol=1e-6)


def test_morphology_and_blur_properties(digits: DataSplits) -> None:
    x = digits.test.x[:50]
    thick, thin = s.corrupt(x, "thicken", 2), s.corrupt(x, "thin", 2)
    assert bool((thick >= x).all()) and bool((thin <= x).all())
    flat = torch.full((2, 3, 10, 10), 0.3)
    assert torch.allclose(s.blur(flat, 1.5), flat, atol=1e-6)
    assert torch.allclose(s.morph(flat, 2.0, dilate=False), flat)  # a neutral border erodes nothing


def test_bad_inputs_raise(digits: DataSplits) -> None:
    x = digits.test.x[:3]
    with pytest.raises(DataError, match="did you mean 'rotate'"):
        s.corrupt(x, "rotation", 2)
    for severity in (6, -1, 2.0):
        with pytest.raises(DataError, match="severity"):
            s.corrupt(x, "blur", severity)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="not images"):
        s.corrupt(torch.rand(3, 10), "blur", 1)
    with pytest.raises(DataError, match="floating point"):
        s.corrupt((x * 16).to(torch.uint8), "blur", 1)


def test_parse_ood() -> None:
    assert s.parse_ood("rotate:3") == s.OODSpec("rotate", 3)
    assert s.parse_ood("cifar10_1") == s.OODSpec("cifar10_1", version="v6")
    assert s.parse_ood("cifar10.1:v4") == s.OODSpec("cifar10_1", version="v4")
    with pytest.raises(DataError, match="severity 1..5 explicitly"):
        s.parse_ood("rotate")
    with pytest.raises(DataError, match="severity 1..5 explicitly"):
        s.parse_ood("fog:9")
    with pytest.raises(DataError, match="did you mean 'shot_noise'"):
        s.parse_ood("shotnoise:2")


def test_ood_split_of_a_corruption(digits: DataSplits) -> None:
    ood = s.ood_split(digits, "fog:2", seed=5)
    assert torch.equal(ood.x, s.shifted_split(digits.test, "fog", 2, seed=5).x) and ood.y is digits.test.y
    assert torch.equal(s.ood_split(digits, "blur:1", part="val").x, s.corrupt(digits.val.x, "blur", 1))


def _cifar_like(n: int = 6) -> DataSplits:
    part = Split(torch.rand(n, 3, 32, 32), torch.arange(n) % 10)
    return DataSplits("cifar10", part, part, part, num_classes=10, input_shape=(3, 32, 32))


def _fake_cifar10(root: Path) -> None:
    """Tiny CIFAR-10 python batches (4 images each) under root/cifar10/cifar-10-batches-py/."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))


def test_cifar10_1_is_read_from_the_data_dir(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    with pytest.raises(DataError, match="cifar10.1_v6_data.npy not found"):
        s.ood_split(_cifar_like(), "cifar10_1", data_dir=tmp_path)
    folder = tmp_path / "cifar10.1"
    folder.mkdir()
    images = np.random.default_rng(1).integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
    np.save(folder / "cifar10.1_v6_data.npy", images)
    np.save(folder / "cifar10.1_v6_labels.npy", np.arange(2000) % 10)
    ood = s.ood_split(_cifar_like(), "cifar10_1", data_dir=tmp_path)
    assert ood.x.shape == (2000, 3, 32, 32) and torch.equal(ood.y, torch.arange(2000) % 10)
    assert torch.equal(ood.x[0], torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255)


def test_cifar10_1_needs_its_files_and_a_cifar_shaped_dataset(tmp_path: Path, digits: DataSplits) -> None:
    with pytest.raises(DataError, match="cifar10"):
        s.ood_split(_cifar_like(), "cifar10_1", data_dir=tmp_path)  # nothing there, and nothing downloaded
    assert not any(tmp_path.rglob("*.tar.gz"))
    with pytest.raises(DataError, match="CIFAR-10-shaped"):
        s.ood_split(digits, "cifar10_1", data_dir=tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("name", s.CORRUPTIONS)
def test_cuda_gives_the_cpu_output(digits: DataSplits, name: str) -> None:
    x = _colour(digits.test.x[:40])
    on_cuda = s.corrupt(x.cuda(), name, 3, seed=2)
    assert on_cuda.device.type == "cuda"
    assert torch.allclose(on_cuda.cpu(), s.corrupt(x, name, 3, seed=2), atol=5e-3)  # cuDNN may convolve in TF32
