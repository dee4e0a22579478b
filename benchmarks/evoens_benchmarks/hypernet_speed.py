"""The ``hypernet`` suite's speed and memory part: one meta-step as evoens runs it vs the original.

The reference is vq-ensemble's ``create_meta_batch`` at equal math: decode with all K proposals per
stage (each stage checkpointed), then per member a deep copy of the model, its parameters copied in
with ``copy_``, one forward/backward on its own batch, the in-place SGD step, and the post-step
weights as the target; the MSE pull backpropagated into the refiner. evoens: only the chosen output
blocks, deferred weight gradients, all members as one population, one batched inner step; from two
members on the decode runs in the refiner's hidden space (:mod:`evoens_hypernet.fused`).
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from evoens_hypernet.meta import MetaTerms, meta_loss, plain_evaluate
from evoens_hypernet.refiner import VQRefiner
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from evoens.bench import cells, sgemm_peak, synchronize, time_call

__all__ = ["before_after", "decode_memory", "interleaved", "original_meta_step", "out_layer_efficiency",
           "speed_rows"]


def _decode_all_proposals(r: VQRefiner, codes: Tensor) -> Tensor:
    """The original decode: R(t, u) gives all K proposals, the code picks one; stages checkpointed."""
    u = torch.zeros(len(codes), r.space.dim, requires_grad=True)  # the original's requires_grad_ on u_0
    index = torch.arange(len(codes))
    for t in range(r.stages):
        u = checkpoint(lambda v, t=t: r.proposals(t, v)[index, codes[:, t]], u, use_reentrant=False)
    return u


def original_meta_step(r: VQRefiner, model: nn.Module, codes: Tensor, x: Tensor, y: Tensor, inner_lr: float) -> float:
    """vq-ensemble's meta-step, member by member (``train_mnist.py`` ``create_meta_batch``)."""
    u = _decode_all_proposals(r, codes)  # (B, D)
    s = r.space.scales
    targets = []
    for i in range(len(codes)):
        member = copy.deepcopy(model)
        raw = (u[i] * s).detach()
        offset = 0
        with torch.no_grad():
            for p in member.parameters():
                p.copy_(raw[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        loss = F.cross_entropy(member(x[i]), y[i])
        grads = torch.autograd.grad(loss, list(member.parameters()))
        with torch.no_grad():
            for p, g in zip(member.parameters(), grads):
                p.add_(g, alpha=-inner_lr)  # add_, not add (the original's e73c259)
        targets.append(torch.cat([p.detach().reshape(-1) for p in member.parameters()]) / s)
    meta = (torch.stack(targets) - u).pow(2).mean() * u.shape[1]
    r.zero_grad(set_to_none=True)
    meta.backward()
    return float(meta)


def evoens_meta_step(r: VQRefiner, codes: Tensor, x: Tensor, y: Tensor, inner_lr: float) -> float:
    loss, _, _ = meta_loss(r, codes, (x, y), MetaTerms("pull", inner_lr), plain_evaluate())
    r.zero_grad(set_to_none=True)
    loss.backward()
    return float(loss.detach())


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int) -> dict[str, list[float]]:
    """Seconds of every call in ``fns`` per round, after one warm-up call each (the auto strategy's
    choice, first allocations); the order is reversed every other round, so a burst of load on the
    shared machine falls on both sides of a comparison."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for k in range(rounds):
        for name in list(fns) if k % 2 == 0 else list(fns)[::-1]:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def speed_rows(r: VQRefiner, model: nn.Module, batches: list[int], inner: int, device: torch.device,
               repeats: int) -> list[dict[str, Any]]:  # fmt: skip
    """Seconds per meta-step, evoens vs the original's loop, side by side per meta-batch size B:
    ``max(repeats, 3)`` interleaved rounds, the medians and the median of the rounds' ratios (one
    call each was at the mercy of the shared machine: a 27 s call of a step that takes 3.4 s)."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for B in cells(batches, lambda B: f"meta-step B={B}"):
        codes = r.sample_codes(B, gen)
        x, y = torch.rand(B, inner, *model_input(model), generator=gen), torch.randint(10, (B, inner), generator=gen)
        args = (codes, x, y, 1e-2)
        times = interleaved({"evoens": lambda a=args: evoens_meta_step(r, *a),
                             "original": lambda a=args: original_meta_step(r, model, *a)}, device,
                            max(repeats, 3))  # fmt: skip
        ratios = [o / e for e, o in zip(times["evoens"], times["original"])]
        rows.append({"B": B, "evoens_s": statistics.median(times["evoens"]),
                     "original_s": statistics.median(times["original"]), "ratio": statistics.median(ratios),
                     "ratios": ratios, "load": os.getloadavg()})  # fmt: skip
    return rows


