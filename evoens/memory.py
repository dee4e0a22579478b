"""How many population members fit in one chunk: activation probes and the memory budget.

A chunk's activations are kept near the CPU's cache size (8 MiB) or 1/8 of a GPU; the activation
size per member and sample is measured once per (architecture, sample shape, dtype, grad) by one
member's forward on two zero samples. Chunks that still run out of memory are halved by the
population (:func:`is_oom` tells such errors apart). A population whose parameters alone cannot
fit is refused before anything is allocated (:func:`check_population_fits`). Pure torch
(and evoens.errors).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from evoens.errors import ConfigError

CPU_BUDGET = 8 << 20  # bytes of activations per chunk: keeps a chunk's working set near cache size
_ACT_ELEMS: dict[tuple, int | None] = {}  # probe key -> activation elements per member per sample


def is_oom(err: BaseException) -> bool:
    msg = str(err)
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)
    )


def available_bytes(device: torch.device) -> int | None:
    """Memory a population may take on ``device``: the free memory of a GPU, the physical memory
    of the machine on the CPU; None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not POSIX (Windows), or the names are unknown
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


#: Full ``(P, D)`` tensors a torch optimizer keeps besides the weights and their gradients.
OPTIMIZER_STATES = {"sgd": 0, "adam": 2, "adamw": 2}


def optimizer_states(name: str) -> int:
    """``(P, D)`` state tensors of the optimizer ``name`` (a plugin's: assumed Adam's two)."""
    return OPTIMIZER_STATES.get(name, 2)


def check_population_fits(popsize: int, template: nn.Module, device: torch.device, copies: dict[str, int]) -> None:
    """Refuse, in one line and before anything is allocated, a population of ``popsize`` members
    of ``template`` whose full ``(P, D)`` tensors (``copies``: what the trainer keeps -> how many)
    exceed the memory of ``device``; the message gives the estimate
    (P x D x bytes per parameter x copies), the largest popsize that fits and the knob to change."""
    available = available_bytes(device)
    params = list(template.parameters())
    dim, size = sum(p.numel() for p in params), params[0].element_size() if params else 4
    count = sum(copies.values())
    per_member = dim * size * count
    if available is None or popsize * per_member <= available:
        return
    what = ", ".join(name if n == 1 else f"{n} {name}" for name, n in copies.items() if n)
    where = f"{device} has {_gib(available)} free" if device.type == "cuda" else f"this machine has {_gib(available)}"
    raise ConfigError(
        f"trainer.popsize = {popsize}: the population needs about {_gib(popsize * per_member)} ({popsize:,} members "
        f"x {dim:,} parameters x {size} bytes x {count} copies: {what}) but {where}; lower trainer.popsize "
        f"(at most about {available // max(per_member, 1):,} fit) or use a smaller model"
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
