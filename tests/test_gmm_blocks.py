"""The fast engine's blocks and its squared norms (``em_tutorial.gmm.fast._blocks``)."""

import multiprocessing
import os
import threading

import array_api_strict
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from em_tutorial import gmm
from em_tutorial.backend import to_numpy
from em_tutorial.gmm._engines import block_size_for
from em_tutorial.gmm.fast import log_gaussian_density_blocked
from em_tutorial.gmm.fast._blocks import BLOCK_SIZE, SHORT_ROW, block_slices, squared_norms


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


@pytest.mark.parametrize("namespace", [np, array_api_strict, torch])
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
    assert_allclose(to_numpy(got), expected, rtol=rtol)


def _density_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 3))  # (N, d)
    means = X[:4]  # (K, d)
    precisions_cholesky = np.full((4, 3), 2.0)  # diag: (K, d)
    return X, means, precisions_cholesky


def _threaded_density():
    X, means, precisions_cholesky = _density_problem()
    return log_gaussian_density_blocked(X, means, precisions_cholesky, "diag", block_size=500,
                                        n_threads=2)  # 8 blocks on the kept threads


def _pool_threads():
    return {thread.ident for thread in threading.enumerate()
            if thread.name.startswith(f"em_tutorial-gmm-{os.getpid()}")}


def test_threads_are_kept_between_calls():
    _threaded_density()
    kept = _pool_threads()  # with this pool's 2, those of any other size used before
    assert len(kept) >= 2
    result = _threaded_density()
    assert _pool_threads() == kept  # none started, none ended
    assert_allclose(result, gmm.log_gaussian_density(*_density_problem(), "diag"), rtol=1e-12)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_threads_of_its_own():
    # The parent's kept threads do not exist in a child started by fork: a pool shared with
    # it would take the blocks and never run them (the call would hang).
    expected = _threaded_density()  # the parent now keeps its threads
    with multiprocessing.get_context("fork").Pool(1) as child:
        got = child.apply_async(_threaded_density).get(timeout=60)
    assert_allclose(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("n_features, n_components, dtype, expected", [
    (16, 16, "float32", 4096),  # (K, B, d) at 4 MiB
    (16, 16, "float64", 2048),
    (4, 32, "float64", 4096),
    (128, 8, "float64", 512),
    (512, 64, "float64", 512),  # never below 512 samples
    (2, 2, "float64", 8192),  # never above 8192
])
def test_full_blocks_on_torch_tensors_hold_4_mib(n_features, n_components, dtype, expected):
    X_numpy = np.zeros((10, n_features), dtype=dtype)
    X_torch = torch.asarray(X_numpy)
    assert block_size_for(X_torch, n_components, "full") == expected
    assert block_size_for(X_numpy, n_components, "full") == BLOCK_SIZE  # its threads take one each
    assert block_size_for(X_torch, n_components, "diag") == block_size_for(X_numpy, n_components,
                                                                           "diag")
