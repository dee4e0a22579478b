"""Datasets that need no network: scikit-learn's 8x8 digits and a locally generated MNIST-1D.

Digits: the UCI optical recognition of handwritten digits test set (Alpaydin, Kaynak 1998) as
bundled with scikit-learn. MNIST-1D: Greydanus, Kobak, "Scaling down deep learning with
MNIST-1D", ICML 2024 (arXiv:2011.14439); generated with the ``mnist1d`` package's own generator,
never fetched through its download path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evoens.datasets.base import DataError, DataSplits, Split, check_fraction, resolve_data_dir, split_train_val
from evoens.datasets.download import atomic_write

__all__ = ["DIGITS_TEST_SEED", "load_digits", "load_mnist1d", "mnist1d_args"]

log = logging.getLogger(__name__)

#: The digits test split is carved with this fixed seed, so it is the same for every run seed
#: (like the canonical test split of every other dataset); ``seed`` picks train/val only.
DIGITS_TEST_SEED = 0


def load_digits(*, seed: int, val_fraction: float, test_fraction: float) -> DataSplits:
    """scikit-learn's 1797 8x8 digits: x float32 in [0, 1] of shape (64,), 10 classes.

    ``test_fraction`` of all examples form the test split (fixed, see ``DIGITS_TEST_SEED``),
    ``val_fraction`` of the rest the validation split (chosen by ``seed``); both stratified.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    check_fraction("test_fraction", test_fraction, what="digits")
    bunch = sklearn_digits()
    x = torch.from_numpy(bunch.data).float().div_(16.0)  # (1797, 64), pixels are 0..16
    full = Split(x, torch.from_numpy(bunch.target).long())
    pool, test = split_train_val(full, val_fraction=test_fraction, seed=DIGITS_TEST_SEED)
    train, val = split_train_val(pool, val_fraction=val_fraction, seed=seed)
    return DataSplits("digits", train, val, test, num_classes=10, input_shape=(64,))


def mnist1d_args(**options: Any) -> dict[str, Any]:
    """mnist1d's default generator arguments with ``options`` applied (without its download URL).

    The generator's own seed is spelled ``generator_seed`` here (``seed`` is the split seed).
    """
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    del args["url"]
    allowed = ({*args} - {"seed"}) | {"generator_seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DataError(f"mnist1d: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    options = dict(options)
    if "generator_seed" in options:
        options["seed"] = options.pop("generator_seed")
    return {**args, **options}


def load_mnist1d(
    *, seed: int, val_fraction: float, data_dir: str | os.PathLike[str] | None = None, **options: Any
) -> DataSplits:
    """MNIST-1D: x float32 of shape (40,), 10 classes, mnist1d's own train/test split.

    Generated once per distinct generator arguments (mnist1d's defaults updated by ``options``)
    and cached as ``DATA_DIR/mnist1d/mnist1d-<key>.npz``; ``val_fraction`` of the train split
    becomes the validation split, chosen by ``seed``.
    """
    args = mnist1d_args(**options)
    arrays = _cached_mnist1d(args, resolve_data_dir(data_dir) / "mnist1d")
    pool = Split(torch.from_numpy(arrays["x"]).float(), torch.from_numpy(arrays["y"]).long())
    test = Split(torch.from_numpy(arrays["x_test"]).float(), torch.from_numpy(arrays["y_test"]).long())
    train, val = split_train_val(pool, val_fraction=val_fraction, seed=seed)
    return DataSplits("mnist1d", train, val, test, num_classes=10, input_shape=tuple(pool.x.shape[1:]))


def _cached_mnist1d(args: dict[str, Any], folder: Path) -> dict[str, np.ndarray]:
    key_text = json.dumps({"args": args, "mnist1d": metadata.version("mnist1d")}, sort_keys=True)
    path = folder / f"mnist1d-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("mnist1d cache %s is unreadable (%s); generating it again", path, exc)
    arrays = _generate_mnist1d(args)
    try:
        with atomic_write(path) as f:
            np.savez(f, **arrays)
    except OSError as exc:  # an unwritable data directory costs a regeneration next time, no more
        log.warning("cannot cache MNIST-1D in %s (%s); it will be generated again next time", path, exc)
    return arrays


def _generate_mnist1d(args: dict[str, Any]) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    log.info("generating MNIST-1D with %s", args)
    with _preserved_global_rngs():  # make_dataset reseeds `random` and `np.random` globally
        data = make_dataset(ObjectView(dict(args)))
    return {k: np.ascontiguousarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


@contextmanager
def _preserved_global_rngs() -> Iterator[None]:
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
