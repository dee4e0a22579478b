"""The benchmark harness behind ``evoens bench``.

A suite is a ``benchmark`` provider whose factory takes ``(quick, device, env)`` and returns a
:class:`BenchResult`. The harness measures the machine's sgemm peak in the same process (so
every GFLOP/s figure can be read as a fraction of it), then writes ``DIR/NAME.json`` (the
environment and the rows), ``DIR/NAME.md`` (a table and the suite's notes) and, where the suite
draws one, ``DIR/NAME.png``. Suites report ratios measured in one run; absolute times only mean
something on the machine named in the JSON.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from evoens import __version__
from evoens.engine import torch_threads  # noqa: F401  (re-exported: suites run many tiny ops in one thread)
from evoens.memory import leaf_modules
from evoens.population import STRATEGIES, Population, UnsupportedInput


@dataclass
class BenchResult:
    """What a suite returns: table rows (dicts keyed by ``columns``), notes, an optional plot."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    plot: Callable[[Path], None] | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int = 3, budget_s: float = 5.0) -> float:
    """Median seconds of ``fn()`` after one warm-up; fewer repeats when one call is slow."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(max(1, min(repeats, int(budget_s / max(first, 1e-9))))):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def sgemm_peak(device: torch.device, n: int = 2048) -> float:
    """GFLOP/s of an n x n float32 matmul on ``device``: the ceiling the suites compare against."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = time_call(lambda: a @ b, device, repeats=5)
    return 2 * n**3 / seconds / 1e9


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "evoens": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "sgemm_gflops": round(sgemm_peak(device), 1),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def markdown(result: BenchResult, env: dict[str, Any], command: str) -> str:
    lines = [f"# {result.title}", "", f"`{command}`", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()] + [""]
    lines.append("| " + " | ".join(result.columns) + " |")
    lines.append("|" + "---|" * len(result.columns))
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in result.columns) + " |" for row in result.rows]
    if result.notes:
        lines += ["", *result.notes]
    return "\n".join(lines) + "\n"


_RUNNING: dict[str, Any] = {}  # the suite run_suite runs: name, started, expected, last (monotonic), parts
HEARTBEAT_SECONDS = 30.0
"""A suite that printed nothing for this long gets a line saying it still runs."""
COMMITTED_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
"""The results committed with a source checkout (absent from a wheel): estimates when ``--out`` is elsewhere."""


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    _RUNNING["last"] = time.monotonic()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _so_far(now: float, since: float) -> str:
    """``1m10s in`` since the suite started (else ``since``), ``of about 2m46s`` where a run was recorded."""
    expected = _RUNNING.get("expected")
    about = f" of about {_duration(expected)}" if expected else ""
    return f"{_duration(now - _RUNNING.get('started', since))} in{about}"


_T = TypeVar("_T")


def cells(items: Iterable[_T], describe: Callable[[_T], str] = str) -> Iterator[_T]:
    """A suite's grid, one progress line on stderr before each cell: ``bench NAME: cell 2/6 MLP
    P=256 (14s in, about 40s left)``: the time since the suite started and, from the mean of the
    cells so far, the grid's time left. Inside :func:`part` the line names the part: ``bench NAME:
    b ensemble vs wide > cell 2/3 ... (1m10s in, about 20s left in b ensemble vs wide)``."""
    grid = list(items)
    started = time.monotonic()
    parts = list(_RUNNING.get("parts", ()))
    where, within = "".join(f"{p} > " for p in parts), f" in {parts[-1]}" if parts else ""
    for k, item in enumerate(grid):
        now = time.monotonic()
        left = f", about {_duration((now - started) / k * (len(grid) - k))} left{within}" if k else ""
        elapsed = _duration(now - _RUNNING.get("started", started))
        _say(f"bench {_RUNNING.get('name', 'suite')}: {where}cell {k + 1}/{len(grid)} {describe(item)} "
             f"({elapsed} in{left})")  # fmt: skip
        yield item


@contextmanager
def part(label: str) -> Iterator[None]:
    """A named part of a suite, ``with part("b ensemble vs wide"):``: a line as it starts, ``bench
    NAME: part b ensemble vs wide (1m10s in of about 2m46s)``; the :func:`cells` inside name it."""
    parts = _RUNNING.setdefault("parts", [])
    parts.append(label)
    now = time.monotonic()
    _say(f"bench {_RUNNING.get('name', 'suite')}: part {' > '.join(parts)} ({_so_far(now, now)})")
    try:
        yield
    finally:
        parts.pop()


def _roots(out: Path) -> list[Path]:
    """``out`` and, when it is another folder, the committed results."""
    return [out] + ([COMMITTED_RESULTS] if COMMITTED_RESULTS.resolve() != out.resolve() else [])


