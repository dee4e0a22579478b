"""Member and ensemble metrics for a whole population in one pass on ``(P, B, C)`` logits.

References: Lakshminarayanan, Pritzel, Blundell, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles", NeurIPS 2017 (the mean-of-probabilities ensemble, NLL, Brier);
Brier, "Verification of forecasts expressed in terms of probability", 1950; Guo, Pleiss, Sun,
Weinberger, "On Calibration of Modern Neural Networks", ICML 2017 (ECE on 15 equal-width bins);
Kumar, Liang, Ma, "Verified Uncertainty Calibration", NeurIPS 2019 (the power-2 binned calibration
error); Abe, Buchanan, Pleiss, Zemel, Cunningham, "Deep Ensembles Work, But Are They Necessary?",
NeurIPS 2022 (0-1 error, NLL, Brier, ECE and rESCE on InD/OOD); Krogh, Vedelsby, "Neural Network
Ensembles, Cross Validation, and Active Learning", NeurIPS 1995 (the ambiguity decomposition);
Heskes, "Bias/Variance Decompositions for Likelihood-Based Estimators", Neural Computation 1998 (its
log-loss counterpart); Fort, Hu, Lakshminarayanan, "Deep Ensembles: A Loss Landscape Perspective",
2019 (prediction disagreement).

Definitions (``p_i`` member i's softmax, ``p`` the ensemble's probabilities, ``y`` the target):

* combiners map ``(P, B, C)`` logits to ``(B, C)`` normalized log-probabilities (:data:`COMBINERS`);
* accuracy: ``argmax p == y``; ties go to the lowest class index (``torch.argmax``'s documented rule);
* NLL: ``mean -log p[y]``; a probability of exactly 0 (a class no member voted for) counts as
  ``1e-12`` (:data:`LOG_EPS`). Finite logits never reach it for the other combiners;
* Brier: ``mean_n sum_c (p_nc - onehot(y)_c)^2``, in ``[0, 2]``;
* ECE / rESCE: confidence = ``max_c p``, 15 equal-width bins ``(k/15, (k+1)/15]`` (right-closed; a
  confidence of exactly 0 goes to the first bin; the edges are ``k/15`` rounded to the confidence's
  dtype, so a confidence equal to an edge falls in the bin below it). ``ECE = sum_k n_k/N |acc_k -
  conf_k|``, ``rESCE = sqrt(sum_k n_k/N (acc_k - conf_k)^2)``; empty bins contribute 0;
* disagreement: the fraction of (unordered) member pairs whose argmax differ, averaged over examples
  (0 for P = 1); ``disagreement_ensemble``: the fraction of members whose argmax differs from the
  ensemble's, averaged over examples;
* diversity, always against the mean-of-probabilities ensemble ``p̄`` whatever the combiner (finite
  for every member, and where the squared-loss identity holds): ``kl_to_ensemble = mean_i
  KL(p_i || p̄)``, ``prob_variance = mean_{n,c} var_i p_ic``, ``ambiguity_brier = mean_n mean_i
  ||p_i - p̄||^2`` (= C * prob_variance). Krogh & Vedelsby: with ``combiner="mean_prob"``,
  ``brier = mean(member_brier) - ambiguity_brier`` exactly;
* ``ambiguity_nll = mean_i KL(q || p_i) = -log sum_c exp(mean_i log p_ic)`` with ``q`` the renormalized
  geometric mean. Heskes: with ``combiner="geo_mean"``, ``nll = mean(member_nll) - ambiguity_nll``.

Streaming: :class:`EnsembleMetrics` keeps fixed-size sums (``(P,)``, ``(P, 15)``, ``(15,)``,
scalars) in float64 on the logits' device; :meth:`EnsembleMetrics.update` makes no host sync.
Half-precision logits are computed in float32. Pure torch, no pluggy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

Combiner = Callable[[Tensor], Tensor]
N_BINS = 15
LOG_EPS = math.log(1e-12)


def log_softmax(logits: Tensor) -> Tensor:
    """``log_softmax`` over the last dim; ~4x faster than torch's on the CPU for rows of ~10 classes."""
    shifted = logits - logits.amax(-1, keepdim=True)  # subtract first: exact top log-prob at large logits
    return shifted - shifted.exp().sum(-1, keepdim=True).log()


def _flat_sum(index: Tensor, values: Tensor, size: int) -> Tensor:
    """``out[k] = sum of values where index == k`` in float64: a 1-d ``index_add_``, deterministic on CUDA
    under ``torch.use_deterministic_algorithms``, and ~10x faster than a one-hot on the CPU."""
    out = torch.zeros(size, dtype=torch.float64, device=values.device)
    return out.index_add_(0, index.reshape(-1), values.reshape(-1).to(torch.float64))


