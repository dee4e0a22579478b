"""Part (b) of the ``morph`` suite: transform in the middle of training vs the bigger net from scratch.

The R2R paper (§6, Table 2) and the cs231n report (widen at update 4500 of 6000 in 136 s vs +44 s
from scratch) compare a student grown from a teacher mid-training with the same architecture trained
from scratch. Here: a small MNIST CNN trains for ``steps/2`` Adam steps, is widened (both conv volumes
×2) or deepened (one block per conv stage), and trains ``steps/2`` more with its optimizer state
carried over (:func:`~evoens_morph.optim.carry_over_from_reports`). The big architecture from scratch
trains for the SAME training time as the grown run. Test accuracy is logged against seconds of training
only (evaluation pauses the clock). On CUDA the clock is wall time; on CPU it is the CPU time of the one
training thread (``time.thread_time``): on a shared machine wall time mostly measures the other jobs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from evoens_morph.families import cnn
from evoens_morph.flops import count_flops
from evoens_morph.mutations import OPERATORS, MorphOptions
from evoens_morph.optim import carry_over_from_reports
from evoens_morph.sites import deepen_points, widen_sites
from torch import nn

from evoens.bench import cells

Grow = Callable[[nn.Module, torch.Tensor, torch.Generator], tuple[nn.Module, list[Any]]]


def clock_for(device: torch.device) -> Callable[[], float]:
    """The training clock: wall time on a GPU (kernels run asynchronously), this thread's CPU time
    on a CPU (so other load on a shared machine does not count)."""
    return time.perf_counter if device.type == "cuda" else time.thread_time


@dataclass(frozen=True)
class TrainSizes:
    steps: int = 1600  # total Adam steps of a grown run (transform at steps // 2)
    batch: int = 64
    eval_every: int = 100
    test_size: int = 5000
    channels: tuple[int, int] = (4, 8)
    lr: float = 1e-3


@dataclass
class Curve:
    name: str
    points: list[tuple[float, int, float]]  # (train wall s, step, test accuracy)
    extra: dict[str, Any]


class Trainer:
    def __init__(self, data: Any, sizes: TrainSizes, device: torch.device, seed: int = 0) -> None:
        self.sizes, self.device = sizes, device
        self.x, self.y = data.train.x.to(device), data.train.y.to(device)
        self.tx, self.ty = data.test.x[: sizes.test_size].to(device), data.test.y[: sizes.test_size].to(device)
        self.seed = seed

    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            correct = sum(
                int((model(self.tx[i : i + 1000]).argmax(1) == self.ty[i : i + 1000]).sum())
                for i in range(0, len(self.ty), 1000)
            )
        model.train()
        return correct / len(self.ty)

    def run(
        self, model: nn.Module, opt: torch.optim.Optimizer, curve: Curve, *, steps: int | None, wall: float | None,
        start_step: int = 0, start_wall: float = 0.0, gen: torch.Generator,
    ) -> tuple[int, float]:  # fmt: skip
        """Train until ``steps`` more steps or ``wall`` total seconds; return (step, wall)."""
        step, clock = start_step, start_wall
        now = clock_for(self.device)
        model.train()
        while (steps is None or step < start_step + steps) and (wall is None or clock < wall):
            t0 = now()
            idx = torch.randint(0, len(self.y), (self.sizes.batch,), generator=gen).to(self.device)
            loss = nn.functional.cross_entropy(model(self.x[idx]), self.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            clock += now() - t0
            step += 1
            if step % self.sizes.eval_every == 0:
                curve.points.append((clock, step, self.accuracy(model)))
        return step, clock


def final_accuracy(curve: Curve, last: int = 3) -> float:
    """Mean test accuracy of the last ``last`` evaluations: one evaluation swings by ~0.5 points."""
    accs = [acc for _, _, acc in curve.points[-last:]]
    return sum(accs) / len(accs)


def _small(sizes: TrainSizes, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return cnn((1, 28, 28), sizes.channels, hidden=32).to(device)


def widen_all(op: str, lr_rule: str = "keep") -> Grow:
    """Widen every conv volume ×2 with ``op`` (R2R-style: + C new channels each)."""

    def grow(model: nn.Module, probe: torch.Tensor, gen: torch.Generator) -> tuple[nn.Module, list[Any]]:
        reports = []
        for site in [s for s, v in widen_sites(model).items() if isinstance(model.get_submodule(s), nn.Conv2d)]:
            c = model.get_submodule(site).out_channels
            model, report = OPERATORS[op](model, site, MorphOptions(amount=c, probe=probe, check=False), gen)
            reports.append(report)
        return model, reports

    grow.lr_rule = lr_rule  # type: ignore[attr-defined]
    return grow


def deepen_all(op: str) -> Grow:
    """Insert one block after each conv stage's ReLU."""

    def grow(model: nn.Module, probe: torch.Tensor, gen: torch.Generator) -> tuple[nn.Module, list[Any]]:
        reports = []
        points = [p for p, d in deepen_points(model).items() if not d.linear]
        for point in reversed(points):  # right to left: earlier paths stay valid
            model, report = OPERATORS[op](model, point, MorphOptions(probe=probe, check=False), gen)
            reports.append(report)
        return model, reports

    grow.lr_rule = "keep"  # type: ignore[attr-defined]
    return grow


