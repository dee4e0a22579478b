"""The ``r2r_ne`` trainer: ``evoens run`` of block-level R2R neuroevolution equals ``neuroevolve``
step for step, resumes exactly from a checkpoint (shared blocks stay shared) and turns bad
options or non-image data into one-line config errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from evoens_morph.ne import MutationConfig, NEConfig, neuroevolve
from evoens_morph.ne_trainer import NETrainer

from evoens.candidates import Candidates
from evoens.cli import main
from evoens.config import ConfigError, loads_config
from evoens.fitness import accuracy
from evoens.phases import standalone
from evoens.run import build_run
from evoens.testing import make_plugin_manager

CONFIG = """
seed = 5
generations = 3
eval_every = 1
reporters = ["jsonl"]
[data]
name = "digits"
batch_size = 32
[trainer]
name = "r2r_ne"
popsize = 4
lr = 0.003
weight_decay = 1e-5
[trainer.options]
initial_steps = 40
steps_per_iteration = 30
select_k = 2
widths = [4, 8]
[checkpoint]
every = 1
keep = 5
"""


def _evaluate(candidates: Candidates, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return accuracy(candidates.logits(batch[0]), batch[1])


EVALUATE = standalone(_evaluate)


def _trainer(tmp_path: Path, text: str = CONFIG) -> NETrainer:
    run = build_run(loads_config(text), tmp_path, make_plugin_manager(entry_points=True))
    assert isinstance(run.trainer, NETrainer)
    return run.trainer


def test_a_run_equals_neuroevolve(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    for generation in range(3):
        stats = trainer.step(generation, EVALUATE)
    assert stats["population"] == 4 and 0.0 <= float(stats["best_fitness"]) <= 1.0
    cfg = NEConfig(
        initial_steps=40, steps_per_iteration=30, select_k=2, population=4, iterations=2, lr=0.003,
        weight_decay=1e-5, batch_size=32, widths=(4, 8), mutation=MutationConfig(), seed=5,
    )  # fmt: skip
    ref = neuroevolve(trainer.train, trainer.val, cfg)
    mine = [trainer.pop[i] for i in trainer.select(trainer.correct, 2)]
    assert [i.uid for i in mine] == [i.uid for i in ref.selected]
    assert [i.val_accuracy for i in mine] == [i.val_accuracy for i in ref.selected]
    for a, b in zip(mine, ref.selected):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: summary[k] for k in ("best_fitness", "test_accuracy", "val_accuracy", "selected", "final_stats")}


def test_resume_from_a_checkpoint_is_exact(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(CONFIG)
    assert main(["run", str(tmp_path / "run.toml"), "--out", str(tmp_path / "ref")]) == 0
    ref = _summary(tmp_path / "ref")
    assert ref["selected"].startswith("ne") and 0.5 < ref["test_accuracy"] <= 1.0
    # As if killed after generation 1: the later checkpoint and the summary never got written.
    shutil.copytree(tmp_path / "ref", tmp_path / "cut")
    (tmp_path / "cut" / "summary.json").unlink()
    (tmp_path / "cut" / "checkpoints" / "gen-000003.pt").unlink()
    assert main(["resume", str(tmp_path / "cut")]) == 0
    assert _summary(tmp_path / "cut") == ref


def test_restored_population_shares_blocks_like_the_original(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    for generation in range(2):
        trainer.step(generation, EVALUATE)
    state = trainer.state_dict()
    path = tmp_path / "state.pt"
    torch.save(state, path)
    other = _trainer(tmp_path / "other")
    other.load_state_dict(torch.load(path, weights_only=True))

    def ids(t: NETrainer) -> list[list[int]]:
        first: dict[int, int] = {}
        return [[first.setdefault(id(p), len(first)) for p in ind.model.parameters()] for ind in t.pop]

    assert ids(other) == ids(trainer)  # the same parameters are shared between the same members
    x = trainer.val[0][:16]
    for a, b in zip(trainer.pop, other.pop):
        a.model.eval(), b.model.eval()
        assert torch.equal(a.model(x), b.model(x))


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("initial_steps = 40", "initial_stepz = 40", "unknown key 'trainer.options.initial_stepz' (did you mean"),
        ("select_k = 2", "select_k = 2\nselect = 'random'", "trainer.options.select = 'random': must be one of best"),
        ("select_k = 2", "select_k = 9", "select_k (9) <= population (4)"),
        ("widths = [4, 8]", "widths = [4, 8]\nkernel_probs = {2 = 1.0}", "odd kernel sizes"),
        ('name = "digits"', 'name = "mnist1d"', "needs square images"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _trainer(tmp_path, CONFIG.replace(old, new))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_example_config_runs(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "r2r-ne-digits.toml"
    fast = ["trainer.options.initial_steps=20", "trainer.options.steps_per_iteration=10"]
    args = ["run", str(example), "--out", str(tmp_path / "run"), *sum((["--set", s] for s in fast), [])]
    assert main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["generations"] == 4 and summary["final_stats"]["population"] == 6


@pytest.mark.parametrize("flat", [True, False])
def test_candidates_take_the_runs_inputs_as_they_come(flat: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(3, (64,), generator=g)
    data = x.flatten(1) if flat else x  # digits-like (N, 64) or MNIST-like (N, 1, 8, 8)
    cfg = NEConfig(initial_steps=3, steps_per_iteration=2, select_k=1, population=2, widths=(4,), batch_size=16)
    trainer = NETrainer(cfg, "best", (data, y), (data, y), (1, 8, 8))
    trainer.step(0, EVALUATE)
    trainer.step(1, EVALUATE)
    candidates = trainer.candidates()
    assert len(candidates) == 2 and candidates.names == tuple(f"ne{ind.uid}" for ind in trainer.pop)
    assert candidates.logits(data[:5]).shape == (2, 5, 3)
