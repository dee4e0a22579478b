"""What a sizing run reports: per-member size and accuracy, the size-accuracy Pareto front across
lambda, and per-layer capacity curves for tensorboardX. Pure torch/matplotlib, no pluggy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (size, accuracy) points no other point beats (smaller or equal size and
    higher or equal accuracy, one of them strictly), by increasing size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "size vs accuracy") -> None:
    """Scatter ``rows`` (``size``, ``accuracy``, ``lam``) with their front, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    lams = sorted({r["lam"] for r in rows})
    for lam in lams:
        pts = [(r["size"], r["accuracy"]) for r in rows if r["lam"] == lam]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, label=f"λ={lam:g}")
    points = [(r["size"], r["accuracy"]) for r in rows]
    front = [points[i] for i in pareto_front(points)]
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=0.8, label="front")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("live hidden units")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class CapacityWriter:
    """tensorboardX: per layer one chart of every member's capacity (and dead units when known)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)  # a resumed run rewrites its steps

    def report(self, generation: int, stats: dict[str, Any]) -> None:
        groups: dict[str, dict[str, float]] = {}
        for key, value in stats.items():
            parts = key.split("/")
            if parts[0] == "capacity" and len(parts) == 3:
                groups.setdefault(f"capacity/{parts[1]}", {})[parts[2]] = float(value)
            elif parts[0] == "dead" and len(parts) == 2:
                groups.setdefault("dead", {})[parts[1]] = float(value)
        for tag, values in groups.items():
            self.writer.add_scalars(tag, values, generation)

    def close(self) -> None:
        self.writer.close()
