"""What the fast engine's paths share: blocks, threads, the normalised E-step, trick 4's test.

See :mod:`em_tutorial.gmm.fast` for the tricks and what they buy.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from em_tutorial.backend import get_array_module, is_numpy_namespace
from em_tutorial.gmm._arrays import eye_like, full_like_shape, to_host
from em_tutorial.gmm.equations import log_density_from_mahalanobis, shifted_exp
from em_tutorial.gmm.precision import NotPositiveDefiniteError, cholesky_lower, log_det_cholesky

BLOCK_SIZE = 2048
"""Samples per block on the CPU where a block's largest temporary is (K, B, d) floats: full
covariances, and the initial M-step of every type; 4 MiB for K = d = 16 in float64.
Those stay in L2 plus a shared L3 (4096 ran 1.5x slower on a 2-core Xeon), while the ~30
array calls per block, and the threads' turns at the interpreter lock, stay small next to
the arithmetic (512 ran 1.3x slower with two threads)."""


def cpu_block_size(n_features, n_components, covariance_type):
    """Samples per block on the CPU: :data:`BLOCK_SIZE`, or more for tied, diag and spherical.

    Their largest temporaries are (B, d) and (B, K) floats, so a block of 2048 samples is
    small next to its ~30 array calls: up to 4 x 2048 samples, a step ran ~20% faster at
    100k x 16 x 16 and 200k x 4 x 32 (diag and spherical, (B, max(d, K)) at 2 MiB in
    float64, 2-core AMD EPYC). At 8 MiB, the size now, 20k x 128 x 8 gets 8192 rather than
    2048 (four blocks of 5000 once :func:`block_slices` evens them out): fits took
    0.92-0.93x the time for diag and spherical, 0.95x for tied (median of 9 and 5,
    alternating, 2-core Intel Xeon). The package's remarks on block sizes are here and at
    :data:`BLOCK_SIZE`.
    """
    if covariance_type == "full":
        return BLOCK_SIZE
    rows_in_8_mib = 2**20 // max(n_features, n_components)  # (B, max(d, K)) float64
    return min(4 * BLOCK_SIZE, max(BLOCK_SIZE, rows_in_8_mib))


def full_block_size_one_thread(n_features, n_components, itemsize):
    """Samples per block for full covariances where one Python thread feeds a library that
    spreads each operation over the cores (PyTorch on the CPU): the (K, B, d) temporaries
    at 4 MiB, B between 512 and 4 x :data:`BLOCK_SIZE`.

    Against :data:`BLOCK_SIZE` (fits on torch tensors, median of 5, alternating, 2-core
    Intel Xeon): 100k x 16 x 16 float32 (4096 samples) 0.82x the time, 20k x 128 x 8
    float64 (512) 0.72x, 200k x 4 x 32 float64 (4096) 0.89x, 100k x 16 x 16 float64 (2048)
    unchanged. Larger blocks mean fewer operations to dispatch; smaller ones, temporaries
    that stay in cache. NumPy keeps :data:`BLOCK_SIZE`: its threads take a block each, and
    the same rule took its 20k x 128 x 8 fit to 1.11x.
    """
    rows_in_4_mib = 2**22 // (n_components * n_features * itemsize)  # (K, B, d)
    return min(4 * BLOCK_SIZE, max(BLOCK_SIZE // 4, rows_in_4_mib))


def block_slices(n_samples, block_size, n_threads=1):
    """(start, stop) of every block: none over ``block_size`` samples, all of one size (to a
    sample), and as many as a multiple of ``n_threads`` where there are that many samples.

    Threads share the blocks as they come free, so with an odd number of blocks on 2
    threads, or a short last block, one thread waits at the end of every step for the
    other: at 20k x 128 x 8 diag, blocks of 8192, 8192 and 3616 took 1.07x the time of four
    blocks of 5000 (median of 5, alternating, two threads).
    """
    if n_samples == 0:
        return []
    n_blocks = -(-n_samples // block_size)
    n_blocks = min(n_samples, -(-n_blocks // n_threads) * n_threads)  # a multiple of n_threads
    bounds = [index * n_samples // n_blocks for index in range(n_blocks + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def over_blocks(sums_over, n_samples, block_size, n_threads):
    """``sums_over(slices)`` for all blocks, the blocks shared by ``n_threads`` threads.

    ``sums_over`` returns a tuple of partial sums; the blocks' tuples are added up.
    """
    slices = block_slices(n_samples, block_size, n_threads)
    if n_threads == 1 or len(slices) == 1:
        return sums_over(slices)
    # Each thread takes the next block when it is free, so a thread the system holds up for
    # a while delays the step by a block, not by its share of them; NumPy and BLAS release
    # the interpreter lock. The blocks' sums are added in block order, whatever the timing.
    parts = map_blocks(lambda start, stop: sums_over([(start, stop)]), n_samples, block_size,
                       n_threads)
    return tuple(sum(part) for part in zip(*parts))


def map_blocks(of_block, n_samples, block_size, n_threads):
    """``[of_block(start, stop) for every block]``, in order, on ``n_threads`` threads."""
    slices = block_slices(n_samples, block_size, n_threads)
    if n_threads == 1 or len(slices) == 1:
        return [of_block(start, stop) for start, stop in slices]
    pool = thread_pool(n_threads, os.getpid())
    return list(pool.map(lambda bounds: of_block(*bounds), slices))


@functools.cache
def thread_pool(n_threads, process_id):
    """The ``n_threads`` threads that :func:`map_blocks` hands blocks to, kept for the process.

    Starting and joining new threads in every step took a third of a step's time: a step at
    20k x 128 x 8 diag (four blocks, two threads) took 0.69x the time with the threads kept
    (median of 40). ``process_id`` is part of the key because a process started by fork
    inherits the pool object but none of its threads, so it must make its own. Idle, the
    threads wait on the pool's queue and use no CPU.
    """
    return ThreadPoolExecutor(n_threads, thread_name_prefix=f"em_tutorial-gmm-{process_id}")


SHORT_ROW = 32
"""Rows shorter than this are summed by :func:`squared_norms` with NumPy's einsum."""


