"""A deterministic, exactly resumable minibatch cursor over a :class:`~evoens.datasets.Split`.

Each epoch visits every example once, in the order of a permutation drawn from a
``torch.Generator`` seeded by ``seed``. The state is three numbers and the generator state at the
start of the current epoch, so a checkpoint (``torch.save`` / ``weights_only=True`` load) of
:meth:`Batcher.state_dict` lets a restored Batcher yield exactly the batches the original would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from evoens.datasets.base import DataError, Split

__all__ = ["Batcher"]


class Batcher:
    """Minibatches of ``batch_size`` examples; ``batch_size=0`` returns the whole split each call.

    The last batch of an epoch is shorter when ``batch_size`` does not divide the split, unless
    ``drop_last`` (then every batch has exactly ``batch_size`` examples and the remainder of
    each epoch's permutation is skipped). A ``batch_size`` above the split size means one batch
    per epoch.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, *, drop_last: bool = False) -> None:
        if batch_size < 0:
            raise DataError(f"Batcher: batch_size={batch_size} must be >= 0 (0 = the whole split)")
        if len(split) == 0:
            raise DataError("Batcher: the split is empty; lower val_fraction/test_fraction or use more data")
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._epoch_start = self._generator.get_state()
        self._perm = self._draw_permutation()

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def next(self) -> tuple[Tensor, Tensor]:
        """The next batch ``(x, y)``: x ``(B, *input_shape)``, y ``(B,)``."""
        if self.batch_size == 0:
            self.epoch += 1
            return self.split.x, self.split.y
        size = min(self.batch_size, self.num_samples)
        if self.num_samples - self.position < (size if self.drop_last else 1):
            self._start_epoch(self.epoch + 1)
        index = self._perm[self.position : self.position + size]  # (B,)
        self.position += len(index)
        return self.split.x[index], self.split.y[index]

    __next__ = next

    def __iter__(self) -> Batcher:
        return self

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; plain ints and one uint8 tensor."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "generator_state": self._epoch_start.clone(),  # the state that drew this epoch
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the split and batch size must match the saved ones."""
        for key in ("batch_size", "num_samples"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"Batcher state was saved with {key}={state[key]} but this Batcher has "
                    f"{getattr(self, key)}; resume with the same dataset split and batch size"
                )
        self.seed = int(state["seed"])
        self._generator.set_state(state["generator_state"].clone())
        self._start_epoch(int(state["epoch"]))
        self.position = int(state["position"])

    def _start_epoch(self, epoch: int) -> None:
        self._epoch_start = self._generator.get_state()  # a copy
        self.epoch = epoch
        self.position = 0
        self._perm = self._draw_permutation()

    def _draw_permutation(self) -> Tensor:
        perm = torch.randperm(self.num_samples, generator=self._generator)  # (N,)
        return perm.to(self.split.y.device)
