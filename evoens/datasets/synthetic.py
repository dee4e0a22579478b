"""Synthetic teacher-student classification: N(0, I) inputs labelled by a random teacher MLP.

The teacher is one hidden layer, ``in_dim -> hidden -> num_classes``, without biases; the label
is the argmax of its outputs. The real-valued teacher has N(0, 1/fan_in) weights and tanh hidden
units. The binary teacher (``binary_teacher=True``) has +-1 weights and sign hidden units, the
target network of the binarized-net gradient-estimator experiments (specs/binary.md; BinaryDuo,
Kim et al., ICLR 2020, "2 models / gaussian data").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from evoens.datasets.base import DataError, DataSplits, Split, split_train_val

__all__ = ["Teacher", "make_gaussian", "make_teacher"]


@dataclass(frozen=True)
class Teacher:
    """A fixed random MLP; ``teacher(x)`` are its outputs ``(N, num_classes)``."""

    w1: Tensor  # (in_dim, hidden)
    w2: Tensor  # (hidden, num_classes)
    binary: bool
    tie_break: Tensor  # (num_classes,) in [0, 1): only ever decides exact ties of a binary teacher

    def __call__(self, x: Tensor) -> Tensor:
        if self.binary:
            hidden = torch.where(x @ self.w1 >= 0, 1.0, -1.0)  # (N, hidden), sign with sign(0) = +1
            return hidden @ self.w2 + self.tie_break  # integer logits + tie-break offsets
        return torch.tanh(x @ self.w1) @ self.w2  # (N, num_classes)

    def labels(self, x: Tensor) -> Tensor:
        return self(x).argmax(dim=1)


def make_teacher(
    generator: torch.Generator, *, in_dim: int, hidden: int, num_classes: int, binary: bool = False
) -> Teacher:
    """A random teacher drawn from ``generator``.

    Binary logits are integers of one parity, so distinct logits differ by at least 2 and the
    per-class offsets in [0, 1) break only exact ties, randomly rather than towards class 0.
    """
    w1 = torch.randn(in_dim, hidden, generator=generator)
    w2 = torch.randn(hidden, num_classes, generator=generator)
    tie_break = torch.rand(num_classes, generator=generator)
    if binary:
        return Teacher(torch.where(w1 >= 0, 1.0, -1.0), torch.where(w2 >= 0, 1.0, -1.0), True, tie_break)
    return Teacher(w1 / math.sqrt(in_dim), w2 / math.sqrt(hidden), False, torch.zeros(num_classes))


def make_gaussian(
    *,
    seed: int,
    n_train: int = 4096,
    n_test: int = 1024,
    in_dim: int = 16,
    hidden: int = 32,
    num_classes: int = 10,
    val_fraction: float = 0.1,
    binary_teacher: bool = False,
) -> DataSplits:
    """``n_train`` + ``n_test`` inputs x ~ N(0, I_in_dim) labelled by a teacher drawn from ``seed``.

    ``val_fraction`` of the ``n_train`` examples become the validation split (stratified).
    """
    _check_sizes(
        ("n_train", n_train, 1),
        ("n_test", n_test, 1),
        ("in_dim", in_dim, 1),
        ("hidden", hidden, 1),
        ("num_classes", num_classes, 2),
    )
    generator = torch.Generator().manual_seed(seed)
    teacher = make_teacher(generator, in_dim=in_dim, hidden=hidden, num_classes=num_classes, binary=binary_teacher)
    x_pool = torch.randn(n_train, in_dim, generator=generator)  # (n_train, in_dim)
    x_test = torch.randn(n_test, in_dim, generator=generator)  # (n_test, in_dim)
    pool, test = Split(x_pool, teacher.labels(x_pool)), Split(x_test, teacher.labels(x_test))
    train, val = split_train_val(pool, val_fraction=val_fraction, seed=seed)
    return DataSplits("gaussian", train, val, test, num_classes=num_classes, input_shape=(in_dim,))


def _check_sizes(*checks: tuple[str, int, int]) -> None:
    for key, value, least in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise DataError(f"gaussian: {key}={value!r} must be an integer >= {least}")
