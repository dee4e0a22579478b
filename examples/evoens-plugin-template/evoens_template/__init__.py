"""An example evoens plugin.

It contributes one provider (the ``margin`` fitness: mean logit margin of the true class) and
implements three hooks: it writes one line per generation to ``RUN_DIR/template_report.txt``
and adds the number of generations it saw to ``summary.json``.

Select its fitness with ``trainer.fitness = "margin"``; turn it off with ``-p no:template``.
"""

from __future__ import annotations

from typing import Any

import torch

from evoens import Provider, hookimpl


def margin(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of (true-class logit - best other logit): ``(P, B, C), (B,) -> (P,)``."""
    true = outputs.gather(-1, targets.expand(outputs.shape[0], -1).unsqueeze(-1)).squeeze(-1)  # (P, B)
    others = outputs.scatter(-1, targets.expand(outputs.shape[0], -1).unsqueeze(-1), float("-inf"))
    return (true - others.max(dim=-1).values).mean(dim=1)  # (P,)


@hookimpl
def evoens_register_providers() -> list[Provider]:
    return [Provider("fitness", "margin", lambda: margin, "mean logit margin of the true class")]


@hookimpl
def evoens_report(run: Any, generation: int, stats: dict[str, Any]) -> None:
    with (run.out_dir / "template_report.txt").open("a") as f:
        f.write(f"generation {generation} best {stats['best_fitness']:.6f}\n")


@hookimpl
def evoens_summary(run: Any) -> dict[str, Any]:
    lines = (run.out_dir / "template_report.txt").read_text().splitlines()
    return {"template_plugin": {"generations_seen": len(lines)}}
