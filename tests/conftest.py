"""Shared fixtures; markers and warning filters live in tox.ini's [pytest] section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none available)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
