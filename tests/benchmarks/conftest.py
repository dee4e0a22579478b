"""The suites' tests run many tiny layers, as the plugins' tests do: one intra-op thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from evoens.bench import torch_threads

MULTI_THREAD = {"test_harness.py", "test_layout.py"}  # the harness's own timings, subprocess runs


@pytest.fixture(autouse=True)
def _one_thread_for_suite_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.path.name in MULTI_THREAD:
        yield
        return
    with torch_threads(1):
        yield
