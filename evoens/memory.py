"""How many population members fit in one chunk: activation probes and the memory budget.

A chunk's activations are kept near the CPU's cache size (8 MiB) or 1/8 of a GPU; the activation
size per member and sample is measured once per (architecture, sample shape, dtype, grad) by one
member's forward on two zero samples. Chunks that still run out of memory are halved by the
population (:func:`is_oom` tells such errors apart). Pure torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

CPU_BUDGET = 8 << 20  # bytes of activations per chunk: keeps a chunk's working set near cache size
_ACT_ELEMS: dict[tuple, int | None] = {}  # probe key -> activation elements per member per sample


def is_oom(err: BaseException) -> bool:
    msg = str(err)
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)
    )


def leaf_modules(template: nn.Module) -> list[nn.Module]:
    return [m for m in template.modules() if next(m.children(), None) is None]


def budget_bytes(device: torch.device) -> int:
    """Activation bytes one chunk may use on ``device``."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 8
    return CPU_BUDGET


def activation_elements(
    key: tuple,
    template: nn.Module,
    one_member: Callable[[], dict[str, Tensor]],
    sample: tuple[int, ...],
    grad: bool,
) -> int | None:
    """Activation elements per member per sample (cached by ``key``); None when unknown."""
    if key not in _ACT_ELEMS:
        tensors = one_member()
        _ACT_ELEMS[key] = _probe_activations(template, tensors, sample, grad) if tensors else None
    return _ACT_ELEMS[key]


def _probe_activations(
    template: nn.Module, tensors: dict[str, Tensor], sample: tuple[int, ...], grad: bool
) -> int | None:
    """Activation elements per member per sample, from one member's forward on two zero samples.

    With grad every layer output is kept for backward (sum); without, about two are alive (2 max).
    Real tensors, not meta ones: meta kernels would import torch._dynamo (over a second) here."""
    counts: list[int] = []

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, Tensor):
            counts.append(out.numel() // 2)

    modules = list(template.modules())
    training = [m.training for m in modules]
    handles = [m.register_forward_hook(hook) for m in leaf_modules(template)]
    any_tensor = next(iter(tensors.values()))
    try:
        template.eval()  # shapes only: no running-stat updates, no RNG draws
        with torch.no_grad():
            functional_call(template, tensors, (any_tensor.new_zeros((2, *sample)),))
    except Exception:  # noqa: BLE001  (e.g. a forward taking two tensors): rely on OOM halving
        return None
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(modules, training):
            m.training = flag
    counts = counts or [math.prod(sample)]
    return sum(counts) if grad else 2 * max(counts)
