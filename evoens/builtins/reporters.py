"""Reporters: where per-generation statistics go. Each is a ``reporter`` provider chosen by the
config's ``reporters`` list; a progress bar joins them when stderr is a terminal. A reporter
that raises is named in a warning, switched off, and the run goes on."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evoens import Provider, hookimpl
from evoens.kinds import Reporter
from evoens.run import Run
from evoens.stash import StashKey

log = logging.getLogger("evoens")
ACTIVE = StashKey[dict[str, Reporter]]()  # the run's open sinks, by name


def _scalars(stats: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _generation(line: str) -> float:
    try:
        return json.loads(line)["generation"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class JsonlReporter:
    """One JSON object per generation in ``metrics.jsonl``."""

    def __init__(self, out_dir: Path, resume_at: int = 0) -> None:
        self.path = out_dir / "metrics.jsonl"
        if resume_at and self.path.exists():  # drop lines past the checkpoint (and a torn last line)
            kept = [line for line in self.path.read_text().splitlines() if _generation(line) < resume_at]
            self.path.write_text("".join(line + "\n" for line in kept))

    def report(self, generation: int, stats: dict[str, Any]) -> None:
        row = {"generation": generation, **_scalars(stats)}
        finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with self.path.open("a") as f:  # opened per line: a crash never leaks or truncates the file
            f.write(json.dumps(finite) + "\n")

    def close(self) -> None:
        pass


class TensorBoardReporter:
    """tensorboardX event files under ``DIR/tb``: one scalar per statistic and generation."""

    def __init__(self, out_dir: Path) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tb"))

    def report(self, generation: int, stats: dict[str, Any]) -> None:
        for key, value in _scalars(stats).items():
            self.writer.add_scalar(key, value, generation)

    def close(self) -> None:
        self.writer.close()


class PlotReporter:
    """``DIR/fitness.png``: best, mean and median fitness (and test accuracy) per generation."""

    CURVES = ("best_fitness", "mean_fitness", "median_fitness")

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "fitness.png"
        self.history: list[tuple[int, dict[str, float]]] = []

    def report(self, generation: int, stats: dict[str, Any]) -> None:
        self.history.append((generation, _scalars(stats)))

    def close(self) -> None:
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, acc) = plt.subplots(1, 2, figsize=(10, 4))
        for key in self.CURVES:
            ax.plot([g for g, s in self.history if key in s], [s[key] for _, s in self.history if key in s], label=key)
        tested = [(g, s["test_accuracy"]) for g, s in self.history if "test_accuracy" in s]
        if tested:
            acc.plot(*zip(*tested), marker="o", label="test accuracy")
            acc.legend()
        ax.set(xlabel="generation", ylabel="fitness")
        acc.set(xlabel="generation", ylabel="accuracy")
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.path, dpi=100)
        plt.close(fig)


class ProgressReporter:
    """A tqdm bar over the generations, showing the best fitness."""

    def __init__(self, total: int, initial: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="gen", dynamic_ncols=True, file=sys.stderr)

    def report(self, generation: int, stats: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            {k: f"{v:.4g}" for k, v in _scalars(stats).items() if k in ("best_fitness", "test_accuracy")}
        )

    def close(self) -> None:
        self.bar.close()


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    yield Provider(
        "reporter",
        "jsonl",
        lambda run: JsonlReporter(run.out_dir, run.generation),
        "DIR/metrics.jsonl, a line per generation",
    )
    yield Provider(
        "reporter", "tensorboard", lambda run: TensorBoardReporter(run.out_dir), "tensorboardX events in DIR/tb"
    )
    yield Provider("reporter", "plot", lambda run: PlotReporter(run.out_dir), "DIR/fitness.png, written at the end")
    yield Provider(
        "reporter",
        "progress",
        lambda run: ProgressReporter(run.config.generations, run.generation),
        "a progress bar on stderr",
    )


@hookimpl
def evoens_run_start(run: Run) -> None:
    names = list(run.config.reporters)
    if sys.stderr.isatty() and "progress" not in names:
        names.append("progress")
    active: dict[str, Reporter] = {}
    run.stash[ACTIVE] = active  # filled one by one: run_end closes whatever was opened
    for name in names:
        active[name] = run.registry.create("reporter", name, run)


@hookimpl
def evoens_report(run: Run, generation: int, stats: dict[str, Any]) -> None:
    active = run.stash.get(ACTIVE, {})
    for name, reporter in list(active.items()):
        try:
            reporter.report(generation, stats)
        except Exception as exc:
            log.warning(
                "reporter '%s' failed at generation %d: %r; it is switched off, the run continues",
                name,
                generation,
                exc,
            )
            run.summary.setdefault("reporter_errors", []).append(f"{name}: {exc!r}")
            del active[name]


@hookimpl
def evoens_run_end(run: Run) -> None:
    for reporter in run.stash.pop(ACTIVE, {}).values():
        reporter.close()
