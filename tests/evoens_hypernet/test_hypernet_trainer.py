"""The ``hypernet`` trainer under ``evoens run``: exact resume, the phases, the summary, the guard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from evoens import hookimpl
from evoens.cli import main
from evoens.testing import run_inline, tiny_config

CONFIG = """
seed = 5
generations = 6
eval_every = 3
reporters = ["jsonl"]
progress_seconds = 0
[data]
name = "digits"
batch_size = 32
[model]
name = "{model}"
hidden = [8]
[trainer]
name = "hypernet"
popsize = 3
lr = 0.003
[trainer.options]
generator = "{generator}"
ensemble = 4
generator_options = {options}
[checkpoint]
every = 1
"""


def _config(tmp_path: Path, model: str = "mlp", generator: str = "vq",
            options: str = "{ stages = 3, hidden = 16 }") -> Path:  # fmt: skip
    path = tmp_path / "hn.toml"
    path.write_text(CONFIG.format(model=model, generator=generator, options=options))
    return path


def _result(out: Path) -> dict[str, Any]:
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary[k] for k in ("final_stats", "hypernet", "test_accuracy", "generations")}


def _metrics(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k and "per_second" not in k} for r in rows]


@pytest.mark.parametrize("generator", ["vq", "chunked"])
def test_a_resumed_hypernet_run_equals_an_uninterrupted_one(tmp_path: Path, generator: str) -> None:
    options = "{ stages = 3, hidden = 16 }" if generator == "vq" else "{ hidden = 8, chunk = 64, noise_dim = 4 }"
    config = _config(tmp_path, generator=generator, options=options)
    assert main(["run", str(config), "--out", str(tmp_path / "ref")]) == 0
    assert main(["run", str(config), "--out", str(tmp_path / "cut"), "--set", "generations=3"]) == 0
    assert main(["resume", str(tmp_path / "cut"), "--set", "generations=6"]) == 0
    assert _result(tmp_path / "cut") == _result(tmp_path / "ref")
    assert _metrics(tmp_path / "cut")[3:] == _metrics(tmp_path / "ref")[3:]


class Seen:
    """Records what the evaluation phases show plugins."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, tuple[int, ...], tuple[int, ...]]] = []

    @hookimpl
    def evoens_after_evaluate(self, candidates: Any, fitness: torch.Tensor, outputs: Any, batch: Any) -> None:
        self.calls.append((len(candidates), candidates.per_member_inputs, tuple(batch[0].shape), tuple(fitness.shape)))


def test_members_are_evaluated_through_the_phases_each_on_its_own_batch(tmp_path: Path) -> None:
    seen = Seen()
    config = tiny_config(generations=3, eval_every=100, trainer={"name": "hypernet", "popsize": 3, "options": {
        "generator_options": {"stages": 2, "hidden": 8}, "ensemble": 2}})  # fmt: skip
    run_inline(config, tmp_path, ("seen", seen), entry_points=True)
    assert seen.calls == [(3, True, (3, 128, 64), (3,))] * 3  # B members, B minibatches of 128, one call


def test_the_summary_ensemble_is_the_mean_probability_ensemble_of_the_judged_members(tmp_path: Path) -> None:
    from evoens.engine import execute
    from evoens.testing import make_plugin_manager

    config = tiny_config(generations=4, eval_every=100, trainer={"name": "hypernet", "popsize": 2, "lr": 0.003,
                         "options": {"generator_options": {"stages": 3, "hidden": 8}, "ensemble": 5}})  # fmt: skip
    pm = make_plugin_manager(entry_points=True)
    holder: dict[str, Any] = {}

    class Keep:
        @hookimpl
        def evoens_run_end(self, run: Any) -> None:
            holder["run"] = run

    pm.register(Keep(), "keep")
    summary = execute(config, tmp_path, pm)["hypernet"]
    run = holder["run"]
    test = run.data.test
    logits = run.trainer.candidates().logits(test.x)  # (E, N, C)
    assert logits.shape[0] == summary["members"] == 5
    probs = logits.softmax(-1).mean(0)  # (N, C)
    assert summary["test"]["ensemble_accuracy"] == pytest.approx(float((probs.argmax(-1) == test.y).float().mean()))
    member = (logits.argmax(-1) == test.y).float().mean(1).mean()
    assert summary["test"]["member_accuracy_mean"] == pytest.approx(float(member))
    assert summary["output_variance"] > 0


def test_a_generator_too_large_is_refused_in_one_line_before_allocating(tmp_path: Path, capsys: Any) -> None:
    config = _config(tmp_path, options="{ stages = 40, hidden = 4000000 }")
    assert main(["run", str(config), "--out", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "GiB" in err and "chunked" in err
    assert not (tmp_path / "big").exists()


def test_bad_generator_options_are_one_line(tmp_path: Path, capsys: Any) -> None:
    config = _config(tmp_path, options="{ stages = 3, refiner = 'nn' }")
    assert main(["run", str(config), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "generator_options" in err and "refiner" in err


@pytest.mark.slow  # a training-quality check: 80 meta-steps of a tiny refiner vary with seed and platform
def test_the_seeds_cnn_trains_under_evoens_run(tmp_path: Path) -> None:
    config = tiny_config(generations=80, eval_every=100, model={"name": "vq_cnn"}, trainer={
        "name": "hypernet", "popsize": 2, "lr": 0.001,
        "options": {"generator_options": {"stages": 10, "hidden": 16}, "ensemble": 4}})  # fmt: skip
    summary = run_inline(config, tmp_path, entry_points=True)["hypernet"]
    assert summary["test"]["ensemble_accuracy"] > 0.2  # 10 classes: chance is 0.1 (measured 0.29-0.75)
    assert summary["test"]["ensemble_accuracy"] >= summary["test"]["member_accuracy_mean"]


@pytest.mark.parametrize("objective", ["pull", "direct"])
def test_a_small_meta_step_descends_the_task_loss_of_the_seeds_cnn(objective: str) -> None:
    """Both objectives move the generator along the task gradient (pull: preconditioned), so one
    small SGD step on the generator lowers the members' loss on the same codes and batches."""
    from evoens_hypernet.meta import MetaTerms, meta_loss
    from evoens_hypernet.models import vq_cnn
    from evoens_hypernet.refiner import VQRefiner
    from evoens_hypernet.space import WeightSpace

    torch.manual_seed(0)
    r = VQRefiner(WeightSpace(vq_cnn((1, 8, 8), 10)), stages=6, hidden=16)
    g = torch.Generator().manual_seed(1)
    codes, x, y = r.sample_codes(3, g), torch.rand(3, 32, 1, 8, 8, generator=g), torch.randint(10, (3, 32), generator=g)
    terms = MetaTerms(objective, inner_lr=0.1)
    loss, before, _ = meta_loss(r, codes, (x, y), terms)
    loss.backward()
    with torch.no_grad():
        for p in r.parameters():
            p -= (1e-3 if objective == "direct" else 1e-2) * p.grad
    _, after, _ = meta_loss(r, codes, (x, y), terms)
    assert float(after["inner_loss"]) < float(before["inner_loss"])
