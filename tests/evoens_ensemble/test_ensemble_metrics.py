"""Ensemble metrics: combiners, NLL/Brier against scikit-learn and numpy, ECE against a plain loop and
its edge cases, the ambiguity identities, chunked == one-shot, fixed-size state, no host syncs."""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from evoens_ensemble.metrics import (
    COMBINERS,
    LOG_EPS,
    N_BINS,
    EnsembleMetrics,
    as_floats,
    bin_index,
    binned_calibration,
    ensemble_metrics,
    geo_mean,
    get_combiner,
    mean_logit,
    member_metrics,
    vote,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")

MEMBER_KEYS = ("accuracy", "nll", "brier", "ece", "resce")
CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


def random_logits(seed: int, p: int = 5, n: int = 300, c: int = 7, dtype: torch.dtype = torch.float64) -> tuple:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(p, 1, 1, generator=g, dtype=dtype) * 4  # members of different sharpness
    logits = torch.randn(p, n, c, generator=g, dtype=dtype) * scale  # (P, N, C)
    return logits, torch.randint(0, c, (n,), generator=g)


def softmax_np(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_probs(z: np.ndarray, combiner: str) -> np.ndarray:
    """The ensemble's probabilities written from the definitions, in numpy."""
    if combiner == "mean_prob":
        return softmax_np(z).mean(0)
    if combiner == "geo_mean":
        g = np.exp(np.log(softmax_np(z)).mean(0))
        return g / g.sum(-1, keepdims=True)
    return softmax_np(z.mean(0))  # mean_logit


def loop_calibration(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> tuple[float, float]:
    """ECE and rESCE of one model by a plain loop over bins and examples."""
    ece = sq = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        conf_sum = correct_sum = 0.0
        count = 0
        for row, target in zip(probs, y):
            conf = float(row.max())
            if lo < conf <= hi or (k == 0 and conf == 0.0):
                count += 1
                conf_sum += conf
                correct_sum += float(int(row.argmax()) == int(target))
        if count:
            ece += abs(correct_sum - conf_sum) / len(y)
            sq += count / len(y) * (correct_sum / count - conf_sum / count) ** 2
    return ece, math.sqrt(sq)


# ---------------------------------------------------------------- combiners


@pytest.mark.parametrize("name", list(COMBINERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_combiners_return_normalized_log_probabilities(name: str, dtype: torch.dtype) -> None:
    logits, _ = random_logits(1, dtype=dtype)
    out = get_combiner(name)(logits)
    assert out.shape == logits.shape[1:] and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(out.shape[0], dtype=dtype), atol=tol, rtol=0)


def test_geo_mean_renormalized_is_softmax_of_mean_logits() -> None:
    logits, _ = random_logits(2)
    torch.testing.assert_close(geo_mean(logits), mean_logit(logits), atol=1e-12, rtol=0)
    # the unnormalized geometric mean (the seed's) is proportional to it but loses mass (AM-GM)
    raw = logits.log_softmax(-1).mean(0).exp()  # (N, C)
    ratio = raw / mean_logit(logits).exp()  # constant over classes
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), atol=1e-12, rtol=1e-10)
    assert (raw.sum(-1) < 1).all()


def test_vote_gives_vote_fractions_and_ties_go_to_the_lowest_class() -> None:
    # four members: two vote class 2, two vote class 0 (a tie); member 3 has tied logits -> class 0
    logits = torch.tensor([[[0.0, 1, 5]], [[0.0, 1, 4]], [[3.0, 1, 0]], [[2.0, 0, 2]]])  # (4, 1, 3)
    probs = vote(logits).exp()
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.0, 0.5]]))
    m = ensemble_metrics(logits, torch.tensor([0]), "vote")
    assert m["accuracy"].item() == 1.0  # the tie went to class 0
    m = ensemble_metrics(logits, torch.tensor([1]), "vote")
    assert m["nll"].item() == pytest.approx(-LOG_EPS)  # nobody voted for class 1: p clamped at 1e-12


def test_unknown_combiner_and_custom_callable() -> None:
    with pytest.raises(ValueError, match="unknown combiner 'median'.*mean_prob"):
        get_combiner("median")
    logits, y = random_logits(3)

    def first_member(z: torch.Tensor) -> torch.Tensor:
        return z[0].log_softmax(-1)

    metrics = EnsembleMetrics(first_member)
    metrics.update(logits, y)
    out = metrics.compute()
    assert metrics.combiner_name == "first_member" and EnsembleMetrics("vote").combiner_name == "vote"
    for key in MEMBER_KEYS:
        torch.testing.assert_close(out[key], out[f"member_{key}"][0])


