"""Architecture builders for the core ``model`` providers (pure torch).

Each builder takes the input shape, the number of outputs and a ``ModelConfig`` and returns an
``nn.Sequential`` made only of layers every batched strategy of :mod:`evoens.population`
understands, so populations of these models run as one batched computation.
"""

from __future__ import annotations

import math

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def mlp(input_shape: tuple[int, ...], num_outputs: int, hidden: list[int], activation: str = "tanh") -> nn.Sequential:
    """Flatten, then ``Linear -> activation`` per hidden width, then a linear output layer."""
    widths = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(widths[-1], num_outputs))
    return nn.Sequential(*layers)


def convnet(
    input_shape: tuple[int, ...],
    num_outputs: int,
    channels: tuple[int, ...] = (8, 16),
    kernel: int = 5,
    activation: str = "relu",
) -> nn.Sequential:
    """The EvoJAX MNIST ConvNet by default: conv5x5 1->8, pool, conv5x5 8->16, pool, dense.

    On 1x28x28 inputs it has 11,274 parameters (208 + 3,216 + 7,850), as EvoJAX reports.
    """
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, kernel, padding=kernel // 2), ACTIVATIONS[activation](), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, num_outputs)]
    return nn.Sequential(*layers)
