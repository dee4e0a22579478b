"""Ensemble fitness and training modes: each equals its definition computed by a plain loop, mean
loss at lr * P is sum loss at lr under SGD, joint training at P = 1 is ordinary training, and the
members of a gradient-trained ensemble never share storage."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from evoens_ensemble import fitness as f

from evoens.fitness import neg_cross_entropy
from evoens.run import build_run
from evoens.testing import make_plugin_manager, tiny_config


def _logits(p: int = 4, b: int = 9, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(p, b, c, generator=g), torch.randint(c, (b,), generator=g)


def _nll(log_probs: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.nll_loss(log_probs, y))


@pytest.mark.parametrize("combiner", f.COMBINERS)
def test_joint_sums_to_minus_the_combined_nll(combiner: str) -> None:
    z, y = _logits()
    fit = f.joint(combiner)(z, y)
    probs = z.softmax(-1)
    combined = {
        "mean_prob": probs.mean(0).log(),
        "geo_mean": probs.log().mean(0).log_softmax(-1),
        "mean_logit": z.mean(0).log_softmax(-1),
    }[combiner]
    assert float(fit.sum()) == pytest.approx(-_nll(combined, y), rel=1e-6)
    assert torch.equal(fit, fit[:1].expand(4))  # every member carries the same share


def test_geometric_mean_renormalized_is_the_logit_mean() -> None:
    z, _ = _logits()
    torch.testing.assert_close(f.combined_log_probs(z, "geo_mean"), f.combined_log_probs(z, "mean_logit"))


def test_joint_training_of_one_member_is_ordinary_training() -> None:
    z, y = _logits(p=1)
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    f.joint("mean_prob")(a, y).sum().backward()
    neg_cross_entropy(b, y).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("combiner", f.COMBINERS)
def test_leave_one_out_gain_equals_the_loop(combiner: str) -> None:
    z, y = _logits()
    gain = f.leave_one_out_gain(combiner)(z, y)
    full = _nll(f.combined_log_probs(z, combiner), y)
    for i in range(4):
        rest = torch.cat([z[:i], z[i + 1 :]])
        assert float(gain[i]) == pytest.approx(_nll(f.combined_log_probs(rest, combiner), y) - full, abs=1e-5)


def test_negative_correlation_at_kappa_zero_is_half_the_brier_loss() -> None:
    z, y = _logits()
    onehot = F.one_hot(y, 5).float()
    brier = (z.softmax(-1) - onehot).pow(2).sum(-1).mean(1)  # (P,)
    torch.testing.assert_close(f.negative_correlation(0.0)(z, y), -0.5 * brier)
    with pytest.raises(ValueError, match="kappa"):
        f.negative_correlation(1.5)


def test_caruana_selection_equals_brute_force_greedy_with_replacement() -> None:
    z, y = _logits(p=5, b=40, seed=3)
    picks = f.caruana_select(z, y, 4)
    chosen: list[int] = []
    for _ in range(4):
        scores = [_nll(z[chosen + [j]].softmax(-1).mean(0).log(), y) for j in range(5)]
        chosen.append(min(range(5), key=lambda j: (scores[j], j)))
    assert picks == chosen


def test_caruana_selection_repeats_a_dominant_member() -> None:
    z, y = _logits(p=3, b=50)
    z[1] = 20 * F.one_hot(y, 5).float()  # member 1 is perfect and confident
    assert f.caruana_select(z, y, 3) == [1, 1, 1]


def _train(tmp_path: Path, fitness: str, optimizer: str, lr: float, generations: int = 5) -> torch.Tensor:
    config = tiny_config(
        generations=max(generations, 1),
        trainer={"name": "gradient", "popsize": 4, "fitness": fitness, "optimizer": optimizer, "lr": lr},
    )
    run = build_run(config, tmp_path, make_plugin_manager(entry_points=True))
    from evoens.engine import run_generation

    run.hook.evoens_run_start(run=run)
    for g in range(generations):
        run_generation(run, g)
    return run.trainer.population.flat.detach()  # type: ignore[attr-defined]


def test_mean_loss_at_lr_times_p_is_sum_loss_at_lr_with_sgd(tmp_path: Path) -> None:
    summed = _train(tmp_path / "a", "neg_cross_entropy", "sgd", 0.05)
    mean = _train(tmp_path / "b", "ensemble_mean_loss", "sgd", 0.05 * 4)
    torch.testing.assert_close(mean, summed, atol=1e-6, rtol=1e-5)
    slower = _train(tmp_path / "c", "ensemble_mean_loss", "sgd", 0.05)  # same lr: a quarter of the step
    assert not torch.allclose(slower, summed, atol=1e-4)


def test_mean_and_sum_loss_nearly_coincide_with_adam(tmp_path: Path) -> None:
    summed = _train(tmp_path / "a", "neg_cross_entropy", "adam", 0.01)
    mean = _train(tmp_path / "b", "ensemble_mean_loss", "adam", 0.01)
    start = _train(tmp_path / "c", "neg_cross_entropy", "adam", 0.01, generations=0)
    ratio = float((mean - summed).norm() / (summed - start).norm())
    assert ratio < 0.01, ratio  # Adam: the loss scale cancels up to its epsilon (measured 7e-4)


def test_members_of_a_gradient_trained_ensemble_never_share_storage(tmp_path: Path) -> None:
    """The seed's accidental weight sharing (one module four times): rows of the population are
    distinct memory and distinct initial weights."""
    run = build_run(tiny_config(trainer={"name": "gradient", "popsize": 4}), tmp_path, make_plugin_manager())
    pop = run.trainer.population  # type: ignore[attr-defined]
    rows = [pop.flat[i] for i in range(4)]
    assert len({r.data_ptr() for r in rows}) == 4
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(rows, 2))
