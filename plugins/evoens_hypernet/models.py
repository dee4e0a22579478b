"""The seed's MNIST classifier (vq-ensemble ``MNISTModel``), the network every generator emits.

Conv(1->32, 3x3, stride 2, pad 1) -> ReLU -> Conv(32->32, 3x3, stride 2, pad 1) -> ReLU -> flatten
(7·7·32 = 1568) -> Linear(1568->32) -> ReLU -> Linear(32->10): P = 60,106 parameters on 1x28x28
inputs, standardized with MNIST's mean 0.1307 and std 0.3081 as the original's ``Normalize``. The
dropout variant (the baseline only) puts Dropout(0.25) before each Linear. Pure torch.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["MNIST_MEAN", "MNIST_STD", "Standardize", "vq_cnn"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Standardize(nn.Module):
    """``(x - mean) / std``: no parameters, elementwise (the batched strategies run it as such)."""

    evoens_elementwise = True  # evoens.strategies: a planned strategy may run it as an activation

    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def vq_cnn(
    input_shape: tuple[int, ...], num_outputs: int = 10, *, channels: int = 32, hidden: int = 32,
    dropout: float = 0.0, mean: float = MNIST_MEAN, std: float = MNIST_STD,
) -> nn.Sequential:  # fmt: skip
    """The seed's CNN for ``(C, H, W)`` inputs, or flat square ones (64 for digits, 784 for MNIST)."""
    layers: list[nn.Module] = [Standardize(mean, std)]
    if len(input_shape) == 1:
        side = math.isqrt(input_shape[0])
        if side * side != input_shape[0]:
            raise ValueError(f"vq_cnn needs images (C, H, W) or flat square inputs, got {input_shape}")
        layers.append(nn.Unflatten(1, (1, side, side)))
        input_shape = (1, side, side)
    c, h, w = input_shape
    out_h, out_w = (h + 1) // 2, (w + 1) // 2
    out_h, out_w = (out_h + 1) // 2, (out_w + 1) // 2
    layers += [
        nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
    ]  # fmt: skip
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(channels * out_h * out_w, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_outputs))
    return nn.Sequential(*layers)