def recorded_seconds(name: str, quick: bool, out: Path) -> tuple[float, Path] | None:
    """How long the newest recorded run of suite ``name`` in this mode took (``wall_seconds`` of a
    ``NAME.json`` in ``out``, in the committed results, or a folder below either, e.g.
    benchmarks/results/cpu-2core-quick/), and where."""
    found = []
    for root in _roots(out):
        for path in [root / f"{name}.json", *sorted(root.glob(f"*/{name}.json"))]:
            try:
                payload = json.loads(path.read_text())
                seconds = payload["wall_seconds"]
                if payload.get("quick") == quick and isinstance(seconds, (int, float)):
                    found.append((path.stat().st_mtime, float(seconds), path))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
    return max(found)[1:] if found else None


def _estimate(name: str, quick: bool, out: Path) -> tuple[str, float | None]:
    """The up-front line and the expected seconds (None: no run in this mode recorded)."""
    mode = " --quick" if quick else ""
    recorded = recorded_seconds(name, quick, out)
    if recorded:
        seconds, path = recorded
        return f"bench {name}{mode}: about {_duration(seconds)} (its last run took that: {path})", seconds
    shorter = None if quick else recorded_seconds(name, True, out)
    if shorter:
        return (f"bench {name}: no run in this mode recorded; its --quick run took {_duration(shorter[0])} "
                f"({shorter[1]}), this mode takes longer", None)  # fmt: skip
    where = " or ".join(str(root) for root in _roots(out))
    return f"bench {name}{mode}: no earlier run recorded in {where} to estimate its duration from", None


@contextmanager
def _heartbeat(name: str) -> Iterator[None]:
    """A line every HEARTBEAT_SECONDS in which the suite printed nothing, until the block ends."""
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(1.0):
            now = time.monotonic()
            if now - _RUNNING.get("last", started) >= HEARTBEAT_SECONDS:
                _say(f"bench {name}: still running, {_so_far(now, started)}")

    thread = threading.Thread(target=beat, name=f"bench-{name}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_suite(
    factory: Callable[..., BenchResult], name: str, *, quick: bool, out: Path, device: torch.device
) -> dict[str, Any]:
    """Run one suite and write its JSON, markdown and plot into ``out``; return the JSON payload.

    Says up front how long the suite's last recorded run in this mode took (its estimated duration),
    then its progress: a line per :func:`part` and per cell where the suite iterates :func:`cells`,
    and a line every ``HEARTBEAT_SECONDS`` of silence otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    mode = " --quick" if quick else ""
    line, expected = _estimate(name, quick, out)
    _RUNNING.clear()
    _RUNNING.update(name=name, started=time.monotonic(), expected=expected)
    _say(line)
    started = time.perf_counter()
    try:
        with _heartbeat(name):
            env = environment(device)
            result = factory(quick=quick, device=device, env=env)
    finally:
        _RUNNING.clear()  # cells outside a run name no suite and time their own grid
    command = f"evoens bench {name}{mode} --device {device.type}"
    payload = {
        "suite": name,
        "quick": quick,
        "command": command,
        "environment": env,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": result.rows,
        "notes": result.notes,
    }
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result, env, command))
    if result.plot is not None:
        result.plot(out / f"{name}.png")
    return payload


def benchmark_strategies(
    template: nn.Module,
    P: int,
    batch: int,
    repeats: int = 5,
    *,
    input_shape: tuple[int, ...] | None = None,
    device: torch.device | str | None = None,
    per_member: bool = False,
) -> dict[str, float]:
    """Median seconds per forward (no grad) for each strategy that runs ``template`` on this input."""
    if input_shape is None:
        first = next((m for m in leaf_modules(template) if next(m.parameters(), None) is not None), None)
        if not isinstance(first, nn.Linear):
            raise ValueError("cannot infer the input shape: pass input_shape=(...) per sample")
        input_shape = (first.in_features,)
    pop = Population.from_module(template, P, generator=torch.Generator().manual_seed(0))
    pop = pop.to(device) if device is not None else pop
    shape = (P, batch, *input_shape) if per_member else (batch, *input_shape)
    x = torch.randn(shape, device=pop.device, dtype=pop.dtype)

    def run(name: str) -> Tensor:
        return pop(x, strategy=name, per_member=per_member)

    names = []
    with torch.no_grad():
        for name, strat in STRATEGIES.items():
            if strat.supports(template):
                try:
                    run(name)  # warm-up (allocator, first-call overheads); drops input-unsupported
                    names.append(name)
                except UnsupportedInput:
                    pass
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(repeats):  # interleaved rounds: a load change hits every strategy alike
            for name in names:
                synchronize(pop.device)
                t0 = time.perf_counter()
                run(name)
                synchronize(pop.device)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}