def squared_norms(vectors):
    """||v||^2 along the last axis: shape (...,) from (..., d).

    ``xp.vecdot(v, v, axis=-1)``, except for NumPy rows shorter than :data:`SHORT_ROW`:
    NumPy 2.4's vecdot makes one dot-product call per row, and einsum's summing loop is
    faster on short ones. One block of a full fit, (K, B, d) = (16, 2048, 16), took 0.33x
    the time in float32 and 0.95x in float64, (32, 8192, 4) 0.5x in both; at 32 entries and
    more vecdot was as fast or faster (one thread, 2-core Intel Xeon).
    """
    xp = get_array_module(vectors)
    if is_numpy_namespace(xp) and vectors.shape[-1] < SHORT_ROW:
        return np.einsum("...j,...j->...", vectors, vectors)
    return xp.vecdot(vectors, vectors, axis=-1)


def reference_point(X, block_size):
    """c, the mean of the first block, shape (1, d): a point inside the data to centre on."""
    xp = get_array_module(X)
    return xp.mean(X[: min(block_size, X.shape[0]), :], axis=0, keepdims=True)


def responsibilities(log_joint, axis, log_floor):
    """z_nk (eq. 5) from the log-joint ln pi_k N_nk, and the block's sum_n ln p(x_n).

    ``log_floor`` is :func:`em_tutorial.gmm.equations.log_exp_floor`; ``axis`` runs over k.
    """
    xp = get_array_module(log_joint)
    _, joint, peak = shifted_exp(log_joint, axis, log_floor)
    totals = xp.sum(joint, axis=axis, keepdims=True)  # sum_k pi_k N_nk / exp(peak)
    # z_nk = pi_k N_nk / sum_j pi_j N_nj;  ln p(x_n) = ln sum_k pi_k N_nk
    return joint / totals, xp.sum(xp.log(totals) + peak)


