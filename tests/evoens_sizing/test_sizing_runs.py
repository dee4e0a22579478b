"""The sizing plugin under ``evoens run``: the example config (on digits, shortened) reports every
member's size and accuracy, compacts during the run, resumes exactly across compaction and growth,
and a wrong setting is one line (exit code 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evoens.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "sizing-mnist.toml"
DIGITS = ["--set", "data.name=digits", "--set", "data.batch_size=64", "--set", "model.hidden=[32]",
          "--set", "trainer.lr=0.05", "--set", "trainer.popsize=4", "--set", "trainer.options.lams=[0.1, 0.02]",
          "--set", "generations=40", "--set", "eval_every=20", "--set", "trainer.options.compact_every=10",
          "--set", "trainer.options.dead_every=10", "--set", "progress_seconds=0"]  # fmt: skip


def _run(out: Path, *extra: str) -> dict:
    assert main(["run", str(EXAMPLE), "--out", str(out), *DIGITS, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_the_example_learns_sizes_compacts_and_reports_them(tmp_path: Path) -> None:
    summary = _run(tmp_path / "run")
    members = summary["sizing"]["members"]
    assert [m["lam"] for m in members] == pytest.approx([0.1, 0.02, 0.1, 0.02])
    strong, weak = [m["size"] for m in members[::2]], [m["size"] for m in members[1::2]]
    assert max(strong) < min(weak) < 32  # the larger lambda prunes more
    width = summary["sizing"]["widths"]["0"]
    assert max(weak) <= width < min(32, max(weak) / 0.9)  # compacted during the run (compact_min = 0.1)
    assert summary["sizing"]["pareto"] and all(0 <= m["test_accuracy"] <= 1 for m in members)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("capacity/0/member3" in r for r in rows) and ["dead/0" in r for r in rows].count(True) == 4
    assert (tmp_path / "run" / "sizing_pareto.png").stat().st_size > 0
    assert any((tmp_path / "run" / "sizing_tb").iterdir())


def test_a_sizing_run_resumes_exactly_across_compaction_and_growth(tmp_path: Path) -> None:
    keep = ["--set", "checkpoint.every=5", "--set", "checkpoint.keep=20", "--set", "trainer.options.grow_every=5",
            "--set", "trainer.options.max_width=48", "--set", "model.hidden=[8]", "--set", "model.activation=tanh",
            "--set", "trainer.options.lams=[0.1, 0.0]"]  # fmt: skip
    ref = _run(tmp_path / "ref", *keep)
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    widths = [r["width/0"] for r in rows]
    assert widths[0] == 8 and max(widths) == 48  # lambda = 0 members grew (tanh units never die)
    assert set(widths[:20]) == {8}  # not before theta0 / lr = 1 / 0.05 = 20 steps (the start-up delay)
    assert min(r["capacity/0/member0"] for r in rows[20:]) < 48 == rows[-1]["capacity/0/member1"]  # 0.1 prunes
    shutil.copytree(tmp_path / "ref", tmp_path / "cut")
    (tmp_path / "cut" / "summary.json").unlink()
    for late in sorted((tmp_path / "cut" / "checkpoints").glob("gen-*.pt"))[-5:]:  # back to generation 15
        late.unlink()
    assert main(["resume", str(tmp_path / "cut")]) == 0
    resumed = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert resumed["sizing"] == ref["sizing"] and resumed["final_stats"] == ref["final_stats"]
    assert resumed["best_fitness"] == ref["best_fitness"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.options.lams=[-1.0]", "trainer.options.lams"),
        ("model.options.layer='wide'", "model.options.layer"),
        ("model.activation='sigmoid'", "does not map 0 to 0"),
        ("trainer.options.lams=[]", "give at least one lambda"),
        ("model.options.layer='gated'", "trainer.options.compact_every = 10: it acts on switch layers"),
    ],
)
def test_a_wrong_sizing_setting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str,
                                            message: str) -> None:  # fmt: skip
    code = main(["run", str(EXAMPLE), "--out", str(tmp_path / "x"), *DIGITS, "--set", override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err


def test_a_model_without_sized_layers_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "plain.toml"
    config.write_text('generations = 2\n[model]\nname = "mlp"\nactivation = "sigmoid"\n[trainer]\nname = "sizing"\n')
    assert main(["run", str(config), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trainer 'sizing' needs switch or gated layers" in err


def test_a_plain_mlp_gets_switches_on_its_hidden_layers(tmp_path: Path) -> None:
    from evoens_sizing.models import with_switches
    from torch import nn

    plain = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    switched = with_switches(plain)
    assert switched is not None and switched[0].capacity() == 7 and type(switched[2]) is nn.Linear
    x = __import__("torch").randn(4, 5)
    assert (switched(x) - plain(x)).abs().max() == 0  # theta = 1: the same function
    config = tmp_path / "mlp.toml"
    config.write_text('generations = 3\nreporters = []\n[model]\nname = "mlp"\nhidden = [6]\n'
                      '[trainer]\nname = "sizing"\npopsize = 2\n')  # fmt: skip
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [m["size"] for m in summary["sizing"]["members"]] == [6, 6]
