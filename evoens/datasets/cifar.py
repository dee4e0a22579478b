"""CIFAR-10 (python pickle batches) and CIFAR-10.1 (npy) readers.

CIFAR-10: Krizhevsky, "Learning multiple layers of features from tiny images", 2009. Read from
``DATA_DIR/cifar10/cifar-10-batches-py/`` when extracted, else straight out of
``DATA_DIR/cifar10/cifar-10-python.tar.gz`` (downloaded when missing, sha256-verified; nothing is
extracted). The batches are pickles: they are loaded with an unpickler that accepts only numpy's
array reconstruction, never arbitrary globals.

CIFAR-10.1: Recht, Roelofs, Schmidt, Shankar, "Do CIFAR-10 classifiers generalize to CIFAR-10?",
arXiv:1806.00451 (2018). ``cifar10.1_{v6|v4}_{data|labels}.npy`` in ``DATA_DIR/cifar10.1/`` (the
upstream file and folder names), copied there by hand from https://github.com/modestyachts/CIFAR-10.1
(``datasets/``); it is the *test* split of the ``cifar10_1`` dataset, whose train/val splits are
CIFAR-10's.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evoens.datasets.base import DataError, DataSplits, Split, dataset_dir, split_train_val
from evoens.datasets.download import download as download_file
from evoens.datasets.download import mirror_urls

__all__ = ["CIFAR10_1_SIZES", "CIFAR10_MIRRORS", "load_cifar10", "load_cifar10_1", "read_cifar_batch"]

CIFAR10_MIRRORS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
_BATCH_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
#: Number of images in each CIFAR-10.1 version (modestyachts/CIFAR-10.1 README).
CIFAR10_1_SIZES: dict[str, int] = {"v4": 2021, "v6": 2000}
_CIFAR10_1_DIR = "cifar10.1"  # the sub-directory of the data directory and the files' prefix, as upstream

_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array-unpickling function, whatever its module
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy < 2 and the original files
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 bytes written by Python 3
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def read_cifar_batch(data: bytes, source: str) -> Split:
    """One CIFAR-10 python batch (a pickled dict with ``data`` (N, 3072) uint8 and ``labels``)."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        images, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, AttributeError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise DataError(f"{source}: not a CIFAR-10 python batch ({problem}); fetch it again") from None
    if images.dtype != np.uint8 or images.shape[1:] != (3072,) or labels.shape != images.shape[:1]:
        raise DataError(
            f"{source}: holds data {images.dtype} {images.shape} and labels {labels.shape}, not N x 3072 "
            "uint8 images with N labels; fetch it again"
        )
    return _to_split(images.reshape(-1, 3, 32, 32), labels, source)


def load_cifar10(
    data_dir: str | os.PathLike[str],
    *,
    seed: int,
    val_fraction: float,
    download: bool = True,
    mirrors: Sequence[str] = CIFAR10_MIRRORS,
    timeout: float = 30.0,
) -> DataSplits:
    """CIFAR-10: x float32 in [0, 1] of shape (3, 32, 32); val is ``val_fraction`` of the 50k train."""
    folder = dataset_dir(Path(data_dir), "cifar10")
    batches = _cifar10_batches(folder, download, mirrors, timeout)
    pool = _concat([read_cifar_batch(batches[name], f"{folder}/{name}") for name in _TRAIN_BATCHES])
    test = read_cifar_batch(batches["test_batch"], f"{folder}/test_batch")
    train, val = split_train_val(pool, val_fraction=val_fraction, seed=seed)
    return DataSplits("cifar10", train, val, test, num_classes=10, input_shape=(3, 32, 32))


def load_cifar10_1(
    data_dir: str | os.PathLike[str],
    *,
    seed: int,
    val_fraction: float,
    version: str = "v6",
    download: bool = True,
    mirrors: Sequence[str] = CIFAR10_MIRRORS,
    timeout: float = 30.0,
) -> DataSplits:
    """CIFAR-10 train/val with CIFAR-10.1 ``version`` as the test split (an OOD test set).

    ``download`` applies to the CIFAR-10 archive only; the CIFAR-10.1 files are copied by hand.
    """
    if version not in CIFAR10_1_SIZES:
        raise DataError(f"cifar10_1: unknown version {version!r}; known: {', '.join(CIFAR10_1_SIZES)}")
    base = load_cifar10(
        data_dir, seed=seed, val_fraction=val_fraction, download=download, mirrors=mirrors, timeout=timeout
    )
    test = _read_cifar10_1(dataset_dir(Path(data_dir), _CIFAR10_1_DIR), version)
    return DataSplits("cifar10_1", base.train, base.val, test, base.num_classes, base.input_shape)


def _cifar10_batches(folder: Path, download: bool, mirrors: Sequence[str], timeout: float) -> dict[str, bytes]:
    names = (*_TRAIN_BATCHES, "test_batch")
    extracted = folder / _BATCH_DIR
    if extracted.is_dir():
        return {name: _read_file(extracted / name) for name in names}
    archive = folder / CIFAR10_ARCHIVE
    if not archive.is_file():
        if not download:
            raise DataError(
                f"cifar10: neither {extracted} nor {archive} exists; copy {CIFAR10_ARCHIVE} there, point "
                "--data-dir / EVOENS_DATA_DIR at its directory, or allow downloads"
            )
        download_file(mirror_urls(mirrors, CIFAR10_ARCHIVE), archive, sha256=CIFAR10_SHA256, timeout=timeout)
    return _read_tar_members(archive, {f"{_BATCH_DIR}/{name}": name for name in names})


def _read_tar_members(archive: Path, wanted: dict[str, str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one sequential pass: no seeking back in the gzip stream
                if member.name in wanted and member.isfile():
                    found[wanted[member.name]] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: corrupt or truncated archive ({exc}); delete it and download it again") from None
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise DataError(
            f"{archive}: lacks {', '.join(missing)} under {_BATCH_DIR}/; is it the CIFAR-10 python archive?"
        )
    return found


def _read_cifar10_1(folder: Path, version: str) -> Split:
    data_path, labels_path = (folder / f"{_CIFAR10_1_DIR}_{version}_{part}.npy" for part in ("data", "labels"))
    images, labels = _load_npy(data_path), _load_npy(labels_path)
    expected = (CIFAR10_1_SIZES[version], 32, 32, 3)
    if images.dtype != np.uint8 or images.shape != expected or labels.shape != expected[:1]:
        raise DataError(
            f"{data_path}: holds {images.dtype} {images.shape} with labels {labels.shape}, expected uint8 "
            f"{expected} and {expected[0]} labels; fetch CIFAR-10.1 {version} again"
        )
    return _to_split(images.transpose(0, 3, 1, 2), labels, str(labels_path))


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(
            f"cifar10_1: {path} not found; copy it there from https://github.com/modestyachts/CIFAR-10.1 "
            "(datasets/) or point --data-dir / EVOENS_DATA_DIR at the directory holding it"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc}); fetch it again") from None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); re-extract {CIFAR10_ARCHIVE}") from None


def _to_split(images: np.ndarray, labels: np.ndarray, source: str) -> Split:
    """uint8 (N, 3, 32, 32) images and integer labels in 0..9 -> a float32 [0, 1] Split."""
    if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{source}: labels must be integers in 0..9; fetch the file again")
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)  # (N, 3, 32, 32)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def _concat(splits: list[Split]) -> Split:
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))