def grown_run(trainer: Trainer, name: str, grow: Grow | None) -> tuple[Curve, nn.Module]:
    """Teacher for steps/2, transform, student for steps/2 with the carried-over optimizer."""
    s = trainer.sizes
    gen = torch.Generator().manual_seed(trainer.seed)
    model = _small(s, trainer.device)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    curve = Curve(name, [(0.0, 0, trainer.accuracy(model))], {})
    step, clock = trainer.run(model, opt, curve, steps=s.steps // 2, wall=None, gen=gen)
    curve.extra["acc_at_mid"] = trainer.accuracy(model)
    if grow is not None:
        now = clock_for(trainer.device)
        t0 = now()
        old = model
        probe = trainer.x[: s.batch]
        model, reports = grow(model, probe, gen)
        opt = carry_over_from_reports(opt, old, model, reports, lr_rule=grow.lr_rule)  # type: ignore[attr-defined]
        transform_s = now() - t0  # the transform and the optimizer carry-over, not the evaluation below
        clock += transform_s
        curve.extra.update(
            transform_at=clock,
            acc_after_transform=trainer.accuracy(model),
            max_abs_diff_eval=max(r.max_abs_diff for r in reports),
            max_abs_diff_train=max(r.max_abs_diff_train for r in reports),
            transform_s=transform_s,
        )
    trainer.run(model, opt, curve, steps=s.steps - step, wall=None, start_step=step, start_wall=clock, gen=gen)
    curve.extra["final_test_acc"] = final_accuracy(curve)
    curve.extra["wall"] = curve.points[-1][0]
    return curve, model


def scratch_run(trainer: Trainer, name: str, template: nn.Module, wall: float, flop_steps: int) -> Curve:
    """``template``'s architecture, freshly initialised, trained for ``wall`` seconds and at least
    ``flop_steps`` steps (the grown run's training FLOPs); accuracy is read at both budgets."""
    torch.manual_seed(1)
    model = copy.deepcopy(template)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    gen = torch.Generator().manual_seed(trainer.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=trainer.sizes.lr)
    curve = Curve(name, [(0.0, 0, trainer.accuracy(model))], {})
    step, clock = trainer.run(model, opt, curve, steps=None, wall=wall, gen=gen)
    curve.points.append((clock, step, trainer.accuracy(model)))
    time_steps = step
    if step < flop_steps:
        step, clock = trainer.run(model, opt, curve, steps=flop_steps - step, wall=None, start_step=step,
                                  start_wall=clock, gen=gen)  # fmt: skip
    at_time = Curve(name, [p for p in curve.points if p[1] <= time_steps], {})
    at_flops = Curve(name, [p for p in curve.points if p[1] <= flop_steps], {})
    curve.extra.update(
        final_test_acc=final_accuracy(at_time), wall=wall, steps=time_steps,
        acc_equal_flops=final_accuracy(at_flops), flop_steps=flop_steps,
    )  # fmt: skip
    curve.points = at_time.points  # the plot compares at equal training time
    return curve


def equal_flop_steps(sizes: TrainSizes, small: nn.Module, big: nn.Module) -> int:
    """Steps of ``big`` costing the FLOPs of steps/2 of ``small`` plus steps/2 of ``big``."""
    f_small, f_big = count_flops(small, (1, 28, 28)), count_flops(big, (1, 28, 28))
    half = sizes.steps // 2
    return round((half * f_small + (sizes.steps - half) * f_big) / f_big)


RUNS = ("teacher (no transform)", "r2r_widen", "net2net_widen", "netmorph_widen", "random_pad_widen",
        "r2r_widen lr/5", "wide from scratch", "r2r_deepen", "net2net_deepen", "deep from scratch")  # fmt: skip
SCRATCH_OF = {"wide from scratch": "r2r_widen", "deep from scratch": "r2r_deepen"}  # the grown run it matches


def _grow_of(name: str) -> Grow | None:
    if name.startswith("teacher"):
        return None
    if name == "r2r_widen lr/5":
        return widen_all("r2r_widen", "divide")
    return deepen_all(name) if name.endswith("deepen") else widen_all(name)


def training_curves(data: Any, sizes: TrainSizes, device: torch.device) -> list[Curve]:
    """One curve per run of RUNS, in order (each run seeds its own initialisation and batches)."""
    trainer = Trainer(data, sizes, device)
    curves: dict[str, Curve] = {}
    grown: dict[str, nn.Module] = {}
    for name in cells(RUNS):
        if name in SCRATCH_OF:
            big = grown[SCRATCH_OF[name]]
            flops = equal_flop_steps(sizes, _small(sizes, device), big)
            curves[name] = scratch_run(trainer, name, big, curves[SCRATCH_OF[name]].extra["wall"], flops)
        else:
            curves[name], grown[name] = grown_run(trainer, name, _grow_of(name))
    return list(curves.values())
