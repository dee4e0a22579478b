"""The data types every dataset returns, the data directory, and deterministic splitting.

A dataset is a :class:`DataSplits`: three :class:`Split` s (train / val / test) of float32 inputs
and int64 labels, all on one device, plus the number of classes and the shape of one input.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from evoens.errors import UserError

__all__ = ["DataError", "DataSplits", "Split", "resolve_data_dir", "split_train_val"]

#: Environment variable naming the data directory (the CLI flag ``--data-dir`` wins over it).
DATA_DIR_ENV = "EVOENS_DATA_DIR"


class DataError(UserError, ValueError):
    """A dataset is missing, corrupt or misconfigured.

    The message is always one line naming the file or dataset, what is wrong and how to fix it
    (any newline a caller passes in is folded into a space).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass
class Split:
    """One split: inputs ``x`` float32 ``(N, *input_shape)`` and labels ``y`` int64 ``(N,)``."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[:1] != self.y.shape or self.y.dim() != 1:
            raise DataError(
                f"split has {tuple(self.x.shape)} inputs but {tuple(self.y.shape)} labels; "
                "inputs and labels must have the same length N and labels must be 1-D"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, index: Tensor) -> Split:
        """The examples at ``index`` (a 1-D index tensor), in that order."""
        index = index.to(self.y.device)
        return Split(self.x[index], self.y[index])


@dataclass
class DataSplits:
    """A dataset split three ways, with what a model needs to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):
            shape = tuple(getattr(self, part).x.shape[1:])
            if shape != tuple(self.input_shape):
                raise DataError(
                    f"dataset {self.name!r}: {part} inputs have shape {shape} but input_shape is "
                    f"{tuple(self.input_shape)}; the loader must give every split the same input shape"
                )

    def to(self, device: torch.device | str) -> DataSplits:
        """A copy with every split on ``device`` (tensors already there are not copied)."""
        return DataSplits(
            self.name,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.num_classes,
            self.input_shape,
        )


def resolve_data_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``flag`` > ``$EVOENS_DATA_DIR`` > the user cache dir.

    The cache dir is ``$XDG_CACHE_HOME/evoens/data`` (``~/.cache/evoens/data`` when unset).
    ``~`` is expanded; an empty flag or variable counts as unset. Nothing is created here.
    """
    for choice in (flag, os.environ.get(DATA_DIR_ENV)):
        if choice is not None and str(choice) != "":
            return Path(choice).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or ""
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "evoens" / "data"


def dataset_dir(data_dir: Path, name: str) -> Path:
    """``data_dir/name``, or ``data_dir`` itself when it already is that sub-directory."""
    return data_dir if data_dir.name == name else data_dir / name


def check_fraction(name: str, value: float, *, what: str) -> None:
    """Raise a one-line DataError unless ``0 <= value < 1``."""
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise DataError(f"{what}: {name}={value!r} is not a fraction in [0, 1); pass e.g. {name}=0.1")


def split_train_val(split: Split, *, val_fraction: float, seed: int, stratify: bool = True) -> tuple[Split, Split]:
    """Hold out ``val_fraction`` of ``split`` as a second split, deterministically by ``seed``.

    With ``stratify`` each class contributes ``round(n_class * val_fraction)`` examples, so both
    parts keep the class proportions; it costs one stable sort. Both parts keep the original
    order of the examples. Returns ``(rest, held_out)``.
    """
    check_fraction("val_fraction", val_fraction, what="split_train_val")
    n = len(split)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()  # (N,)
    if stratify and n:
        held = _stratified_mask(split.y.cpu().numpy()[perm], val_fraction)  # (N,) over perm order
    else:
        held = np.arange(n) < math.floor(n * val_fraction + 0.5)
    rest_index, held_index = np.sort(perm[~held]), np.sort(perm[held])  # numpy: torch's sorts are slow here
    return split.subset(torch.from_numpy(rest_index)), split.subset(torch.from_numpy(held_index))


def _stratified_mask(labels: np.ndarray, fraction: float) -> np.ndarray:
    """For labels in random order: True on the first ``round(n_c * fraction)`` of each class c."""
    order = np.argsort(labels, kind="stable")  # groups classes, keeps the random order inside
    grouped = labels[order]
    counts = np.bincount(grouped)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(labels)) - starts[grouped]  # position inside its class
    quota = np.floor(counts * fraction + 0.5).astype(np.int64)
    mask = np.empty(len(labels), dtype=bool)
    mask[order] = rank < quota[grouped]
    return mask