# ---------------------------------------------------------------- against scikit-learn, numpy, loops


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("combiner", ["mean_prob", "geo_mean", "mean_logit"])
def test_nll_and_brier_match_sklearn_and_numpy(seed: int, combiner: str) -> None:
    logits, y = random_logits(seed)
    out = ensemble_metrics(logits, y, combiner)
    z, t = logits.numpy(), y.numpy()
    labels = list(range(z.shape[-1]))
    for i, p in enumerate(softmax_np(z)):
        assert out["member_nll"][i].item() == pytest.approx(sklearn_metrics.log_loss(t, p, labels=labels), rel=1e-10)
        brier = np.mean([sum((p[n, c] - (c == t[n])) ** 2 for c in labels) for n in range(len(t))])
        assert out["member_brier"][i].item() == pytest.approx(brier, rel=1e-10)
        assert out["member_accuracy"][i].item() == pytest.approx(np.mean(p.argmax(-1) == t))
    p = reference_probs(z, combiner)
    assert out["nll"].item() == pytest.approx(sklearn_metrics.log_loss(t, p, labels=labels), rel=1e-10)
    brier = np.mean([sum((p[n, c] - (c == t[n])) ** 2 for c in labels) for n in range(len(t))])
    assert out["brier"].item() == pytest.approx(brier, rel=1e-10)
    assert 0 <= out["brier"].item() <= 2


@pytest.mark.parametrize("seed", range(3))
def test_ece_and_resce_match_a_per_member_loop(seed: int) -> None:
    logits, y = random_logits(seed, n=200)
    out = ensemble_metrics(logits, y)
    z, t = logits.numpy(), y.numpy()
    for i, p in enumerate(softmax_np(z)):
        ece, resce = loop_calibration(p, t)
        assert out["member_ece"][i].item() == pytest.approx(ece, abs=1e-12)
        assert out["member_resce"][i].item() == pytest.approx(resce, abs=1e-12)
    ece, resce = loop_calibration(reference_probs(z, "mean_prob"), t)
    assert out["ece"].item() == pytest.approx(ece, abs=1e-12)
    assert out["resce"].item() == pytest.approx(resce, abs=1e-12)


def test_member_metrics_batched_equal_a_loop_over_members() -> None:
    logits, y = random_logits(4, p=6, dtype=torch.float32)
    batched = member_metrics(logits, y)
    looped = [member_metrics(logits[i : i + 1], y) for i in range(logits.shape[0])]
    together = ensemble_metrics(logits, y)
    for key in MEMBER_KEYS:
        torch.testing.assert_close(batched[key], torch.cat([m[key] for m in looped]), atol=1e-6, rtol=0)
        torch.testing.assert_close(batched[key], together[f"member_{key}"], atol=0, rtol=0)


def test_disagreement_matches_a_loop_over_pairs() -> None:
    logits, y = random_logits(5, p=6, n=100, c=3)
    out = ensemble_metrics(logits, y)
    pred = logits.argmax(-1)  # (P, N)
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    expected = np.mean([(pred[i] != pred[j]).double().mean().item() for i, j in pairs])
    assert out["disagreement"].item() == pytest.approx(expected, abs=1e-12)
    ens = logits.softmax(-1).mean(0).argmax(-1)
    assert out["disagreement_ensemble"].item() == pytest.approx((pred != ens).double().mean().item(), abs=1e-12)


# ---------------------------------------------------------------- ECE edge cases


def test_ece_is_zero_when_all_correct_with_confidence_one() -> None:
    y = torch.arange(8) % 4
    logits = (torch.nn.functional.one_hot(y, 4).float() * 200).expand(3, -1, -1)  # (3, 8, 4): p = 1 exactly
    out = ensemble_metrics(logits, y)
    for key in ("ece", "resce", "brier", "nll"):
        assert out[key].item() == 0.0 and (out[f"member_{key}"] == 0).all()
    assert out["accuracy"].item() == 1.0


def test_ece_when_all_wrong_is_the_mean_confidence() -> None:
    conf = torch.tensor([0.9, 0.55, 1.0, 0.3])
    ece, resce = binned_calibration(conf, torch.zeros(4, dtype=torch.bool))
    assert ece.item() == pytest.approx(conf.double().mean().item())
    # every example in its own bin: rESCE = sqrt(mean conf^2)
    assert resce.item() == pytest.approx(conf.double().square().mean().sqrt().item())
    y = torch.zeros(5, dtype=torch.long)
    logits = torch.tensor([0.0, 3.0, 1.0]).expand(2, 5, 3)  # always predicts class 1
    out = ensemble_metrics(logits, y)
    assert out["accuracy"].item() == 0.0
    assert out["ece"].item() == pytest.approx(torch.tensor([0.0, 3.0, 1.0]).softmax(-1).max().item(), rel=1e-6)