def log_joint_offset(weights, precisions_cholesky, covariance_type, means):
    """offset_k = ln pi_k + ln |P_k| - d/2 ln(2 pi), so ln pi_k N_nk = offset_k - 1/2 ||y_nk||^2.

    ``weights=None`` is the seed's uniform prior pi_k = 1/K. Returns shape (K,).
    """
    xp = get_array_module(means, precisions_cholesky, weights)
    n_components, n_features = means.shape
    log_weights = (
        full_like_shape((n_components,), -math.log(n_components), means)
        if weights is None
        else xp.log(weights)
    )  # (K,)
    log_det = log_det_cholesky(precisions_cholesky, covariance_type, n_features)
    return log_weights + log_density_from_mahalanobis(0.0, log_det, n_features)  # (K,)


def rows_that_cancel_too_much(correction, result, dtype):
    """Trick 4, row by row: the i (a host list) where some ``result[i] = total - correction``
    loses more than half the dtype's digits.

    True where correction / result > eps^(-1/2), or where a correction left a result that is
    not positive; written without a division, so that zero needs no special case. One
    host read.
    """
    xp = get_array_module(correction, result)
    loses = correction * xp.finfo(dtype).eps ** 0.5 > result
    loses = xp.reshape(loses, (loses.shape[0], -1))  # (rows, entries per row)
    return np.flatnonzero(to_host(xp.any(loses, axis=1))).tolist()


def cancels_too_much(correction, result, dtype):
    """Does any ``result = total - correction`` lose more than half the dtype's digits?
    (:func:`rows_that_cancel_too_much`)"""
    return bool(rows_that_cancel_too_much(correction, result, dtype))


def matrix_cancels_too_much(correction_sizes, scatters, dtype):
    """Trick 4 for full and tied: does some ``S_new = S - N s s^T`` lose more than half the
    dtype's digits in *any* direction?

    The subtraction rounds off every entry by ~eps N ||s||^2, in whatever direction; the
    narrowest direction of S_new holds its smallest eigenvalue lambda_min, so the share
    lost there is eps N ||s||^2 / lambda_min. Looking only along s, or at the diagonal,
    misses a thin direction oblique to the axes (a component 100 times narrower along
    (1, -1) than along (1, 1)). lambda_min > sqrt(eps) N ||s||^2 is tested as "S_new minus
    that much of I has a Cholesky factor": 3.5x (d = 128) to 7x (d = 16) faster than the
    eigenvalues, one host read either way.

    Parameters
    ----------
    correction_sizes : array of shape (M,)
        N_k ||s_k||^2 for each matrix (for tied, sum_k N_k ||m_k||^2: the trace of the
        pooled correction).
    scatters : array of shape (M, d, d)
        S_new, as the subtraction left it.
    dtype
        The working dtype.
    """
    xp = get_array_module(correction_sizes, scatters)
    margins = correction_sizes * xp.finfo(dtype).eps ** 0.5  # sqrt(eps) N ||s||^2: (M,)
    eye = eye_like(scatters.shape[-1], scatters)  # (d, d)
    # S_new - margin I, or I where nothing was subtracted (an empty component's S_new = 0);
    # a NaN (a collapsed component) is left for the log-likelihood to report.
    shifted = xp.where((margins > 0)[:, None, None] & xp.isfinite(scatters),
                       scatters - margins[:, None, None] * eye, eye)  # (M, d, d)
    try:
        lower = cholesky_lower(shifted, xp)
    except NotPositiveDefiniteError:
        return True
    return not bool(xp.all(xp.isfinite(lower)))  # CuPy gives NaN instead of an error


EXPANSION_TOLERANCE = 1e-2
"""The expanded distances of trick 3 round off by about 4 eps ||(c - mu_k) P_k||^2 near
component k (the terms cancel that much); above this many nats they are formed from
centred differences instead."""


def expansion_is_accurate(distances_of_centre):
    """Are the expanded distances within :data:`EXPANSION_TOLERANCE`? (One host read.)

    ``distances_of_centre`` is ||(c - mu_k) P_k||^2 for every k, shape (K,).
    """
    xp = get_array_module(distances_of_centre)
    eps = xp.finfo(distances_of_centre.dtype).eps
    return float(xp.max(distances_of_centre)) * 4 * eps <= EXPANSION_TOLERANCE
