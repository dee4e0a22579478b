"""FLOP counter for Conv2d and Linear layers, per sample (one multiply-add = 2 FLOPs).

Spec pitfall 9: the R2R code counts convolutions only, ignores ``groups`` and reports per image;
this counter counts Conv2d (with groups) and Linear, per sample, and matches
``torch.utils.flop_counter.FlopCounterMode`` (which also ignores bias additions).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def layer_flops(module: nn.Module, output: torch.Tensor) -> int:
    """FLOPs of one Conv2d/Linear call producing ``output`` for ONE sample (batch dim removed)."""
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return 2 * per_output * output.numel()
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * output.numel()
    return 0


def count_flops(model: nn.Module, input_shape: tuple[int, ...] | torch.Size) -> int:
    """FLOPs of one forward of ``model`` on one sample of shape ``input_shape`` (no batch dim).

    Runs one no-grad forward on zeros with hooks on every Conv2d/Linear, so layers used twice
    count twice and unused ones not at all. Batch-norm statistics are not touched (eval mode
    for the call, the original mode restored afterwards).
    """
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += layer_flops(module, output[0])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total)


def count_params(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
