"""Optimizer carry-over after a morphism: keep what was learned about the old parameters.

The R2R paper (Painter, "Towards a More Complete Theory of Function Preserving Transforms",
§6, App. D) divides the learning rate by 5 at the transform and re-creates Adam; the cs231n
report (App. C) scales the learning rate by |θ_old| / |θ_new|. Re-creating the optimizer wipes
the Adam moments of the old parameters (spec pitfall 1), so here every old parameter keeps its
state, a widened tensor keeps the state of its old slice and brand-new tensors start fresh. The
new entries of a widened tensor start with a zero first moment and the MEAN old second moment:
Adam's step count (one scalar per tensor) is carried over, so its bias correction is ~1 and zero
second moments would make the first updates of the new entries ~(1−β1)/sqrt(1−β2) ≈ 3.2x the
learning rate. The learning-rate rules are options (``lr_rule``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

LrRule = Literal["keep", "divide", "norm_ratio"]
Positions = tuple[torch.Tensor, ...]  # per dim: the indices of the old entries in the new tensor
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")  # Adam/AdamW/NAdam/RAdam: new entries get the old mean


def _norm(params: Iterable[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in params)))


def _scatter_state(value: torch.Tensor, new: torch.Tensor, positions: Positions, fill: float = 0.0) -> torch.Tensor:
    """A tensor shaped like ``new`` holding ``value`` at the old entries and ``fill`` elsewhere."""
    out = torch.full_like(new, fill, dtype=value.dtype, memory_format=torch.contiguous_format)
    out[torch.meshgrid(*positions, indexing="ij")] = value
    return out


def carry_over_optimizer(
    old_opt: torch.optim.Optimizer,
    model: nn.Module,
    new_param_names: Iterable[str],
    *,
    old_params: Mapping[str, torch.Tensor] | None = None,
    positions: Mapping[str, Positions] | None = None,
    lr_rule: LrRule = "keep",
    lr_divisor: float = 5.0,
    scale_weight_decay: bool = False,
) -> torch.optim.Optimizer:
    """A new optimizer of ``old_opt``'s class over ``model``'s parameters, carrying state over.

    ``old_params``: name -> the parameter object ``old_opt`` holds (default: ``model``'s own,
    for in-place transforms). ``positions``: name -> per-dim indices of the old entries inside a
    widened tensor (``MorphReport.widened``). Names in ``new_param_names`` get a fresh state and go
    into the first parameter group. ``lr_rule``: ``"keep"``, ``"divide"`` (lr / ``lr_divisor``,
    R2R paper) or ``"norm_ratio"`` (lr · |θ_old| / |θ_new|, cs231n report; also weight decay with
    ``scale_weight_decay``).
    """
    if lr_rule not in ("keep", "divide", "norm_ratio"):
        raise ValueError(f"unknown lr_rule '{lr_rule}'; use 'keep', 'divide' or 'norm_ratio'")
    if lr_divisor <= 0:
        raise ValueError(f"lr_divisor must be > 0, got {lr_divisor}")
    named = dict(model.named_parameters())
    new_names = set(new_param_names)
    unknown = new_names - set(named)
    if unknown:
        raise ValueError(f"new_param_names not in the model: {sorted(unknown)}")
    positions = dict(positions or {})
    old_params = dict(old_params) if old_params is not None else {n: p for n, p in named.items() if n not in new_names}
    old_name_of = {id(p): n for n, p in old_params.items()}
    groups, placed = [], set()
    for group in old_opt.param_groups:
        names = [old_name_of[id(p)] for p in group["params"] if id(p) in old_name_of and old_name_of[id(p)] in named]
        placed.update(names)
        options = {k: v for k, v in group.items() if k != "params"}
        groups.append({**options, "params": names})
    leftovers = [n for n in named if n not in placed]
    if not groups:
        raise ValueError("old_opt has no parameter groups")
    groups[0]["params"] += leftovers
    ratio = 1.0
    if lr_rule == "norm_ratio":
        ratio = _norm(old_params.values()) / max(_norm(named.values()), 1e-30)
    for group in groups:
        if lr_rule == "divide":
            group["lr"] = group["lr"] / lr_divisor
        elif lr_rule == "norm_ratio":
            group["lr"] = group["lr"] * ratio
            if scale_weight_decay and "weight_decay" in group:
                group["weight_decay"] = group["weight_decay"] * ratio
        group["params"] = [named[n] for n in group["params"]]
    # every group carries its full options; lr is passed too for optimizers that require it
    extra = {"lr": old_opt.defaults["lr"]} if "lr" in old_opt.defaults else {}
    opt = type(old_opt)(groups, **extra)
    for name, param in named.items():
        if name in new_names or name not in old_params:
            continue
        old_state = old_opt.state.get(old_params[name])
        if not old_state:
            continue
        state = {}
        for key, value in old_state.items():
            if torch.is_tensor(value) and value.shape == old_params[name].shape and name in positions:
                fill = float(value.mean()) if key in SECOND_MOMENTS and value.numel() else 0.0
                state[key] = _scatter_state(value, param, positions[name], fill)
            elif torch.is_tensor(value) and value.shape == old_params[name].shape and value.shape != param.shape:
                raise ValueError(f"parameter '{name}' changed shape; pass its positions (MorphReport.widened)")
            else:
                state[key] = value.clone() if torch.is_tensor(value) else value
        opt.state[param] = state
    return opt


def carry_over_from_reports(
    opt: torch.optim.Optimizer, old: nn.Module, new: nn.Module, reports: Sequence[Any], **options: Any
) -> torch.optim.Optimizer:
    """:func:`carry_over_optimizer` after one or several transforms ``old`` -> ... -> ``new``.

    ``reports``: their MorphReports in order; renames (deepening wraps a module) and slice positions
    (widening) are composed name by name. ``options`` go to :func:`carry_over_optimizer`.
    """
    names = {n: n for n, _ in old.named_parameters()}  # old name -> current name
    positions: dict[str, tuple[torch.Tensor, ...]] = {}  # current name -> positions of the ORIGINAL entries
    fresh: set[str] = set()
    for report in reports:
        renamed = getattr(report, "renamed", {})
        names = {o: renamed.get(c, c) for o, c in names.items()}
        positions = {renamed.get(c, c): p for c, p in positions.items()}
        fresh = {renamed.get(c, c) for c in fresh} | set(report.new_param_names)
        for cur, grid in report.widened.items():
            prev = positions.get(cur)
            positions[cur] = grid if prev is None else tuple(g[p] for g, p in zip(grid, prev))
    old_params = {names[o]: p for o, p in old.named_parameters()}
    return carry_over_optimizer(opt, new, fresh, old_params=old_params, positions=positions, **options)
