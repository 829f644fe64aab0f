"""The fast engine's blocks and its squared norms (``em_tutorial.gmm.fast._blocks``)."""

import array_api_strict
import numpy as np
import pytest
from numpy.testing import assert_allclose

from em_tutorial.gmm.fast._blocks import SHORT_ROW, block_slices, squared_norms


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("block_size", [1, 7, 2048, 8192])
@pytest.mark.parametrize("n_samples", [1, 2, 5, 100, 1568, 20000, 100003])
def test_blocks_cover_the_samples_evenly(n_samples, block_size, n_threads):
    slices = block_slices(n_samples, block_size, n_threads)
    starts, stops = zip(*slices)
    assert starts[0] == 0 and stops[-1] == n_samples
    assert list(starts[1:]) == list(stops[:-1])  # contiguous, in order
    sizes = [stop - start for start, stop in slices]
    assert max(sizes) <= block_size
    assert max(sizes) - min(sizes) <= 1  # no short last block to keep a thread waiting
    # as few blocks as the size allows, rounded up to a multiple of the threads
    fewest = -(-n_samples // block_size)
    assert len(slices) == min(n_samples, -(-fewest // n_threads) * n_threads)


def test_no_blocks_for_no_samples():
    assert block_slices(0, 2048, 2) == []


@pytest.mark.parametrize("namespace", [np, array_api_strict])
@pytest.mark.parametrize("n_features", [1, 4, 16, SHORT_ROW - 1, SHORT_ROW, 128])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_squared_norms_are_sums_of_squares(namespace, n_features, dtype):
    # Both branches (einsum for short NumPy rows, vecdot otherwise) against a float64 sum;
    # a sum of d positive terms rounds off by at most ~d eps relative.
    rtol = n_features * np.finfo(dtype).eps
    vectors = np.random.default_rng(n_features).normal(size=(3, 50, n_features)).astype(dtype)
    expected = np.sum(vectors.astype(np.float64) ** 2, axis=-1)  # (3, 50)
    got = squared_norms(namespace.asarray(vectors))
    assert got.shape == (3, 50) and got.dtype == namespace.asarray(vectors).dtype
    assert_allclose(np.asarray(got), expected, rtol=rtol)
