"""Reporters: where per-generation statistics go. Each is a ``reporter`` provider chosen by the
config's ``reporters`` list; a progress bar joins them when stderr is a terminal, and a line
every ``progress_seconds`` (the ``log`` reporter) when it is not (a batch job, a CI log). A
reporter that raises is named in a warning, switched off, and the run goes on."""

from __future__ import annotations

import errno
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evoens import Provider, hookimpl
from evoens.errors import PluginError
from evoens.kinds import Reporter
from evoens.population import watch_chunks
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
        line = (json.dumps(finite) + "\n").encode()
        # one unbuffered write of the whole line: a crash leaves whole lines (or, at worst during the
        # write itself, a torn tail that the next resume drops), never a line split across writes;
        # a short write (a full disk) is taken back, so the file still ends in a whole line
        with self.path.open("ab", buffering=0) as f:
            size = f.tell()
            try:
                written = f.write(line)
            except OSError:
                f.truncate(size)
                raise
            if written != len(line):
                f.truncate(size)
                raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes written", str(self.path))

    def close(self) -> None:
        pass


class TensorBoardReporter:
    """tensorboardX event files under ``DIR/tb``: one scalar per statistic and generation. A
    resumed run purges the steps from its checkpoint on (written before a crash or ``kill -9``),
    so every step is in the events exactly once."""

    def __init__(self, out_dir: Path, resume_at: int = 0) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=resume_at or None)

    def report(self, generation: int, stats: dict[str, Any]) -> None:
        for key, value in _scalars(stats).items():
            self.writer.add_scalar(key, value, generation)

    def close(self) -> None:
        self.writer.close()


class PlotReporter:
    """``DIR/fitness.png``: the best fitness per generation over a band from the worst to the best
    member (the median inside it), and validation/test accuracy at the evaluation points on a
    second axis; titled with the config's name, trainer (or searcher) and population size."""

    def __init__(self, out_dir: Path, title: str = "") -> None:
        self.path = out_dir / "fitness.png"
        self.title = title
        self.history: list[tuple[int, dict[str, float]]] = []

    def report(self, generation: int, stats: dict[str, Any]) -> None:
        self.history.append((generation, _scalars(stats)))

    def _series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(g, s[key]) for g, s in self.history if key in s and math.isfinite(s[key])]
        return [g for g, _ in points], [v for _, v in points]

    def close(self) -> None:
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=(8, 4.5))
        band = [
            (g, s["worst_fitness"], s["best_fitness"])
            for g, s in self.history
            if math.isfinite(s.get("worst_fitness", math.nan)) and math.isfinite(s.get("best_fitness", math.nan))
        ]
        if band:
            gens, low, high = zip(*band)
            ax.fill_between(gens, low, high, color="tab:blue", alpha=0.2, linewidth=0, label="worst..best member")
        ax.plot(*self._series("median_fitness"), color="tab:blue", linewidth=0.8, alpha=0.6, label="median")
        ax.plot(*self._series("best_fitness"), color="tab:blue", linewidth=1.8, label="best fitness")
        ax.set(xlabel="generation", ylabel="fitness")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = ax.get_legend_handles_labels()
        evaluated = [(key, self._series(key)) for key in ("val_accuracy", "test_accuracy")]
        if any(gens for _, (gens, _) in evaluated):
            acc = ax.twinx()
            for (key, (gens, values)), color in zip(evaluated, ("tab:orange", "tab:green")):
                if gens:
                    acc.plot(gens, values, marker="o", color=color, label=key.replace("_", " "))
            measured = [v for _, (_, values) in evaluated for v in values]
            acc.set_ylim(max(0.0, min(measured) - 0.02), min(1.0, max(measured) + 0.02))
            acc.set_ylabel("accuracy")
            more_handles, more_labels = acc.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax.legend(handles, labels, loc="lower right", fontsize="small")
        if self.title:
            ax.set_title(self.title)
        fig.tight_layout()
        fig.savefig(self.path, dpi=100)
        plt.close(fig)


def plot_title(run: Run) -> str:
    """``quickstart: evolution/pgpe, popsize 128`` (the searcher only for the evolution trainer)."""
    trainer = run.config.trainer
    how = f"{trainer.name}/{trainer.searcher}" if trainer.name == "evolution" else trainer.name
    return f"{run.out_dir.name}: {how}, popsize {trainer.popsize}"


