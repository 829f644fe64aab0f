"""Fast path for the tied covariance: one whitening product per block, not K (trick 3 of
:mod:`em_tutorial.gmm.fast`, in whitened coordinates, and trick 4)."""

from __future__ import annotations

from em_tutorial.backend import get_array_module
from em_tutorial.gmm.equations import guarded_counts, log_exp_floor
from em_tutorial.gmm.fast._blocks import (
    expansion_is_accurate,
    log_joint_offset,
    map_blocks,
    matrix_cancels_too_much,
    over_blocks,
    responsibilities,
    reference_point,
    squared_norms,
)


def tied_mahalanobis(whitened, whitened_means, expand):
    """||(x_n - mu_k) P||^2 = ||u_n||^2 - 2 u_n . v_k + ||v_k||^2, shape (B, K), clipped at 0.

    u_n = (x_n - c) P, ``whitened`` (B, d); v_k = (mu_k - c) P, ``whitened_means`` (K, d).
    With ``expand=False`` (where the expansion would round off too much, see
    :func:`expansion_is_accurate`) the differences u_n - v_k are formed instead, (K, B, d).
    """
    xp = get_array_module(whitened, whitened_means)
    norms_of_means = xp.sum(whitened_means * whitened_means, axis=1)  # ||v_k||^2: (K,)
    if not expand:
        differences = whitened[None, :, :] - whitened_means[:, None, :]  # (K, B, d)
        return xp.matrix_transpose(squared_norms(differences))  # (K, B) -> (B, K)
    cross = xp.matmul(whitened, xp.matrix_transpose(whitened_means))  # (B, d) @ (d, K)
    distances = squared_norms(whitened)[:, None] - 2 * cross + norms_of_means  # (B, K)
    return xp.maximum(distances, xp.zeros_like(distances))  # rounding can dip below 0


def tied_mahalanobis_all(X, means, precision_cholesky, block_size, n_threads=1):
    """||(x_n - mu_k) P||^2 for every n and k, block by block, shape (N, K)."""
    xp = get_array_module(X, means, precision_cholesky)
    centre = reference_point(X, block_size)
    whitened_means = xp.matmul(means - centre, precision_cholesky)  # v_k: (K, d) @ (d, d)
    expand = expansion_is_accurate(xp.sum(whitened_means * whitened_means, axis=1))

    def of_block(start, stop):
        # u_n = (x_n - c) P: (B, d) @ (d, d)
        whitened = xp.matmul(X[start:stop, :] - centre, precision_cholesky)
        return tied_mahalanobis(whitened, whitened_means, expand)  # (B, K)

    return xp.concat(map_blocks(of_block, X.shape[0], block_size, n_threads), axis=0)


def tied_em_sums(X, weights, means, precision_cholesky, block_size, n_threads, centres=None):
    """The E-step and the M-step's sums for tied, in one blocked pass.

    Returns
    -------
    counts : (K,), sum_n z_nk
    sums : (K, d), sum_n z_nk (x_n - c)
    scatter : (d, d), sum_n (x_n - c)(x_n - c)^T; with ``centres`` given,
        sum_k sum_n z_nk (x_n - centres_k)(x_n - centres_k)^T (trick 4's second pass)
    total_log_norm : 0-d, sum_n ln p(x_n)
    centre : (1, d), c
    """
    xp = get_array_module(X, means, precision_cholesky, weights)
    centre = reference_point(X, block_size)
    whitened_means = xp.matmul(means - centre, precision_cholesky)  # v_k: (K, d) @ (d, d)
    expand = expansion_is_accurate(xp.sum(whitened_means * whitened_means, axis=1))
    offset = log_joint_offset(weights, precision_cholesky, "tied", means)  # (K,)
    log_floor = log_exp_floor(X)

    def sums_over(slices):
        counts = sums = scatter = total_log_norm = 0.0
        for start, stop in slices:
            centred = X[start:stop, :] - centre  # x_n - c: (B, d)
            whitened = xp.matmul(centred, precision_cholesky)  # u_n: (B, d) @ (d, d)
            # ln pi_k N(x_n | mu_k, Sigma) = offset_k - 1/2 ||(x_n - mu_k) P||^2: (B, K)
            log_joint = offset - 0.5 * tied_mahalanobis(whitened, whitened_means, expand)
            resp, log_norm = responsibilities(log_joint, 1, log_floor)  # z_nk: (B, K)
            total_log_norm = total_log_norm + log_norm
            counts = counts + xp.sum(resp, axis=0)  # (K,)
            sums = sums + xp.matmul(xp.matrix_transpose(resp), centred)  # (K, B) @ (B, d)
            if centres is None:
                # sum_n (x_n - c)(x_n - c)^T: (d, B) @ (B, d); sum_k z_nk = 1
                scatter = scatter + xp.matmul(xp.matrix_transpose(centred), centred)
            else:
                differences = X[None, start:stop, :] - centres[:, None, :]  # (K, B, d)
                weighted = differences * xp.matrix_transpose(resp)[:, :, None]  # (K, B, d)
                # sum_k (K, d, B) @ (K, B, d) -> (d, d)
                scatter = scatter + xp.sum(
                    xp.matmul(xp.matrix_transpose(weighted), differences), axis=0)
        return counts, sums, scatter, total_log_norm

    return (*over_blocks(sums_over, X.shape[0], block_size, n_threads), centre)


def tied_step(X, weights, means, precision_cholesky, seed_form, block_size, n_threads):
    """(counts, new means, pooled scatter (1, d, d), sum_n ln p(x_n)) for tied.

    The pooled scatter around the new means is
    sum_n (x_n - c)(x_n - c)^T - sum_k N_k m_k m_k^T, m_k = mu_k - c, with a second pass
    centred on the new means where that cancels too much (trick 4).
    """
    xp = get_array_module(X, means)
    counts, sums, total_scatter, total_log_norm, centre = tied_em_sums(
        X, weights, means, precision_cholesky, block_size, n_threads)
    safe_counts = guarded_counts(counts)  # as in m_step
    # mu_k = c + (1/N_k) sum_n z_nk (x_n - c)
    new_means = (sums + counts[:, None] * centre) / safe_counts[:, None]
    shift = sums / safe_counts[:, None]  # m_k: (K, d)
    # sum_k N_k m_k m_k^T: (d, K) @ (K, d) -> (d, d)
    correction = xp.matmul(xp.matrix_transpose(shift * counts[:, None]), shift)
    scatter = total_scatter - correction
    # The cancellation in the narrowest direction: sum_k N_k ||m_k||^2 against
    # lambda_min of the pooled scatter.
    correction_size = xp.sum(xp.linalg.diagonal(correction))[None]  # trace: (1,)
    if matrix_cancels_too_much(correction_size, scatter[None, :, :], X.dtype):
        scatter = tied_em_sums(X, weights, means, precision_cholesky, block_size, n_threads,
                               centres=new_means)[2]
    if seed_form:
        # Around the old means: + sum_k N_k (mu_new - mu_old)(mu_new - mu_old)^T
        moved = new_means - means  # (K, d)
        scatter = scatter + xp.matmul(xp.matrix_transpose(moved * counts[:, None]), moved)
    return safe_counts, new_means, scatter[None, :, :], total_log_norm
