"""Forward strategy ``sizing_bmm``: populations of switch / gated / plain MLPs as batched GEMMs.

The core's ``bmm`` strategy (:mod:`evoens.strategies`) in the transposed layout ``(P, features, B)``
(each layer one ``baddbmm(bias (P,out,1), W (P,out,in), h (P,in,B))`` on views of the flat
parameters), extended by the per-member unit scales: a switch layer multiplies by ``relu(theta)``
``(P, out, 1)``, a gated layer by its gate ``(P, out, 1)``. The generic ``vmap`` runs the same
networks; this one is parity-tested against the loop. It leaves plain MLPs to the core's ``bmm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evoens.strategies import Strategy
from evoens_sizing.gated import GatedLinear, gate
from evoens_sizing.switch import SwitchLinear

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.Identity)


class SizingBMM(Strategy):
    name = "sizing_bmm"
    per_sample = True

    def why_not(self, template: nn.Module) -> str | None:
        if not isinstance(template, nn.Sequential):
            return f"{type(template).__name__} is not an nn.Sequential"
        if not any(isinstance(m, (SwitchLinear, GatedLinear)) for m in template.children()):
            return "no switch or gated layer (plain MLPs: the core's 'bmm')"
        for i, (name, m) in enumerate(template.named_children()):
            if isinstance(m, nn.Flatten) and i == 0 and m.start_dim == 1 and m.end_dim == -1:
                continue
            if isinstance(m, (SwitchLinear, GatedLinear, nn.Linear)) or type(m) in ELEMENTWISE:
                if m._forward_hooks or m._forward_pre_hooks:
                    return f"layer '{name}' has forward hooks"
                continue
            return f"layer '{name}' ({type(m).__name__}) is not supported (switch/gated/plain Linear MLPs only)"
        return None

    def forward(self, template: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, *,
                size: int, per_member: bool) -> Tensor:  # fmt: skip
        if per_member:
            h = x.flatten(2).transpose(1, 2)  # (P, in, B)
        else:
            h = x.flatten(1).T.expand(size, -1, -1)  # (P, in, B), no copy
        for name, m in template.named_children():
            if isinstance(m, nn.Linear):
                w = params[f"{name}.weight"]  # (P, out, in)
                b = params.get(f"{name}.bias")
                h = torch.bmm(w, h) if b is None else torch.baddbmm(b[:, :, None], w, h)  # (P, out, B)
                h = h * _scale(m, name, params, buffers)
            elif not isinstance(m, nn.Flatten):
                h = m(h)
        return h.transpose(1, 2)  # (P, B, out)


def _scale(m: nn.Module, name: str, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Tensor | float:
    """Per member and unit: the switch ``relu(theta)`` or the gate, ``(P, out, 1)``; 1 for a plain Linear."""
    if isinstance(m, SwitchLinear):
        return F.relu(params[f"{name}.theta"])[:, :, None]
    if isinstance(m, GatedLinear):
        x0 = params[f"{name}.x0_raw"] * m.x0_scale  # (P,)
        k = params[f"{name}.k"] if f"{name}.k" in params else buffers[f"{name}.k"]
        return gate(x0, k.reshape(-1, 1) if k.dim() else k, m.out_features)[:, :, None]  # (P, out, 1)
    return 1.0
