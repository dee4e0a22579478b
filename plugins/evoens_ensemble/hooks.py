"""The evoens_ensemble plugin's hooks: ensemble fitness providers and training modes."""

from __future__ import annotations

from collections.abc import Iterator

from evoens import Provider, hookimpl


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
    yield Provider("fitness", "ensemble_ncl", lambda: f.negative_correlation(0.5),
                   "negative correlation learning (Liu & Yao 1999), kappa = 0.5")  # fmt: skip
