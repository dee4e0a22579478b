"""The evoens_ensemble plugin's hooks: ensemble fitness providers and training modes, and, for a run
with an ``[extra.ensemble]`` table, the ensemble's metrics per generation and in ``summary.json``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from evoens import Provider, StashKey, hookimpl
from evoens.config import RunConfig, option, parse_options


@dataclass
class EnsembleSettings:
    """``[extra.ensemble]``: present, it turns the plugin's reports on."""

    combiner: str = option("mean_prob", "how members combine", choices=("mean_prob", "geo_mean", "mean_logit", "vote"))
    every: int = option(1, "the population's ensemble metrics on the batch every N generations (0: never)", ge=0)
    selection: int = option(0, "Caruana selection picks on the validation split (0: every candidate)", ge=0)
    ood: str = option("", "a shifted test split judged too: 'rotate:3', 'blur:2', ... or 'cifar10_1' ('' = none)")


SETTINGS = StashKey[EnsembleSettings]()


@dataclass
class InterpOptions:
    """``[model.options]`` of ``interp_mlp`` / ``interp_cnn`` (:mod:`evoens_ensemble.interp`)."""

    members: int = option(4, "M: sub-networks of the wide network", ge=1)
    lam: float = option(0.0, "scale of the cross-member blocks: 0 = M independent nets, 1 = one wide net", ge=0, le=1)
    channels: list[int] = option([8, 16], "interp_cnn: channels per member and conv stage", ge=1)
    kernel: int = option(5, "interp_cnn: conv kernel size", ge=1)


def _interp_mlp(input_shape: tuple[int, ...], num_outputs: int, cfg: Any) -> torch.nn.Module:
    from evoens_ensemble.interp import InterpMLP

    o = InterpOptions(**cfg.options)
    return InterpMLP(math.prod(input_shape), list(cfg.hidden), num_outputs, o.members, o.lam, activation=cfg.activation)


def _interp_cnn(input_shape: tuple[int, ...], num_outputs: int, cfg: Any) -> torch.nn.Module:
    from evoens_ensemble.interp import InterpCNN

    o = InterpOptions(**cfg.options)
    return InterpCNN(input_shape, list(o.channels), num_outputs, o.members, o.lam, kernel=o.kernel,
                     activation=cfg.activation)  # fmt: skip


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    from evoens_ensemble import fitness as f

    yield Provider("fitness", "ensemble_mean_loss", lambda: f.mean_loss, "-CE_i / P: the mean of the members' losses")
    for c in f.COMBINERS:
        yield Provider("fitness", f"ensemble_joint:{c}", lambda c=c: f.joint(c),
                       f"-NLL of the {c} ensemble / P: trains the combined prediction")  # fmt: skip
        yield Provider("fitness", f"ensemble_nll:{c}", lambda c=c: f.population_score(c),
                       f"-NLL of the {c} ensemble for every member: the population's score")  # fmt: skip
        yield Provider("fitness", f"ensemble_loo_gain:{c}", lambda c=c: f.leave_one_out_gain(c),
                       f"NLL of the {c} ensemble without the member minus with it")  # fmt: skip
    yield Provider("model", "interp_mlp", _interp_mlp, "M MLPs as one wide MLP, cross blocks scaled by lam",
                   options=InterpOptions)  # fmt: skip
    yield Provider("model", "interp_cnn", _interp_cnn, "M conv nets as one wide conv net, cross blocks scaled by lam",
                   options=InterpOptions)  # fmt: skip
    yield Provider("fitness", "ensemble_ncl", lambda: f.negative_correlation(0.5),
                   "negative correlation learning (Liu & Yao 1999), kappa = 0.5")  # fmt: skip


@hookimpl
def evoens_configure(config: RunConfig) -> None:
    if "ensemble" in config.extra:  # validated here: a mistake stops the run before anything is built
        parse_options(EnsembleSettings, config.extra["ensemble"], "extra.ensemble")


@hookimpl
def evoens_run_start(run: Any) -> None:
    if "ensemble" in run.config.extra:
        run.stash[SETTINGS] = parse_options(EnsembleSettings, run.config.extra["ensemble"], "extra.ensemble")


@hookimpl
def evoens_after_evaluate(run: Any, generation: int, candidates: Any, outputs: Any, batch: Any) -> dict[str, Any] | None:  # noqa: E501
    """The evaluated population's ensemble on this generation's batch (no second forward)."""
    settings = run.stash.get(SETTINGS, None)
    if settings is None or not settings.every or outputs is None or generation % settings.every:
        return None
    if getattr(candidates, "per_member_inputs", False):  # members saw different inputs: no ensemble
        return None
    from evoens_ensemble.metrics import EnsembleMetrics

    metrics = EnsembleMetrics(settings.combiner)
    metrics.update(candidates.gather(outputs), batch[1])  # (P, B, C)
    found = metrics.compute()
    return {f"ensemble_batch_{k}": found[k].to(torch.float32) for k in ("accuracy", "nll", "ece", "disagreement")}


@hookimpl
def evoens_summary(run: Any) -> dict[str, Any] | None:
    settings = run.stash.get(SETTINGS, None)
    if settings is None or run.data.num_classes <= 0:
        return None
    from evoens_ensemble.judge import judge

    ood = None
    if settings.ood:
        from evoens_ensemble.shift import ood_split

        ood = ood_split(run.data, settings.ood, seed=run.config.seed, data_dir=run.config.data.data_dir)
    entry = judge(run.trainer.candidates(), run.data.val, run.data.test, settings.combiner, settings.selection, ood)
    return {"ensemble": {**entry, "ood_split": settings.ood or None}}