def test_empty_bins_contribute_nothing() -> None:
    conf = torch.tensor([0.81, 0.82, 0.85])  # all in bin 12 = (12/15, 13/15]; 14 bins empty
    correct = torch.tensor([True, False, True])
    ece, resce = binned_calibration(conf, correct)
    gap = abs(2 / 3 - conf.double().mean().item())
    assert ece.item() == pytest.approx(gap) and resce.item() == pytest.approx(gap)
    assert bin_index(conf).tolist() == [12, 12, 12]


def test_confidences_on_bin_edges_fall_in_the_bin_below() -> None:
    for dtype in (torch.float32, torch.float64):
        edges = torch.tensor([k / 15 for k in range(16)], dtype=dtype)
        assert bin_index(edges).tolist() == [0] + list(range(15))  # 0 -> bin 0, k/15 -> bin k-1
        above = torch.nextafter(edges[:-1], torch.ones((), dtype=dtype))
        assert bin_index(above).tolist() == list(range(15))
        assert bin_index(torch.tensor([0.4, 2 / 15], dtype=dtype)).tolist() == [5, 1]
    # two edge confidences, one right one wrong, in different bins: ECE = (|1 - 0.4| + |0 - 2/15|) / 2
    ece, _ = binned_calibration(torch.tensor([0.4, 2 / 15], dtype=torch.float64), torch.tensor([True, False]))
    assert ece.item() == pytest.approx((0.6 + 2 / 15) / 2, abs=1e-15)
    # the same two in one bin would have cancelled: 0.4 and just above 2/5 are in different bins
    assert bin_index(torch.tensor([0.4, 0.4 + 1e-9], dtype=torch.float64)).tolist() == [5, 6]


def test_a_single_example() -> None:
    logits = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)  # (1, 1, 2)
    p = torch.tensor([2.0, 0.0], dtype=torch.float64).softmax(-1)
    right = ensemble_metrics(logits, torch.tensor([0]))
    wrong = ensemble_metrics(logits, torch.tensor([1]))
    assert right["ece"].item() == pytest.approx(1 - p[0].item()) and wrong["ece"].item() == pytest.approx(p[0].item())
    assert right["resce"].item() == pytest.approx(right["ece"].item())
    assert wrong["brier"].item() == pytest.approx(2 * p[0].item() ** 2)
    assert right["disagreement"].item() == 0.0


# ---------------------------------------------------------------- identities


@pytest.mark.parametrize("seed", range(3))
def test_ambiguity_decompositions_hold_exactly(seed: int) -> None:
    logits, y = random_logits(seed, p=8)
    brier = ensemble_metrics(logits, y, "mean_prob")  # Krogh & Vedelsby
    torch.testing.assert_close(brier["brier"], brier["member_brier"].mean() - brier["ambiguity_brier"],
                               atol=1e-12, rtol=0)  # fmt: skip
    torch.testing.assert_close(brier["ambiguity_brier"], brier["prob_variance"] * logits.shape[-1])
    nll = ensemble_metrics(logits, y, "geo_mean")  # Heskes
    torch.testing.assert_close(nll["nll"], nll["member_nll"].mean() - nll["ambiguity_nll"], atol=1e-12, rtol=0)
    # mean KL(p_i || mean p) = H(mean p) - mean H(p_i) (generalized Jensen-Shannon), >= 0
    p = logits.softmax(-1)
    entropy = -(p * p.log()).sum(-1)  # (P, N)
    mean_p = p.mean(0)
    js = (-(mean_p * mean_p.log()).sum(-1) - entropy.mean(0)).mean()
    torch.testing.assert_close(brier["kl_to_ensemble"], js, atol=1e-12, rtol=0)
    assert brier["kl_to_ensemble"] > 0 and brier["ambiguity_nll"] > 0


@pytest.mark.parametrize("combiner", list(COMBINERS))
def test_one_member_is_its_own_ensemble(combiner: str) -> None:
    logits, y = random_logits(6, p=1)
    out = ensemble_metrics(logits, y, combiner)
    # the vote's probabilities are one-hot (confidence 1): only its accuracy is the member's
    for key in ("accuracy",) if combiner == "vote" else MEMBER_KEYS:
        torch.testing.assert_close(out[key], out[f"member_{key}"][0], atol=1e-12, rtol=0)
    if combiner == "vote":
        torch.testing.assert_close(out["ece"], 1 - out["accuracy"])
    for key in ("disagreement", "disagreement_ensemble", "kl_to_ensemble", "ambiguity_brier", "ambiguity_nll"):
        assert abs(out[key].item()) < 1e-12


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("combiner", list(COMBINERS))
def test_chunked_equals_one_shot(combiner: str) -> None:
    logits, y = random_logits(7, p=4, n=1000, dtype=torch.float32)
    one = ensemble_metrics(logits, y, combiner)
    for sizes in ([1000], [1] * 10 + [990], [333, 333, 334], [7] * 142 + [6]):
        metrics = EnsembleMetrics(combiner)
        start = 0
        for size in sizes:
            metrics.update(logits[:, start : start + size], y[start : start + size])
            start += size
        many = metrics.compute()
        assert many.keys() == one.keys()
        for key in one:
            torch.testing.assert_close(many[key], one[key], atol=1e-6, rtol=0, msg=key)
    torch.testing.assert_close(ensemble_metrics(logits, y, combiner, chunk_size=128), one, atol=1e-6, rtol=0)


