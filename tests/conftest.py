"""Shared pytest set-up: markers, the GPU skip, and reproducible random numbers."""

import numpy as np
import pytest

from em_tutorial.backend import gpu_available


def _gpu_skip_reason():
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed (pip install 'em_tutorial[gpu]')"
    if not gpu_available():
        return "CuPy is installed but sees no CUDA GPU on this machine"
    return None


GPU_SKIP_REASON = _gpu_skip_reason()


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
