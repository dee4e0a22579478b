"""The evoens_binary plugin's hooks: registers its providers with evoens.

``grad_estimator`` providers: the factory takes the estimator's config fields as keywords and
returns an :class:`evoens_binary.estimators.GradEstimator`
(``registry.create("grad_estimator", "nes", popsize=500).estimate(model, batch=(x, y))``).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from evoens import Provider, hookimpl


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    yield from _estimator_providers()
    yield from _binary_train_providers()


def _estimator_providers() -> Iterator[Provider]:
    """Gradient estimators (STE family, CDG, NES, the open ideas)."""
    from evoens_binary import cdg, hybrid, nes
    from evoens_binary.estimators import SteGradient
    from evoens_binary.ops import STES

    for name in STES:
        yield Provider("grad_estimator", f"ste:{name}", partial(SteGradient, ste=name), f"autograd through {name} STE")
    yield Provider("grad_estimator", "cdg", cdg.CdgGradient, "central coordinate differences (BinaryDuo CDG)")
    yield Provider("grad_estimator", "nes", nes.NesGradient, "Gaussian search gradient, antithetic, batched")
    yield Provider("grad_estimator", "nes_guided", hybrid.GuidedNesGradient, "NES guided by STE directions")
    yield Provider("grad_estimator", "nes_cv", hybrid.ControlVariateNes, "NES with the STE gradient as control variate")
    yield Provider("grad_estimator", "ste_nes", hybrid.SteThenNes, "STE, handing over to NES on a plateau")


def _binary_train_providers() -> Iterator[Provider]:
    """Binarized model families (binary-train)."""
    from evoens_binary import models

    yield Provider("model", "binary_mlp", models.binary_mlp_model, "binarized MLP: +-1 hidden units, STE by name")
    yield Provider("model", "binary_cnn", models.binary_cnn_model, "binarized CNN: sign conv blocks, STE by name")