# ---------------------------------------------------------------- combiners


def mean_prob(logits: Tensor) -> Tensor:
    """Log of the arithmetic mean of the members' softmaxes (the deep-ensemble default)."""
    return torch.logsumexp(log_softmax(logits), dim=0) - math.log(logits.shape[0])  # (B, C)


def geo_mean(logits: Tensor) -> Tensor:
    """Renormalized geometric mean of the members' softmaxes: ``log_softmax(mean_i log p_i)``.

    Unnormalized (the seed's Lightning module) it sums to ``<= 1`` (AM-GM). Renormalized it *equals*
    :func:`mean_logit` (the spec's [analysis]: ``log p_i = z_i - logsumexp(z_i)``, and the per-member
    normalizers are constant across classes), so the two names give the same distribution up to
    rounding; both exist because both conventions are in use.
    """
    return log_softmax(log_softmax(logits).mean(0))  # (B, C)


def mean_logit(logits: Tensor) -> Tensor:
    """Softmax of the mean logit (a wide net whose head averages the members' logits)."""
    return log_softmax(logits.mean(0))  # (B, C)


def vote_counts(predictions: Tensor, n_classes: int) -> Tensor:
    """``(P, B)`` class indices -> ``(B, C)`` number of members predicting each class (float64)."""
    n_examples = predictions.shape[-1]
    slot = predictions + n_classes * torch.arange(n_examples, device=predictions.device)  # (P, B)
    ones = torch.ones((), dtype=torch.float64, device=predictions.device).expand(slot.shape)
    return _flat_sum(slot, ones, n_examples * n_classes).view(n_examples, n_classes)  # (B, C)


def vote(logits: Tensor) -> Tensor:
    """Majority vote: log of the vote fractions (``-inf`` for a class nobody voted for).

    Each member votes for its argmax (ties: lowest class index); the ensemble predicts the class
    with most votes, ties again to the lowest class index.
    """
    counts = vote_counts(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)  # (B, C)
    return (counts / logits.shape[0]).log()  # (B, C)


COMBINERS: dict[str, Combiner] = {"mean_prob": mean_prob, "geo_mean": geo_mean, "mean_logit": mean_logit, "vote": vote}


def get_combiner(combiner: str | Combiner) -> Combiner:
    """A combiner by name (one of :data:`COMBINERS`) or the callable itself."""
    if callable(combiner):
        return combiner
    if combiner not in COMBINERS:
        raise ValueError(f"unknown combiner '{combiner}'; use one of {', '.join(COMBINERS)}")
    return COMBINERS[combiner]


# ---------------------------------------------------------------- calibration bins


def bin_index(confidence: Tensor, n_bins: int = N_BINS) -> Tensor:
    """Bin ``k`` of each confidence in ``[0, 1]``: ``k/n < conf <= (k+1)/n``, 0 -> bin 0."""
    edges = (torch.arange(n_bins + 1, dtype=torch.float64, device=confidence.device) / n_bins).to(confidence.dtype)
    return torch.bucketize(confidence, edges[1:-1], right=False)  # same shape as confidence


