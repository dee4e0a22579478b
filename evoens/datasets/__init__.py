"""Datasets by name, as :class:`DataSplits` of float32 inputs and int64 labels.

Offline and always available: ``digits`` (scikit-learn's 8x8 digits), ``mnist1d`` (generated
locally by the mnist1d package, cached in the data directory) and ``gaussian`` (a random teacher
MLP labels N(0, I) inputs). From the data directory, downloaded when missing and checksum-verified:
``mnist``, ``fashion_mnist`` (IDX), ``cifar10`` (python batches) and ``cifar10_1`` (npy, copied by
hand). The data directory is the ``--data-dir`` flag, else ``$EVOENS_DATA_DIR``, else
``~/.cache/evoens/data`` (see :func:`resolve_data_dir`).

Every entry of :data:`DATASETS` is a *dataset loader*, the calling convention of dataset
providers::

    loader(*, data_dir: Path, seed: int, val_fraction: float, test_fraction: float, **options)

``seed`` chooses the train/val split (and, for synthetic data, the data); ``val_fraction`` of the
training data becomes the validation split; ``test_fraction`` is used only by datasets without a
canonical test split (``digits``) and ignored by the others; ``options`` are the dataset's own
keyword arguments (e.g. ``binary_teacher=True`` for ``gaussian``), anything else is a DataError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evoens.datasets.base import DataError, DataSplits, Split, resolve_data_dir, split_train_val
from evoens.datasets.batcher import Batcher
from evoens.datasets.cifar import load_cifar10, load_cifar10_1
from evoens.datasets.download import download
from evoens.datasets.idx import read_idx
from evoens.datasets.mnist import FASHION_MNIST_MIRRORS, MNIST_MIRRORS, load_fashion_mnist, load_mnist
from evoens.datasets.offline import load_digits, load_mnist1d
from evoens.datasets.synthetic import make_gaussian
from evoens.errors import did_you_mean

__all__ = [
    "DATASETS",
    "FASHION_MNIST_MIRRORS",
    "MNIST_MIRRORS",
    "Batcher",
    "DataError",
    "DataSplits",
    "Split",
    "download",
    "load_cifar10",
    "load_cifar10_1",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist1d",
    "make_gaussian",
    "read_idx",
    "resolve_data_dir",
    "split_train_val",
]

_COMMON = frozenset({"data_dir", "seed", "val_fraction", "test_fraction"})


def _loader(name: str, fn: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
    """Adapt ``fn`` to the dataset-loader convention, rejecting options ``fn`` does not take."""
    params = inspect.signature(fn).parameters
    takes_dir, takes_test = "data_dir" in params, "test_fraction" in params
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    allowed = sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in _COMMON)

    def loader(*, data_dir: Path, seed: int, val_fraction: float, test_fraction: float, **options: Any) -> DataSplits:
        unknown = sorted(set(options) - set(allowed))
        if unknown and not open_ended:
            raise DataError(f"dataset {name!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
        kwargs: dict[str, Any] = {"seed": seed, "val_fraction": val_fraction, **options}
        if takes_dir:
            kwargs["data_dir"] = data_dir
        if takes_test:
            kwargs["test_fraction"] = test_fraction
        return fn(**kwargs)

    loader.__name__ = loader.__qualname__ = f"load_{name}"
    loader.__doc__ = fn.__doc__
    return loader


#: name -> dataset loader (see the module docstring for the calling convention).
DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": _loader("digits", load_digits),
    "mnist1d": _loader("mnist1d", load_mnist1d),
    "gaussian": _loader("gaussian", make_gaussian),
    "mnist": _loader("mnist", load_mnist),
    "fashion_mnist": _loader("fashion_mnist", load_fashion_mnist),
    "cifar10": _loader("cifar10", load_cifar10),
    "cifar10_1": _loader("cifar10_1", load_cifar10_1),
}


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    **options: Any,
) -> DataSplits:
    """The dataset ``name`` from :data:`DATASETS`, with ``data_dir`` resolved by :func:`resolve_data_dir`."""
    try:
        loader = DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; known: {known}") from None
    directory = resolve_data_dir(data_dir)
    return loader(data_dir=directory, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, **options)


