"""The ``hypernet`` suite's speed and memory part: one meta-step as evoens runs it vs the original.

The reference is vq-ensemble's ``create_meta_batch`` at equal math: decode with all K proposals per
stage (each stage checkpointed), then per member a deep copy of the model, its parameters copied in
with ``copy_``, one forward/backward on its own batch, the in-place SGD step, and the post-step
weights as the target; the MSE pull backpropagated into the refiner. evoens: only the chosen output
blocks, deferred weight gradients, all members as one population, one batched inner step.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import torch
from evoens_hypernet.meta import MetaTerms, meta_loss, plain_evaluate
from evoens_hypernet.refiner import VQRefiner
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from evoens.bench import cells, sgemm_peak, synchronize, time_call

__all__ = ["decode_memory", "original_meta_step", "out_layer_efficiency", "speed_rows"]


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


def speed_rows(r: VQRefiner, model: nn.Module, batches: list[int], inner: int, device: torch.device,
               repeats: int) -> list[dict[str, Any]]:  # fmt: skip
    """Seconds per meta-step, evoens vs the original's loop, side by side per meta-batch size B."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for B in cells(batches, lambda B: f"meta-step B={B}"):
        codes = r.sample_codes(B, gen)
        x, y = torch.rand(B, inner, *model_input(model), generator=gen), torch.randint(10, (B, inner), generator=gen)
        args = (codes, x, y, 1e-2)
        ours = time_call(lambda a=args: evoens_meta_step(r, *a), device, repeats=repeats, budget_s=1.0)
        theirs = time_call(lambda a=args: original_meta_step(r, model, *a), device, repeats=repeats, budget_s=1.0)
        rows.append({"B": B, "evoens_s": ours, "original_s": theirs, "ratio": theirs / ours})
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
from evoens_hypernet.models import vq_cnn
from evoens_hypernet.space import WeightSpace
from evoens_hypernet.refiner import VQRefiner
torch.set_num_threads(1)
B, ckpt, stages, hidden = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
r = VQRefiner(WeightSpace(vq_cnn((1, 28, 28))), stages=stages, hidden=hidden, use_checkpoint=ckpt)
codes = r.sample_codes(B, torch.Generator().manual_seed(0))
for p in r.parameters():
    p.grad = torch.ones_like(p)  # the gradients' memory, resident (written), counted in the baseline
with torch.no_grad():
    r.decode(codes)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r.decode(codes).pow(2).sum().backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak}))
"""


def decode_memory(B: int, checkpointed: bool, stages: int, hidden: int) -> dict[str, float]:
    """Peak resident memory of one decode + backward above the parameters and gradients, in a fresh
    process (MiB): what the decode keeps for the backward pass (with or without checkpointing)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(B), "1" if checkpointed else "0", str(stages),
                          str(hidden)], capture_output=True, text=True, check=True)  # fmt: skip
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return {"extra_mib": (found["peak_kib"] - found["base_kib"]) / 1024, "peak_mib": found["peak_kib"] / 1024}