def bin_sums(confidence: Tensor, correct: Tensor, n_bins: int = N_BINS) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin (count, sum of confidence, sum of correct) of ``(..., B)`` inputs, each ``(..., n_bins)``."""
    lead = confidence.shape[:-1]
    rows = math.prod(lead)
    offset = n_bins * torch.arange(rows, device=confidence.device).view(lead + (1,))  # (..., 1)
    slot = bin_index(confidence, n_bins) + offset  # (..., B): row-major (row, bin)
    ones = torch.ones((), dtype=torch.float64, device=confidence.device).expand(slot.shape)
    sums = [_flat_sum(slot, v, rows * n_bins).view(lead + (n_bins,)) for v in (ones, confidence, correct)]
    return sums[0], sums[1], sums[2]


def calibration_errors(count: Tensor, conf_sum: Tensor, correct_sum: Tensor) -> tuple[Tensor, Tensor]:
    """(ECE, rESCE) from per-bin sums ``(..., n_bins)``; empty bins contribute 0."""
    n = count.sum(-1)  # (...)
    gap = correct_sum - conf_sum  # (..., n_bins): n_k (acc_k - conf_k)
    ece = gap.abs().sum(-1) / n
    resce = ((gap.square() / count.clamp_min(1)).sum(-1) / n).sqrt()
    return ece, resce


def binned_calibration(confidence: Tensor, correct: Tensor, n_bins: int = N_BINS) -> tuple[Tensor, Tensor]:
    """(ECE, rESCE) of ``(..., B)`` confidences and 0/1 correctness."""
    return calibration_errors(*bin_sums(confidence, correct, n_bins))


# ---------------------------------------------------------------- per-chunk sums


def prediction_sums(log_probs: Tensor, targets: Tensor, n_bins: int = N_BINS, *, probs: Tensor | None = None,
                    pred: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
    """Sums over the examples of ``(..., B, C)`` log-probabilities: correct, nll, brier and bins.

    ``probs`` (``log_probs.exp()``) and ``pred`` (``log_probs.argmax(-1)``) when the caller has them.
    """
    probs = log_probs.exp() if probs is None else probs  # (..., B, C)
    pred = log_probs.argmax(-1) if pred is None else pred  # (..., B)
    index = targets.expand(pred.shape).unsqueeze(-1)  # (..., B, 1)
    confidence = probs.gather(-1, pred.unsqueeze(-1)).squeeze(-1)  # (..., B)
    log_py = log_probs.gather(-1, index).squeeze(-1)  # (..., B)
    log_py = torch.where(torch.isneginf(log_py), LOG_EPS, log_py)
    p_y = probs.gather(-1, index).squeeze(-1)  # (..., B)
    squares = probs.square().scatter_(-1, index, (1 - p_y).square().unsqueeze(-1))  # (..., B, C): (p - onehot)^2
    brier = squares.sum(-1)  # (..., B)
    correct = pred == targets  # (..., B)
    count, conf_sum, correct_sum = bin_sums(confidence, correct, n_bins)
    return {"correct": correct.sum(-1, dtype=torch.float64), "nll": -log_py.sum(-1, dtype=torch.float64),
            "brier": brier.sum(-1, dtype=torch.float64),
            "bin_count": count, "bin_conf": conf_sum, "bin_correct": correct_sum}  # fmt: skip


def diversity_sums(member_log_probs: Tensor, ensemble_pred: Tensor, *, probs: Tensor | None = None,
                   pred: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
    """Sums over the examples of the diversity terms, from ``(P, B, C)`` member log-probabilities."""
    n_members, _, n_classes = member_log_probs.shape
    probs = member_log_probs.exp() if probs is None else probs  # (P, B, C)
    pred = member_log_probs.argmax(-1) if pred is None else pred  # (P, B)
    log_mean = torch.logsumexp(member_log_probs, 0) - math.log(n_members)  # (B, C)
    kl = (probs * (member_log_probs - log_mean)).sum(-1)  # (P, B)
    sq_dev = (probs - log_mean.exp()).square().sum(-1)  # (P, B)
    log_z = torch.logsumexp(member_log_probs.mean(0), -1)  # (B,): log of the geometric mean's mass
    counts = vote_counts(pred, n_classes)  # (B, C)
    pairs = max(n_members * (n_members - 1), 1)
    agreeing = (counts * (counts - 1)).sum(-1) / pairs  # (B,): fraction of ordered pairs that agree
    disagreement = (1 - agreeing).sum() if n_members > 1 else agreeing.sum()  # P = 1: 0
    return {"disagreement": disagreement,
            "disagreement_ensemble": (pred != ensemble_pred).to(torch.float64).mean(0).sum(),
            "kl_to_ensemble": kl.mean(0).sum(dtype=torch.float64),
            "sq_deviation": sq_dev.mean(0).sum(dtype=torch.float64),
            "ambiguity_nll": -log_z.sum(dtype=torch.float64)}  # fmt: skip


# ---------------------------------------------------------------- streaming accumulator


def _as_logits(logits: Tensor) -> Tensor:
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    return logits.float() if logits.element_size() < 4 else logits


def _summaries(sums: Mapping[str, Tensor], n: int, prefix: str) -> dict[str, Tensor]:
    ece, resce = calibration_errors(sums["bin_count"], sums["bin_conf"], sums["bin_correct"])
    return {f"{prefix}accuracy": sums["correct"] / n, f"{prefix}nll": sums["nll"] / n,
            f"{prefix}brier": sums["brier"] / n, f"{prefix}ece": ece, f"{prefix}resce": resce}  # fmt: skip


class EnsembleMetrics:
    """Streaming member, ensemble and diversity metrics over a split fed in ``(P, B, C)`` chunks.

    The state (:attr:`state`) has a fixed size, allocated at the first :meth:`update` on the
    logits' device: ``(P,)`` and ``(P, n_bins)`` for the members, ``()`` and ``(n_bins,)`` for the
    ensemble and the diversity terms, all float64. Feeding a split in one chunk or many gives the
    same numbers up to float64 summation order.
    """

    def __init__(self, combiner: str | Combiner = "mean_prob", n_bins: int = N_BINS) -> None:
        self.combiner = get_combiner(combiner)
        self.combiner_name = combiner if isinstance(combiner, str) else getattr(combiner, "__name__", "custom")
        self.n_bins = n_bins
        self.n = 0
        self.state: dict[str, Tensor] = {}
        self._shape: tuple[int, int] | None = None  # (P, C)

    def _check(self, logits: Tensor, targets: Tensor) -> None:
        if logits.dim() != 3 or targets.shape != logits.shape[1:2]:
            raise ValueError(f"expected (P, B, C) logits and (B,) targets, got {tuple(logits.shape)} "
                             f"and {tuple(targets.shape)}")  # fmt: skip
        shape = (logits.shape[0], logits.shape[2])
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"(P, C) changed from {self._shape} to {shape} between chunks")
        self._shape = shape

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Add one chunk: ``(P, B, C)`` logits of every member on ``(B,)`` integer targets."""
        self._check(logits, targets)
        logits = _as_logits(logits)
        log_probs = log_softmax(logits)  # (P, B, C)
        probs, pred = log_probs.exp(), log_probs.argmax(-1)  # (P, B, C), (P, B)
        ensemble = self.combiner(logits)  # (B, C)
        ensemble_pred = ensemble.argmax(-1)  # (B,)
        members = prediction_sums(log_probs, targets, self.n_bins, probs=probs, pred=pred)
        sums = {f"member_{k}": v for k, v in members.items()}
        sums |= prediction_sums(ensemble, targets, self.n_bins, pred=ensemble_pred)
        sums |= diversity_sums(log_probs, ensemble_pred, probs=probs, pred=pred)
        for key, value in sums.items():
            if key in self.state:
                self.state[key] += value
            else:
                self.state[key] = value
        self.n += targets.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """The metrics so far: ``member_*`` are ``(P,)``, the rest 0-d (float64, on the device)."""
        if self.n == 0:
            raise ValueError("no examples: call update() first")
        s, n = self.state, self.n
        members = {k.removeprefix("member_"): v for k, v in s.items() if k.startswith("member_")}
        out = _summaries(members, n, "member_") | _summaries(s, n, "")
        out |= {key: s[key] / n for key in ("disagreement", "disagreement_ensemble", "kl_to_ensemble", "ambiguity_nll")}
        out["ambiguity_brier"] = s["sq_deviation"] / n
        out["prob_variance"] = s["sq_deviation"] / (n * self._shape[1])
        return out


