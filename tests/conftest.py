"""Shared fixtures; markers and warning filters live in tox.ini's [pytest] section."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from evoens.bench import torch_threads

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread_for_plugin_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """The plugins' tests (tests/evoens_*/) run many tiny layers: a second intra-op thread only
    adds synchronisation stalls there (up to 30x slower on a shared 2-core machine)."""
    if request.path.parent.name.startswith("evoens_"):
        with torch_threads(1):
            yield
    else:
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none available)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
