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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evoens import __version__


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


def run_suite(
    factory: Callable[..., BenchResult], name: str, *, quick: bool, out: Path, device: torch.device
) -> dict[str, Any]:
    """Run one suite and write its JSON, markdown and plot into ``out``; return the JSON payload."""
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    result = factory(quick=quick, device=device, env=env)
    command = f"evoens bench {name}{' --quick' if quick else ''} --device {device.type}"
    payload = {
        "suite": name,
        "quick": quick,
        "command": command,
        "environment": env,
        "rows": result.rows,
        "notes": result.notes,
    }
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result, env, command))
    if result.plot is not None:
        result.plot(out / f"{name}.png")
    return payload
