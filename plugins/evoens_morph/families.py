"""Small model families the transforms know how to walk (see :mod:`evoens_morph.sites`).

Every family is an ``nn.Sequential`` of ordinary layers plus three block types: :class:`Concat`
(two-path, Inception-like), :class:`ResBlock` (identity, zero-pad or 1x1-projection shortcut, all
through a :class:`~evoens_morph.residual.SliceMap`) and :class:`ZeroResBlock` (x + z(x), the
R2DeeperR block). ``input_shape`` is stored on each model for probe batches and FLOP counts.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from evoens_morph.residual import SliceMap

Shortcut = Literal["identity", "zero_pad", "projection"]


class Concat(nn.Module):
    """Runs every branch on the same input and concatenates along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)  # (B, ΣC_j, H, W)


class ResBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1 x)))) + skip(proj(x) or x)), the ResNet basic block."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: Shortcut = "identity") -> None:
        super().__init__()
        if shortcut == "identity" and (c_in != c_out or stride != 1):
            raise ValueError("an identity shortcut needs c_in == c_out and stride 1; use 'zero_pad' or 'projection'")
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.proj: nn.Sequential | None = None
        if shortcut == "projection":
            self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            self.skip = SliceMap(c_out, c_out)
        else:
            self.skip = SliceMap(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        res = self.skip(self.proj(x) if self.proj is not None else x)  # (B, C_out, H', W')
        return torch.relu(self.bn2(self.conv2(h)) + res)


class ZeroResBlock(nn.Module):
    """x + conv2(relu(bn1(conv1 x))), built so that conv2's output is zero (R2DeeperR).

    No BN after the cancelling conv (spec pitfall 3: it would rescale the tiny residual to O(1)).
    """

    def __init__(self, channels: int, hidden: int, kernel: int = 3, linear: bool = False, bn: bool = True) -> None:
        super().__init__()
        if linear:
            self.conv1: nn.Module = nn.Linear(channels, hidden)
            self.conv2: nn.Module = nn.Linear(hidden, channels)
            self.bn1: nn.Module = nn.BatchNorm1d(hidden) if bn else nn.Identity()
        else:
            self.conv1 = nn.Conv2d(channels, hidden, kernel, padding=kernel // 2)
            self.conv2 = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)
            self.bn1 = nn.BatchNorm2d(hidden) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.bn1(self.conv1(x))))


def _tag(model: nn.Sequential, input_shape: tuple[int, ...]) -> nn.Sequential:
    model.input_shape = tuple(input_shape)  # type: ignore[attr-defined]
    return model


def mlp(
    input_shape: tuple[int, ...] = (1, 12, 12), hidden: tuple[int, ...] = (24, 16), classes: int = 10
) -> nn.Sequential:
    """Flatten -> [Linear, BN1d, ReLU] per hidden width -> Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = int(torch.Size(input_shape).numel())
    for width in hidden:
        layers += [nn.Linear(fan_in, width), nn.BatchNorm1d(width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, classes))
    return _tag(nn.Sequential(*layers), input_shape)


def cnn(
    input_shape: tuple[int, ...] = (1, 12, 12), channels: tuple[int, ...] = (8, 16), hidden: int = 32, classes: int = 10
) -> nn.Sequential:
    """[Conv3x3, BN, ReLU, MaxPool2] per width -> Flatten -> Linear, ReLU -> Linear (conv->linear flatten)."""
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for width in channels:
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = width, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, classes)]
    return _tag(nn.Sequential(*layers), input_shape)


def resnet(input_shape: tuple[int, ...] = (1, 12, 12), width: int = 8, classes: int = 10) -> nn.Sequential:
    """Stem, then blocks with an identity, a zero-pad (stride 2) and a projection (stride 2) skip."""
    c = input_shape[0]
    return _tag(
        nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            ResBlock(width, width, 1, "identity"),
            ResBlock(width, 2 * width, 2, "zero_pad"),
            ResBlock(2 * width, 3 * width, 2, "projection"),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(3 * width, classes),
        ),
        input_shape,
    )


def concat_net(input_shape: tuple[int, ...] = (1, 12, 12), width: int = 8, classes: int = 10) -> nn.Sequential:
    """Stem -> Concat(1x1 branch, 3x3 branch) -> MaxPool -> Conv -> ReLU -> MaxPool -> Flatten -> Linear."""
    c, h, w = input_shape

    def branch(k: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(width, width, k, padding=k // 2), nn.BatchNorm2d(width), nn.ReLU())

    return _tag(
        nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            Concat(branch(1), branch(3)),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (h // 4) * (w // 4), classes),
        ),
        input_shape,
    )


FAMILIES = {"mlp": mlp, "cnn": cnn, "resnet": resnet, "concat": concat_net}
