"""A run's candidates judged as an ensemble on whole splits: streamed, one batched forward per
species and chunk (:class:`evoens.candidates.Candidates`), metrics from :mod:`evoens_ensemble.metrics`.

The ensemble is every candidate the trainer offers, equally weighted, or (``selection > 0``) the
members picked by greedy forward selection with replacement on the validation split (Caruana et
al., ICML 2004), weighted by how often they were picked. Pure torch, no pluggy.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor

from evoens.candidates import Candidates
from evoens.datasets import Split
from evoens_ensemble.fitness import caruana_select
from evoens_ensemble.metrics import EnsembleMetrics, as_floats

REPORTED = ("accuracy", "nll", "brier", "ece")


@torch.no_grad()
def split_metrics(candidates: Candidates, split: Split, combiner: str, chunk: int = 1024) -> dict[str, Tensor]:
    """Member and ensemble metrics of ``candidates`` on a whole split, in chunks of examples."""
    acc = EnsembleMetrics(combiner)
    for start in range(0, len(split.y), chunk):
        x, y = split.x[start : start + chunk], split.y[start : start + chunk]
        acc.update(candidates.logits(x), y)  # (P, b, C)
    return acc.compute()


@torch.no_grad()
def split_logits(candidates: Candidates, split: Split, chunk: int = 1024) -> Tensor:
    """Every member's logits on a whole split: ``(P, N, C)`` (for selection on a validation split)."""
    return torch.cat([candidates.logits(split.x[s : s + chunk]) for s in range(0, len(split.y), chunk)], dim=1)


def selected(candidates: Candidates, val: Split, size: int, combiner: str) -> Candidates:
    """Caruana selection of ``size`` picks on ``val``: the picked members, each repeated as often as
    it was picked (so an equal-weight ensemble of the result is the weighted one)."""
    picks = caruana_select(split_logits(candidates, val), val.y, size, combiner)
    return candidates.select(sorted(picks, key=lambda i: (-Counter(picks)[i], i)))


def judge(
    candidates: Candidates, val: Split, test: Split, combiner: str, selection: int = 0, ood: Split | None = None
) -> dict[str, Any]:
    """``summary.json``'s ``ensemble`` entry: the ensemble's and the best member's accuracy, NLL,
    Brier and ECE on val, test and (given one) a shifted test split ``ood`` (the best member:
    highest validation accuracy)."""
    judge_split = val if len(val.y) else test
    if selection:
        candidates = selected(candidates, judge_split, selection, combiner)
    splits = {"val": judge_split, "test": test, **({"ood": ood} if ood is not None else {})}
    found = {name: split_metrics(candidates, s, combiner) for name, s in splits.items()}
    best = int(found["val"]["member_accuracy"].argmax())
    entry: dict[str, Any] = {"combiner": combiner, "members": list(candidates.names), "selection": selection}
    for name, m in found.items():
        floats = as_floats(m)
        entry[name] = {k: floats[k] for k in REPORTED}
        entry[f"best_member_{name}"] = {k: floats[f"member_{k}"][best] for k in REPORTED}  # type: ignore[index]
    entry["best_member"] = candidates.names[best]
    return entry
