"""One whole EM iteration, E-step (eq. 5) then M-step (eq. 7), in two versions side by side:

* :func:`em_step` -- the plain composition of :func:`e_step` and :func:`m_step`, to read.
* :func:`em_step_blocked` -- the fast path :class:`GaussianMixture` runs. One pass over X in
  blocks of :data:`BLOCK_SIZE` samples; each block goes through the E-step and straight into
  the M-step's sums while it is still in cache, and no (N, K) or (N, K, d) array is built.

The fast path's trick: the E-step already has every centred, whitened difference
y_nk = (x_n - mu_k) P_k, shape (K, B, d) for a block. The M-step's scatter
sum_n z_nk (x_n - mu_k)(x_n - mu_k)^T is P_k^{-T} (sum_n z_nk y_nk^T y_nk) P_k^{-1}, so it
reuses them (centred before squaring, which keeps float32 accurate) instead of forming the
differences again. They are centred on the *old* means, which is the seed's eq. 7 as it
stands; the textbook covariance moves the centre to the new means afterwards:

    sum_n z_nk (x_n - mu_new)(x_n - mu_new)^T
        = sum_n z_nk (x_n - mu_old)(x_n - mu_old)^T - N_k (mu_new - mu_old)(mu_new - mu_old)^T.

That correction is small once the means settle. After a jump of J old standard deviations it
cancels about log10(J^2) digits; where that would be more than half the dtype's digits (J
above ~54 in float32, ~8000 in float64) the step makes a second pass over X instead, centred
on the new means.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._density import (
    BLOCK_SIZE,
    _check_shapes,
    _log_density_from_mahalanobis,
    augmented_precisions_cholesky,
    whitened_differences,
)
from em_tutorial.gmm._e_step import log_e_step, log_exp_floor, shifted_exp
from em_tutorial.gmm._linalg import invert_lower_triangular
from em_tutorial.gmm._m_step import _covariances_from_scatter, m_step
from em_tutorial.gmm._precision import log_det_cholesky


def em_step(X, weights, means, precisions_cholesky, covariance_type="full", reg_covar=1e-6,
            seed_form=False):
    """One EM iteration with the plain functions.

    Parameters
    ----------
    X : array of shape (N, d)
    weights : array of shape (K,) or None
        pi_k; ``None`` for the seed's uniform prior in the E-step.
    means : array of shape (K, d)
        mu_k, the current means.
    precisions_cholesky : array
        P_k, shaped per ``covariance_type`` (see :func:`log_gaussian_density`).
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    reg_covar : float, default=1e-6
    seed_form : bool, default=False
        Centre the new covariances on the current (old) means, the seed's eq. 7, instead of
        the new means.

    Returns
    -------
    weights, means, covariances
        The new parameters, as from :func:`m_step`.
    mean_log_likelihood : 0-d array
        (1/N) sum_n ln p(x_n) under the parameters *passed in* (eq. 4 divided by N).
    """
    xp = get_array_module(X, means, precisions_cholesky, weights)
    log_resp, log_norm = log_e_step(X, means, precisions_cholesky, covariance_type, weights)
    new = m_step(X, xp.exp(log_resp), covariance_type, reg_covar,
                 covariance_means=means if seed_form else None)
    return (*new, xp.mean(log_norm))


def em_step_blocked(X, weights, means, precisions_cholesky, covariance_type="full",
                    reg_covar=1e-6, seed_form=False, block_size=BLOCK_SIZE, n_threads=1):
    """Same result as :func:`em_step`, in one blocked pass over X.

    Arguments and returns as in :func:`em_step`, plus

    block_size : int, default=BLOCK_SIZE
        Samples per block.
    n_threads : int, default=1
        CPU threads that share the blocks (NumPy only; a GPU parallelises inside each
        operation). With more than one, limit BLAS to one thread each, as
        :class:`GaussianMixture` does, or they oversubscribe the cores.

    Per block the work is two batched matrix products and two passes over the (K, B, d)
    array of whitened differences (squared norms, and weighting by z_nk).
    """
    _check_shapes(X, means, precisions_cholesky, covariance_type)
    xp = get_array_module(X, means, precisions_cholesky, weights)
    n_samples = X.shape[0]
    n_components, n_features = means.shape
    dtype = X.dtype
    p_augmented = augmented_precisions_cholesky(means, precisions_cholesky, covariance_type)
    # ln pi_k N(x | mu_k, Sigma_k) = offset_k - 1/2 ||y_k||^2, with
    # offset_k = ln pi_k + ln |P_k| - d/2 ln(2 pi)
    log_weights = (
        xp.full((n_components,), -math.log(n_components), dtype=dtype) if weights is None
        else xp.log(weights)
    )  # (K,)
    offset = log_weights + _log_density_from_mahalanobis(
        0.0, log_det_cholesky(precisions_cholesky, covariance_type, n_features), n_features
    )  # (K,)

    log_floor = log_exp_floor(xp, dtype)

    def sums_over_blocks(starts, centres=None):
        """The E-step, and the M-step's sums over the blocks that begin at ``starts``.

        The scatter is sum_n z_nk y_nk^T y_nk (whitened, centred on the old means), or with
        ``centres`` given, sum_n z_nk (x_n - c_k)(x_n - c_k)^T.
        """
        counts = 0.0  # sum_n z_nk, (K,)
        weighted_sums = 0.0  # sum_n z_nk x_n, (K, d)
        scatter = 0.0  # (K, d, d)
        total_log_norm = 0.0  # sum_n ln p(x_n)
        for start in starts:
            stop = min(start + block_size, n_samples)  # the array API has no out-of-range slices
            X_block = X[start:stop, :]  # (B, d)
            # E-step. y_nk = (x_n - mu_k) P_k: (K, B, d)
            whitened = whitened_differences(X_block, p_augmented)
            # ln pi_k N(x_n | mu_k, Sigma_k); vecdot squares and sums in one pass: (K, B)
            log_joint = offset[:, None] - 0.5 * xp.vecdot(whitened, whitened, axis=-1)
            # z_nk = pi_k N_nk / sum_j pi_j N_nj (eq. 5), via the largest term of each column
            _, joint, peak = shifted_exp(log_joint, 0, log_floor)  # (K, B), (1, B)
            column_sums = xp.sum(joint, axis=0)  # (B,)
            resp = joint / column_sums  # z_nk, transposed: (K, B)
            # ln p(x_n) = ln sum_k pi_k N_nk
            total_log_norm = total_log_norm + xp.sum(xp.log(column_sums) + peak[0, :])

            # M-step sums.
            counts = counts + xp.sum(resp, axis=1)  # (K,)
            weighted_sums = weighted_sums + xp.matmul(resp, X_block)  # (K, B) @ (B, d)
            if centres is not None:
                whitened = X_block[None, :, :] - centres[:, None, :]  # x_n - c_k: (K, B, d)
            # sum_n z_nk y_nk^T y_nk: (K, d, B) @ (K, B, d) -> (K, d, d)
            weighted = whitened * resp[:, :, None]  # z_nk y_nk: (K, B, d)
            scatter = scatter + xp.matmul(xp.matrix_transpose(weighted), whitened)
        return counts, weighted_sums, scatter, total_log_norm

    def sums(centres=None):
        block_starts = list(range(0, n_samples, block_size))
        if n_threads == 1:
            return sums_over_blocks(block_starts, centres)
        # Every thread takes every n_threads-th block; NumPy and BLAS release the GIL.
        with ThreadPoolExecutor(n_threads) as pool:
            parts = list(pool.map(
                sums_over_blocks, [block_starts[i::n_threads] for i in range(n_threads)],
                [centres] * n_threads,
            ))
        return tuple(sum(part) for part in zip(*parts))

    counts, weighted_sums, whitened_scatter, total_log_norm = sums()
    # N_k, with the same 10 eps as m_step against empty components.
    counts = counts + 10 * xp.finfo(dtype).eps
    new_weights = counts / xp.sum(counts)  # pi_k = N_k / N
    new_means = weighted_sums / counts[:, None]  # mu_k = (1/N_k) sum_n z_nk x_n
    p_full = p_augmented[:, :n_features, :]  # P_k: (K, d, d)
    shift = new_means - means  # mu_new - mu_old: (K, d)
    # The shift in units of the old spread, ||(mu_new - mu_old) P_k||^2: (1, d) @ (d, d) per k
    whitened_shift = xp.matmul(shift[:, None, :], p_full)[:, 0, :]  # (K, d)
    whitened_shift = xp.vecdot(whitened_shift, whitened_shift, axis=-1)  # (K,)
    if not seed_form and bool(xp.max(whitened_shift) > xp.finfo(dtype).eps ** -0.5):
        # The means moved so far that moving the centre would cancel more than half the
        # digits: a second pass, centred on the new means. (A host round-trip on a GPU; it
        # only matters in float32, where the bound is ~2900, about 54 standard deviations.)
        _, _, scatter, _ = sums(centres=new_means)
    else:
        # Back from whitened coordinates, x - mu_old = y P^{-1}:
        # sum_n z_nk (x_n - mu_old)(x_n - mu_old)^T = P_k^{-T} (sum_n z_nk y_nk^T y_nk) P_k^{-1}
        p_inverse_t = invert_lower_triangular(xp.matrix_transpose(p_full), xp)  # P^{-T}
        scatter = xp.matmul(
            xp.matmul(p_inverse_t, whitened_scatter), xp.matrix_transpose(p_inverse_t)
        )  # (K, d, d)
        if not seed_form:
            # Move the centre to the new means: - N_k (mu_new - mu_old)(mu_new - mu_old)^T
            scatter = scatter - counts[:, None, None] * (shift[:, :, None] * shift[:, None, :])
    if covariance_type in ("diag", "spherical"):
        scatter = xp.linalg.diagonal(scatter)  # (K, d)
    covariances = _covariances_from_scatter(scatter, counts, covariance_type, reg_covar)
    return new_weights, new_means, covariances, total_log_norm / n_samples