def test_state_is_fixed_size_for_ten_thousand_examples_and_64_members() -> None:
    p, c, n_chunks, chunk = 64, 10, 10, 1000
    metrics = EnsembleMetrics()
    g = torch.Generator().manual_seed(0)
    sizes: list[dict[str, tuple[int, ...]]] = []
    for _ in range(n_chunks):
        logits = torch.randn(p, chunk, c, generator=g)  # (P, B, C): only this chunk exists
        metrics.update(logits, torch.randint(0, c, (chunk,), generator=g))
        alive = weakref.ref(logits)
        del logits
        assert alive() is None  # the accumulator kept no reference to the chunk
        sizes.append({k: tuple(v.shape) for k, v in metrics.state.items()})
    assert all(s == sizes[0] for s in sizes) and metrics.n == n_chunks * chunk
    assert set(sizes[0].values()) == {(p,), (p, N_BINS), (), (N_BINS,)}
    assert sum(v.numel() for v in metrics.state.values()) == 3 * p + 3 * p * N_BINS + 3 + 3 * N_BINS + 5
    out = metrics.compute()
    assert out["member_accuracy"].shape == (p,) and all(torch.isfinite(v).all() for v in out.values())


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every tensor -> Python conversion (on a GPU, a host sync)."""
    seen: list[str] = []

    def recording(name: str, original: Any) -> Any:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            seen.append(name)
            return original(self, *args, **kwargs)

        return method

    for name in CONVERSIONS:
        monkeypatch.setattr(torch.Tensor, name, recording(name, getattr(torch.Tensor, name)))
    yield seen


@pytest.mark.parametrize("combiner", list(COMBINERS))
def test_update_and_compute_make_no_host_sync(combiner: str, conversions: list[str]) -> None:
    logits, y = random_logits(8, dtype=torch.float32)
    metrics = EnsembleMetrics(combiner)
    metrics.update(logits[:, :100], y[:100])
    metrics.update(logits[:, 100:], y[100:])
    out = metrics.compute()
    assert conversions == []
    floats = as_floats(out)  # the caller's one transfer per metric
    assert isinstance(floats["accuracy"], float) and len(floats["member_nll"]) == 5


def test_bad_inputs_are_one_line_errors() -> None:
    logits, y = random_logits(9)
    metrics = EnsembleMetrics()
    with pytest.raises(ValueError, match=r"expected \(P, B, C\) logits"):
        metrics.update(logits[0], y)
    with pytest.raises(ValueError, match=r"expected \(P, B, C\)"):
        metrics.update(logits, y[:-1])
    with pytest.raises(TypeError, match="floating point"):
        metrics.update(logits.long(), y)
    with pytest.raises(ValueError, match="no examples"):
        metrics.compute()
    metrics.update(logits, y)
    with pytest.raises(ValueError, match=r"\(P, C\) changed"):
        metrics.update(logits[:3], y)


def test_half_precision_logits_are_computed_in_float32() -> None:
    logits, y = random_logits(10, dtype=torch.float32)
    half = ensemble_metrics(logits.to(torch.bfloat16), y)
    full = ensemble_metrics(logits.to(torch.bfloat16).float(), y)
    torch.testing.assert_close(half, full, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("combiner", list(COMBINERS))
def test_cuda_matches_cpu_without_synchronizing(combiner: str) -> None:
    logits, y = random_logits(11, p=64, n=2000, c=10, dtype=torch.float32)
    cpu = ensemble_metrics(logits, y, combiner)
    metrics = EnsembleMetrics(combiner)
    gl, gy = logits.cuda(), y.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for start in range(0, 2000, 500):
            metrics.update(gl[:, start : start + 500], gy[start : start + 500])
        out = metrics.compute()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.is_cuda for v in out.values())
    torch.testing.assert_close({k: v.cpu() for k, v in out.items()}, cpu, atol=1e-5, rtol=0)