class LogReporter:
    """One line on stderr every ``every`` seconds (the first after the first generation):
    generation, best fitness, generations per second and the estimated time left. For runs whose
    stderr is not a terminal (batch jobs, CI logs), where a progress bar would be noise."""

    def __init__(self, total: int, initial: int, every: float, name: str = "") -> None:
        self.total, self.initial, self.every, self.name = total, initial, every, name
        self.started = time.monotonic()
        self.last: float | None = None

    def report(self, generation: int, stats: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.every:
            return
        self.last = now
        done = generation + 1
        rate = (done - self.initial) / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        best = _scalars(stats).get("best_fitness", math.nan)
        where = f" {self.name}" if self.name else ""
        print(
            f"evoens{where}: generation {done}/{self.total}  best_fitness {best:.4g}  "
            f"{rate:.3g} gen/s  ETA {_duration(eta)}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


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


LONG_SECONDS = 20.0
"""A first generation whose population forward is estimated to take longer gets one line saying so."""


class FirstCost:
    """Watches the chunks of the first population forwards of a run's first generation (see
    :func:`evoens.population.watch_chunks`) and, once one forward has run a chunk or two, estimates
    that forward's cost; when it will plainly take long, prints one line with the estimate and the
    keys that make it shorter. Measured, not modelled: the time of the second chunk (the first
    pays one-time costs) times the chunks planned."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.marks: list[float] = []
        self.done = False

    def __call__(self, index: int, chunks: int) -> None:
        if self.done:
            return
        now = time.perf_counter()
        if index == 0:  # a new forward
            self.marks = [now]
            return
        self.marks.append(now)
        if chunks > 2 and len(self.marks) == 2 and now - self.marks[0] < 0.5:
            return  # a short first chunk may be mostly one-time costs: take the second one's time
        per_chunk = self.marks[-1] - self.marks[-2]
        self.done = True
        if per_chunk * chunks >= LONG_SECONDS:
            print(self.line(per_chunk, chunks), file=sys.stderr, flush=True)

    def line(self, per_chunk: float, chunks: int) -> str:
        cfg, data = self.run.config, self.run.data
        batch = cfg.data.batch_size or len(data.train.y)
        now = f"now {cfg.data.batch_size}" if cfg.data.batch_size else f"now 0, the whole training split of {batch:,}"
        auto = (
            "; with trainer.strategy = 'auto' it first times each forward strategy on it, a few times that"
            if cfg.trainer.strategy == "auto"
            else ""
        )
        return (
            f"evoens {self.run.out_dir.name}: generation {self.run.generation} will take long: one forward of the "
            f"population ({cfg.trainer.popsize:,} members x {batch:,} samples) runs {chunks:,} chunks of about "
            f"{per_chunk:.2g} s, about {_duration(per_chunk * chunks)}{auto}; lower data.batch_size ({now}) or "
            f"trainer.popsize (now {cfg.trainer.popsize:,}) to make it shorter"
        )


COST = StashKey[Any]()  # removes the FirstCost watcher


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    yield Provider(
        "reporter",
        "jsonl",
        lambda run: JsonlReporter(run.out_dir, run.generation),
        "DIR/metrics.jsonl, a line per generation",
    )
    yield Provider(
        "reporter",
        "tensorboard",
        lambda run: TensorBoardReporter(run.out_dir, run.generation),
        "tensorboardX events in DIR/tb",
    )
    yield Provider(
        "reporter",
        "plot",
        lambda run: PlotReporter(run.out_dir, plot_title(run)),
        "DIR/fitness.png, written at the end",
    )
    yield Provider(
        "reporter",
        "progress",
        lambda run: ProgressReporter(run.config.generations, run.generation),
        "a progress bar on stderr",
    )
    yield Provider(
        "reporter",
        "log",
        lambda run: LogReporter(
            run.config.generations, run.generation, run.config.progress_seconds or 30.0, run.out_dir.name
        ),
        "a progress line on stderr every progress_seconds (default 30 s)",
    )


@hookimpl
def evoens_run_start(run: Run) -> None:
    run.stash[COST] = watch_chunks(FirstCost(run))
    names = list(run.config.reporters)
    if sys.stderr.isatty():
        if "progress" not in names:
            names.append("progress")
    elif run.config.progress_seconds and "log" not in names:
        names.append("log")
    active: dict[str, Reporter] = {}
    run.stash[ACTIVE] = active  # filled one by one: run_end closes whatever was opened
    for name in names:
        provider = run.registry.get("reporter", name)
        try:
            active[name] = provider.factory(run)
        except Exception as exc:  # named by the reporter's own plugin, not by this one
            raise PluginError(
                f"reporter '{name}' (plugin '{provider.plugin}') failed to start: {type(exc).__name__}: {exc}; "
                f"fix it, or leave '{name}' out of the config's reporters"
            ) from exc


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
def evoens_generation_end(run: Run) -> None:
    run.stash.pop(COST, lambda: None)()  # the first generation is over


@hookimpl
def evoens_run_end(run: Run) -> None:
    run.stash.pop(COST, lambda: None)()
    for reporter in run.stash.pop(ACTIVE, {}).values():
        reporter.close()