def before_after(stages: int = 40, batches: tuple[int, ...] = (4, 64), rounds: int = 3, inner: int = 128,
                 device: torch.device | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """One meta-step three ways in one process, interleaved: evoens now, evoens as it was before the
    hidden-space decode (the stages path with checkpointing, the previous default: the same code)
    and the original's loop, at the seed's sizes."""
    from evoens_hypernet.models import vq_cnn
    from evoens_hypernet.space import WeightSpace

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    model = vq_cnn((1, 28, 28))
    r = VQRefiner(WeightSpace(model), stages=stages)

    def before(*args: Any) -> float:
        r.path, r.use_checkpoint = "stages", True
        try:
            return evoens_meta_step(r, *args)
        finally:
            r.path, r.use_checkpoint = "auto", False

    rows, gen = [], torch.Generator().manual_seed(0)
    for B in batches:
        codes = r.sample_codes(B, gen)
        x, y = torch.rand(B, inner, *model_input(model), generator=gen), torch.randint(10, (B, inner), generator=gen)
        args = (codes, x, y, 1e-2)
        load = os.getloadavg()[0]
        times = interleaved({"after": lambda a=args: evoens_meta_step(r, *a), "before": lambda a=args: before(*a),
                             "original": lambda a=args: original_meta_step(r, model, *a)}, device, rounds)  # fmt: skip
        med = {name: statistics.median(v) for name, v in times.items()}
        rows.append({"B": B, "stages": stages, "seconds": times, "median_s": med,
                     "original/after": statistics.median(o / a for o, a in zip(times["original"], times["after"])),
                     "original/before": statistics.median(o / b for o, b in zip(times["original"], times["before"])),
                     "before/after": statistics.median(b / a for b, a in zip(times["before"], times["after"])),
                     "load": [load, *os.getloadavg()[:1]]})  # fmt: skip
    return rows


def model_input(model: nn.Module) -> tuple[int, ...]:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return (first.in_channels, 28, 28)


def out_layer_efficiency(r: VQRefiner, batches: list[int], device: torch.device) -> list[dict[str, Any]]:
    """GFLOP/s of the output layer's products vs the sgemm peak: the per-stage forward block
    ``(n_k, H) @ (H, D)`` and the deferred weight gradient ``(D, T·B/K) @ (T·B/K, H)``."""
    peak = sgemm_peak(device)
    weight = r.out_layer.weight.detach()[: r.space.dim]  # (D, H): one option's block
    rows = []
    for B in batches:
        n = max(1, B // r.options)  # members choosing one option, on average
        h = torch.randn(n, r.hidden, device=device)
        fwd = time_call(lambda h=h: h @ weight.t(), device, repeats=5)
        R = r.stages * n
        delta, x = torch.randn(R, r.space.dim, device=device), torch.randn(R, r.hidden, device=device)
        bwd = time_call(lambda d=delta, x=x: d.t() @ x, device, repeats=5)
        flops_f, flops_b = 2 * n * r.hidden * r.space.dim, 2 * R * r.hidden * r.space.dim
        rows.append({"B": B, "peak_gflops": peak, "forward_gflops": flops_f / fwd / 1e9,
                     "weight_grad_gflops": flops_b / bwd / 1e9, "forward_share": flops_f / fwd / 1e9 / peak,
                     "weight_grad_share": flops_b / bwd / 1e9 / peak})  # fmt: skip
        synchronize(device)
    return rows


_MEMORY_PROBE = """
import json, resource, sys, torch
def peak_kib():  # this process's own high-water mark: ru_maxrss keeps a forked parent's across exec
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from evoens_hypernet.models import vq_cnn
from evoens_hypernet.space import WeightSpace
from evoens_hypernet.refiner import VQRefiner
torch.set_num_threads(1)
B, ckpt, stages, hidden, path = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
r = VQRefiner(WeightSpace(vq_cnn((1, 28, 28))), stages=stages, hidden=hidden, use_checkpoint=ckpt, path=path)
codes = r.sample_codes(B, torch.Generator().manual_seed(0))
for p in r.parameters():
    p.grad = torch.ones_like(p)  # the gradients' memory, resident (written), counted in the baseline
with torch.no_grad():
    r.decode(codes)
base = peak_kib()
r.decode(codes).pow(2).sum().backward()
peak = peak_kib()
print(json.dumps({"base_kib": base, "peak_kib": peak}))
"""


def decode_memory(B: int, checkpointed: bool, stages: int, hidden: int, path: str = "stages") -> dict[str, float]:
    """Peak resident memory of one decode + backward above the parameters and gradients, in a fresh
    process (MiB): what the decode keeps for the backward pass (``path`` "stages": with or without
    checkpointing; "hidden": the hidden-space decode, which ignores ``checkpointed``)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(B), "1" if checkpointed else "0", str(stages),
                          str(hidden), path], capture_output=True, text=True, check=True)  # fmt: skip
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return {"extra_mib": (found["peak_kib"] - found["base_kib"]) / 1024, "peak_mib": found["peak_kib"] / 1024}


if __name__ == "__main__":  # python -m evoens_benchmarks.hypernet_speed [rounds]: before/after/original, JSON lines
    for row in before_after(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        print(json.dumps(row), flush=True)