# ---------------------------------------------------------------- one-shot helpers


def _chunks(logits: Tensor, targets: Tensor, chunk_size: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    # default: chunks of ~2^20 logits on the CPU (the temporaries stay in cache: ~2x faster than one
    # pass over 64 x 10,000 x 10), ~2^26 on an accelerator (bounded memory, few kernel launches)
    budget = 2**20 if logits.device.type == "cpu" else 2**26
    step = chunk_size or max(budget // max(logits.shape[0] * logits.shape[-1], 1), 1)
    for start in range(0, targets.shape[0], step):
        yield logits[:, start : start + step], targets[start : start + step]


def ensemble_metrics(logits: Tensor, targets: Tensor, combiner: str | Combiner = "mean_prob", *,
                     n_bins: int = N_BINS, chunk_size: int | None = None) -> dict[str, Tensor]:  # fmt: skip
    """All of :meth:`EnsembleMetrics.compute` for ``(P, N, C)`` logits, in chunks of ``chunk_size`` examples
    (default: about 2^20 logits a chunk on the CPU, 2^26 on an accelerator)."""
    metrics = EnsembleMetrics(combiner, n_bins)
    for chunk, y in _chunks(logits, targets, chunk_size):
        metrics.update(chunk, y)
    return metrics.compute()


@torch.no_grad()
def member_metrics(logits: Tensor, targets: Tensor, *, n_bins: int = N_BINS,
                   chunk_size: int | None = None) -> dict[str, Tensor]:  # fmt: skip
    """accuracy, nll, brier, ece, resce of each member, ``(P,)`` each, in one batched pass.

    The per-member baseline a benchmark compares with: ``[member_metrics(logits[i : i + 1], y) for i
    in range(P)]``.
    """
    total: dict[str, Tensor] = {}
    for chunk, y in _chunks(logits, targets, chunk_size):
        for key, value in prediction_sums(log_softmax(_as_logits(chunk)), y, n_bins).items():
            total[key] = total[key] + value if key in total else value
    return _summaries(total, targets.shape[0], "")


def as_floats(metrics: Mapping[str, Tensor]) -> dict[str, float | list[float]]:
    """Python numbers for a report (one host transfer per metric): 0-d -> float, (P,) -> list."""
    return {key: value.item() if value.dim() == 0 else value.tolist() for key, value in metrics.items()}
