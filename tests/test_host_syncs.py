"""A generation's hot path makes no host synchronisation: fitness stays on the device until the
loop reports it (one transfer). Checked on the CPU by recording every tensor -> Python
conversion (``item``, ``tolist``, ``bool``, ``float``, ``int``, ``cpu``, ``numpy``), which on a
GPU is exactly what would block; torch.optim's CPU step counters are not device syncs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import evoens.evolution
import evoens.gradient
from evoens.testing import run_inline, tiny_config

CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records conversions made inside trainers' ``step`` (the per-generation hot path)."""
    seen: list[str] = []
    inside = [False]

    def recording(name: str, original: Any) -> Any:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if inside[0]:
                import traceback

                caller = traceback.extract_stack(limit=2)[0]  # the converting line
                if "torch/optim/" not in caller.filename:
                    seen.append(f"{name} at {caller.filename}:{caller.lineno}")
            return original(self, *args, **kwargs)

        return method

    for name in CONVERSIONS:
        monkeypatch.setattr(torch.Tensor, name, recording(name, getattr(torch.Tensor, name)))
    for cls in (evoens.evolution.EvolutionTrainer, evoens.gradient.GradientTrainer):
        original_step = cls.step

        def step(self: Any, generation: int, evaluate: Any, _original: Any = original_step) -> Any:
            inside[0] = True
            try:
                return _original(self, generation, evaluate)
            finally:
                inside[0] = False

        monkeypatch.setattr(cls, "step", step)
    yield seen


@pytest.mark.parametrize(
    "trainer", [{"searcher": "snes"}, {"searcher": "pgpe"}, {"searcher": "cem"}, {"name": "gradient"}]
)
def test_a_generation_converts_nothing_to_python(tmp_path: Path, conversions: list[str], trainer: dict) -> None:
    # eval_every beyond the run: held-out accuracy (a report, at the last generation) is skipped
    config = tiny_config(generations=4, eval_every=1000, trainer={**trainer, "popsize": 8})
    summary = run_inline(config, tmp_path)
    assert summary["generations"] == 4
    last_generation_report = [c for c in conversions if "evoens/run.py" in c]
    assert [c for c in conversions if c not in last_generation_report] == []


def test_the_best_solution_is_tracked_on_the_device(tmp_path: Path) -> None:
    config = tiny_config(generations=3, trainer={"searcher": "snes", "popsize": 8})
    pm_summary = run_inline(config, tmp_path)
    stats = pm_summary["final_stats"]
    assert stats["best_ever_fitness"] >= stats["best_fitness"]
    assert pm_summary["selected"] in {"best", "center"}
