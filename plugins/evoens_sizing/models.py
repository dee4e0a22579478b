"""Sizing networks: MLPs whose hidden layers carry switches, gates, or nothing (the static baseline).

The journal's ``MNIST_1h`` family (mitdbg/fastdeepnets ``models/``): ``Linear(784 -> N) -> ReLU ->
Linear(N -> 10)``, with ``MNIST_1h_sparsifier`` (switches) and ``MNIST_1h_flexible`` (a gate) as
variants; more hidden widths make ``MNIST_nh``. Every model is an ``nn.Sequential`` of layers that
a population runs batched (vmap) and :mod:`evoens_sizing.compact` can shrink.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from evoens_sizing.gated import GatedLinear
from evoens_sizing.switch import SwitchConv2d, SwitchLinear

LAYERS = ("switch", "gated", "plain")
ZERO_AT_ZERO: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "identity": nn.Identity}


def sizing_mlp(input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int], *, layer: str = "switch",
               mode: str = "strict", init: str = "one", k: float = 0.4,
               x0: float | None = None, activation: str = "relu") -> nn.Sequential:  # fmt: skip
    """Flatten (for image inputs), then per hidden width a ``layer`` (switch / gated / plain Linear)
    and the activation, then a Linear output layer. ``x0``: the gates' starting size (default: the
    width). The activation must keep 0 at 0 (relu, tanh, gelu, identity) so a dead unit stays dead."""
    if layer not in LAYERS:
        raise ValueError(f"unknown sizing layer '{layer}'; use one of {', '.join(LAYERS)}")
    if activation not in ZERO_AT_ZERO:
        raise ValueError(f"activation '{activation}' does not map 0 to 0; use one of {', '.join(ZERO_AT_ZERO)}")
    widths = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        if layer == "switch":
            layers.append(SwitchLinear(fan_in, fan_out, mode=mode, init=init))
        elif layer == "gated":
            layers.append(GatedLinear(fan_in, fan_out, k=k, x0=x0))
        else:
            layers.append(nn.Linear(fan_in, fan_out))
        layers.append(ZERO_AT_ZERO[activation]())
    layers.append(nn.Linear(widths[-1], num_outputs))
    return nn.Sequential(*layers)


def sizing_cnn(input_shape: Sequence[int], num_outputs: int, channels: Sequence[int], *, kernel: int = 5,
               batch_norm: bool = True, mode: str = "strict", init: str = "one") -> nn.Sequential:  # fmt: skip
    """LeNet-style: per stage ``SwitchConv2d(+BN) -> ReLU -> MaxPool2d(2)``, then a Linear."""
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in channels:
        layers += [SwitchConv2d(c, out, kernel, padding=kernel // 2, batch_norm=batch_norm, mode=mode, init=init),
                   nn.ReLU(), nn.MaxPool2d(2)]  # fmt: skip
        c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, num_outputs)]
    return nn.Sequential(*layers)


def sized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every switch or gated layer, in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (SwitchLinear, SwitchConv2d, GatedLinear))]


def with_switches(model: nn.Module, mode: str = "strict", init: str = "one") -> nn.Sequential | None:
    """A copy of an MLP ``nn.Sequential`` whose hidden Linears (each followed by an activation that
    maps 0 to 0) are switch layers of the same shape and weights; None when there is none."""
    if not isinstance(model, nn.Sequential):
        return None
    layers = list(model.children())
    out, changed = [], False
    for i, m in enumerate(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if type(m) is nn.Linear and type(nxt) in ZERO_AT_ZERO.values():
            s = SwitchLinear(m.in_features, m.out_features, m.bias is not None, mode=mode, init=init)
            s.load_state_dict({**m.state_dict(), "theta": s.theta.detach()})
            out.append(s)
            changed = True
        else:
            out.append(m)
    return nn.Sequential(*out) if changed else None
