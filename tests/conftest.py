"""Shared pytest set-up: markers, the GPU skip, and reproducible random numbers."""

import numpy as np
import pytest

from em_tutorial.backend import gpu_unavailable_reason

GPU_SKIP_REASON = gpu_unavailable_reason()


def pytest_collection_modifyitems(config, items):
    if GPU_SKIP_REASON is None:
        return
    skip = pytest.mark.skip(reason=f"GPU test skipped: {GPU_SKIP_REASON}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
