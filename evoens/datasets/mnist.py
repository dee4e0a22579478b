"""MNIST and Fashion-MNIST from IDX files in the data directory, downloaded when missing.

MNIST: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998. Fashion-MNIST: Xiao, Rasul, Vollgraf, arXiv:1708.07747 (2017).
Both ship as the same four IDX files (same names), so each lives in its own sub-directory of the
data directory: ``DATA_DIR/mnist/`` and ``DATA_DIR/fashion-mnist/`` (the upstream spelling; the
datasets are named ``mnist`` and ``fashion_mnist``). A data directory that *is* that sub-directory
is used as is, so ``--data-dir ../shared/data`` and ``--data-dir ../shared/data/mnist`` both work.
Uncompressed copies (no ``.gz``) are read too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evoens.datasets.base import DataError, DataSplits, Split, dataset_dir, split_train_val
from evoens.datasets.download import download as download_file
from evoens.datasets.download import mirror_urls
from evoens.datasets.idx import read_idx

__all__ = [
    "FASHION_MNIST",
    "FASHION_MNIST_MIRRORS",
    "MNIST",
    "MNIST_MIRRORS",
    "IdxDataset",
    "IdxFile",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_mnist",
]

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)


@dataclass(frozen=True)
class IdxFile:
    """One file of an IDX dataset and the sha256 digests a download of it may have."""

    name: str
    sha256: tuple[str, ...]


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-like dataset: 28x28 uint8 images, labels 0..9, a train and a test file pair."""

    name: str  # the dataset's name (``fashion_mnist``)
    folder: str  # its sub-directory of the data directory (``fashion-mnist``, as upstream names it)
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile


# The first digest of each MNIST file is the upstream gzip (as on every public mirror); the second
# is the same IDX content recompressed with `gzip -9n`, as kept in shared/data/mnist on these
# machines (decompressed sha256 ba891046..., 65a50cbb..., 0fa7898d..., ff7bcfd4... in both).
MNIST = IdxDataset(
    "mnist",
    "mnist",
    IdxFile(
        "train-images-idx3-ubyte.gz",
        (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
        ),
    ),
    IdxFile(
        "train-labels-idx1-ubyte.gz",
        (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a",
        ),
    ),
    IdxFile(
        "t10k-images-idx3-ubyte.gz",
        (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "cfeddb84311ecf044fc6a5b0f6ee8a24d265d4e83e388400186eb114082f4209",
        ),
    ),
    IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "e41c74e484045d39b462a7790a4af51301bd9b0b24f0154798d713ec68c45920",
        ),
    ),
)
FASHION_MNIST = IdxDataset(
    "fashion_mnist",
    "fashion-mnist",
    IdxFile("train-images-idx3-ubyte.gz", ("08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",)),
    IdxFile("train-labels-idx1-ubyte.gz", ("b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",)),
    IdxFile("t10k-images-idx3-ubyte.gz", ("78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",)),
    IdxFile("t10k-labels-idx1-ubyte.gz", ("42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",)),
)


def load_mnist(
    data_dir: str | os.PathLike[str],
    *,
    seed: int,
    val_fraction: float,
    download: bool = True,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 30.0,
) -> DataSplits:
    """MNIST: x float32 in [0, 1] of shape (1, 28, 28); val is ``val_fraction`` of the 60k train."""
    return load_idx_dataset(
        MNIST, data_dir, seed=seed, val_fraction=val_fraction, download=download, mirrors=mirrors, timeout=timeout
    )


def load_fashion_mnist(
    data_dir: str | os.PathLike[str],
    *,
    seed: int,
    val_fraction: float,
    download: bool = True,
    mirrors: Sequence[str] = FASHION_MNIST_MIRRORS,
    timeout: float = 30.0,
) -> DataSplits:
    """Fashion-MNIST, shaped and split exactly like :func:`load_mnist`."""
    return load_idx_dataset(
        FASHION_MNIST,
        data_dir,
        seed=seed,
        val_fraction=val_fraction,
        download=download,
        mirrors=mirrors,
        timeout=timeout,
    )


def load_idx_dataset(
    spec: IdxDataset,
    data_dir: str | os.PathLike[str],
    *,
    seed: int,
    val_fraction: float,
    download: bool,
    mirrors: Sequence[str],
    timeout: float = 30.0,
) -> DataSplits:
    """Find (or download) the four files of ``spec``, validate them and split train/val by ``seed``."""
    folder = dataset_dir(Path(data_dir), spec.folder)

    def split(images: IdxFile, labels: IdxFile) -> Split:
        paths = [_locate(spec.name, folder, f, download, mirrors, timeout) for f in (images, labels)]
        return _read_pair(*paths)

    pool, test = split(spec.train_images, spec.train_labels), split(spec.test_images, spec.test_labels)
    train, val = split_train_val(pool, val_fraction=val_fraction, seed=seed)
    return DataSplits(spec.name, train, val, test, num_classes=10, input_shape=(1, 28, 28))


def _locate(dataset: str, folder: Path, file: IdxFile, download: bool, mirrors: Sequence[str], timeout: float) -> Path:
    for candidate in (folder / file.name, folder / file.name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    if not download:
        raise DataError(
            f"{dataset}: {file.name} is not in {folder}; copy the {dataset} IDX files there, point "
            "--data-dir / EVOENS_DATA_DIR at the directory holding them, or allow downloads"
        )
    return download_file(mirror_urls(mirrors, file.name), folder / file.name, sha256=file.sha256, timeout=timeout)


def _read_pair(images_path: Path, labels_path: Path) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path}: holds {images.dtype} {images.shape}, not 28x28 uint8 images; is it the right file?"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path}: holds {labels.dtype} {labels.shape}, not {len(images)} uint8 labels to match "
            f"{images_path.name}; is it the right file?"
        )
    if len(labels) and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} is outside 0..9; is it the right file?")
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28)
    return Split(x, torch.from_numpy(labels).long())
