"""What every transform returns: what changed, what it costs, and how exactly it preserved f."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from evoens_morph.flops import count_flops, count_params

DEFAULT_TOL = 1e-5


class MorphError(ValueError):
    """A transform was asked for something it cannot do, or an exact one failed its self-check."""


@dataclass
class MorphReport:
    """The outcome of one transform.

    ``new_param_names``: tensors that did not exist before (a new optimizer state is needed).
    ``widened``: name -> per-dim indices of the old entries in the grown tensor
    (``new[ix_(*pos)] == old``; BN buffers included). ``renamed``: parameters that moved (a
    deepened module is wrapped). ``max_abs_diff`` / ``max_abs_diff_train``: max |f_new(x) - f_old(x)|
    on the probe batch in eval / train mode. ``exact_modes``: the modes in which the scheme is
    function preserving by construction (checked against ``tol``).
    """

    transform: str
    site: str
    new_param_names: list[str]
    widened: dict[str, tuple[torch.Tensor, ...]]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_abs_diff: float
    max_abs_diff_train: float
    exact_modes: tuple[str, ...]
    tol: float = DEFAULT_TOL
    renamed: dict[str, str] = field(default_factory=dict)  # old -> new names of moved parameters

    @property
    def changed_param_names(self) -> list[str]:
        return sorted({*self.new_param_names, *self.widened})

    def check(self) -> MorphReport:
        """Raise :class:`MorphError` when an exact mode exceeded ``tol``; return self."""
        for mode, diff in (("eval", self.max_abs_diff), ("train", self.max_abs_diff_train)):
            if mode in self.exact_modes and not diff <= self.tol:
                raise MorphError(
                    f"{self.transform} at site '{self.site}' is not function preserving in {mode} mode: "
                    f"max|Δ| = {diff:.3g} > tol {self.tol:.3g} (a site that misses a consumer or a "
                    "non-per-channel module between producer and consumer?)"
                )
        return self


def output_diff(old: nn.Module, new: nn.Module, probe: torch.Tensor, mode: str) -> float:
    """max |new(probe) - old(probe)| in ``mode``; copies are used so BN running stats stay untouched."""
    a, b = copy.deepcopy(old).train(mode == "train"), copy.deepcopy(new).train(mode == "train")
    with torch.no_grad():
        return float((b(probe) - a(probe)).abs().max())


def make_report(
    transform: str,
    site: str,
    old: nn.Module,
    new: nn.Module,
    probe: torch.Tensor,
    *,
    new_param_names: list[str],
    widened: dict[str, tuple[torch.Tensor, ...]],
    exact_modes: tuple[str, ...],
    tol: float = DEFAULT_TOL,
    check: bool = True,
) -> MorphReport:
    shape = tuple(probe.shape[1:])
    report = MorphReport(
        transform=transform,
        site=site,
        new_param_names=sorted(new_param_names),
        widened=widened,
        params_before=count_params(old),
        params_after=count_params(new),
        flops_before=count_flops(old, shape),
        flops_after=count_flops(new, shape),
        max_abs_diff=output_diff(old, new, probe, "eval"),
        max_abs_diff_train=output_diff(old, new, probe, "train"),
        exact_modes=exact_modes,
        tol=tol,
    )
    return report.check() if check else report
