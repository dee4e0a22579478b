"""The evoens_binary plugin's hooks: registers its providers with evoens."""

from __future__ import annotations

from collections.abc import Iterator

from evoens import Provider, hookimpl


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    yield from ()
    yield from _binary_train_providers()


def _binary_train_providers() -> Iterator[Provider]:
    """Binarized model families and the binary-mnist benchmark suite (binary-train)."""
    from evoens_binary import mnist_bench, models

    yield Provider("model", "binary_mlp", models.binary_mlp_model, "binarized MLP: +-1 hidden units, STE by name")
    yield Provider("model", "binary_cnn", models.binary_cnn_model, "binarized CNN: sign conv blocks, STE by name")
    yield Provider("benchmark", "binary-mnist", mnist_bench.suite, mnist_bench.DESCRIPTION)
