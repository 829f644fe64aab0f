"""Fast path for diag and spherical covariances: never a d x d matrix (tricks 3 and 4 of
:mod:`em_tutorial.gmm._fast`)."""

from __future__ import annotations

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._blocks import (
    block_slices,
    cancels_too_much,
    expansion_is_accurate,
    log_joint_offset,
    over_blocks,
    reference_point,
    responsibilities,
)
from em_tutorial.gmm._e_step import log_exp_floor
from em_tutorial.gmm._m_step import guarded_counts


def per_type_squares(squares, covariance_type):
    """Squares as the covariance type keeps them: per coordinate for diag (..., d), summed
    over the coordinates for spherical (..., 1), where Sigma_k = sigma_k^2 I."""
    xp = get_array_module(squares)
    if covariance_type == "spherical":
        return xp.sum(squares, axis=-1, keepdims=True)
    return squares


def diagonal_coefficients(means, precisions_cholesky, covariance_type, centre):
    """The expanded distance's coefficients, with P_kj = p_kj^2 and a_k = mu_k - c.

    ||(x - mu_k) p_k||^2 = sum_j P_kj (x_j - c_j)^2 - 2 sum_j P_kj a_kj (x_j - c_j)
    + sum_j P_kj a_kj^2; for spherical P_kj = P_k, so the first sum is P_k ||x - c||^2.

    Returns
    -------
    coefficients : array of shape (d + e, K)
        [-2 P_kj a_kj ; P_kj], stacked over j, with e = d (diag) or 1 (spherical).
    constant : array of shape (K,)
        sum_j P_kj a_kj^2.
    """
    xp = get_array_module(means, precisions_cholesky)
    if covariance_type == "spherical":
        precision = precisions_cholesky[:, None] ** 2  # (K, 1)
    else:
        precision = precisions_cholesky**2  # (K, d)
    offsets = means - centre  # a_k: (K, d)
    coefficients = xp.concat([-2 * precision * offsets, precision], axis=1)  # (K, d + e)
    return xp.matrix_transpose(coefficients), xp.sum(precision * offsets**2, axis=1)


def expanded_features(X_block, centre, covariance_type):
    """[x - c, (x - c)^2] for a block, shape (B, d + e); e as in :func:`per_type_squares`."""
    xp = get_array_module(X_block, centre)
    centred = X_block - centre  # (B, d)
    return xp.concat([centred, per_type_squares(centred * centred, covariance_type)], axis=1)


def diagonal_mahalanobis(features, coefficients, constant):
    """||(x_n - mu_k) p_k||^2 from the expansion, shape (B, K), clipped at 0."""
    xp = get_array_module(features, coefficients)
    distances = xp.matmul(features, coefficients) + constant  # (B, d + e) @ (d + e, K)
    return xp.maximum(distances, xp.zeros_like(distances))  # rounding can dip below 0


def distance_function(means, precisions_cholesky, covariance_type, centre):
    """``distances(X_block, features)`` = ||(x_n - mu_k) p_k||^2, shape (B, K).

    The expansion of trick 3 where it is accurate (:func:`expansion_is_accurate`), else
    from the centred differences, (K, B, d) per block: data far from c next to narrow
    components, such as clusters 1e5 standard deviations apart in float32.
    """
    xp = get_array_module(means, precisions_cholesky)
    coefficients, constant = diagonal_coefficients(
        means, precisions_cholesky, covariance_type, centre)
    if expansion_is_accurate(constant):
        return lambda X_block, features: diagonal_mahalanobis(features, coefficients, constant)
    # p_k per coordinate: (K, d) for diag, (K, 1) for spherical
    scales = precisions_cholesky[:, None] if covariance_type == "spherical" else precisions_cholesky

    def centred_distances(X_block, features):
        whitened = (X_block[None, :, :] - means[:, None, :]) * scales[:, None, :]  # (K, B, d)
        return xp.matrix_transpose(xp.vecdot(whitened, whitened, axis=-1))  # (B, K)

    return centred_distances


def diagonal_mahalanobis_all(X, means, precisions_cholesky, covariance_type, block_size):
    """||(x_n - mu_k) p_k||^2 for every n and k, block by block, shape (N, K)."""
    xp = get_array_module(X, means, precisions_cholesky)
    centre = reference_point(X, block_size)
    distances = distance_function(means, precisions_cholesky, covariance_type, centre)
    blocks = []
    for start, stop in block_slices(X.shape[0], block_size):
        X_block = X[start:stop, :]  # (B, d)
        blocks.append(distances(X_block, expanded_features(X_block, centre, covariance_type)))
    return xp.concat(blocks, axis=0)  # (N, K)


def diagonal_em_sums(X, weights, means, precisions_cholesky, covariance_type, block_size,
                     n_threads, centres=None):
    """The E-step and the M-step's sums for diag and spherical, in one blocked pass.

    Returns
    -------
    counts : (K,), sum_n z_nk
    moments : (K, d + e), [sum_n z_nk (x_n - c), sum_n z_nk (x_n - c)^2], the squares as in
        :func:`per_type_squares`; with ``centres`` given, sum_n z_nk (x_n - centres_k)^2
        instead, shape (K, e) (trick 4's second pass)
    total_log_norm : 0-d, sum_n ln p(x_n)
    centre : (1, d), c
    """
    xp = get_array_module(X, means, precisions_cholesky, weights)
    centre = reference_point(X, block_size)
    distances = distance_function(means, precisions_cholesky, covariance_type, centre)
    offset = log_joint_offset(weights, precisions_cholesky, covariance_type, means)  # (K,)
    log_floor = log_exp_floor(X)

    def sums_over(slices):
        counts = moments = total_log_norm = 0.0
        for start, stop in slices:
            X_block = X[start:stop, :]  # (B, d)
            features = expanded_features(X_block, centre, covariance_type)  # (B, d + e)
            # ln pi_k N(x_n | mu_k, Sigma_k) = offset_k - 1/2 ||(x_n - mu_k) p_k||^2: (B, K)
            log_joint = offset - 0.5 * distances(X_block, features)
            resp, log_norm = responsibilities(log_joint, 1, log_floor)  # z_nk: (B, K)
            total_log_norm = total_log_norm + log_norm
            counts = counts + xp.sum(resp, axis=0)  # (K,)
            if centres is None:
                # z^T [x - c, (x - c)^2]: (K, B) @ (B, d + e) -> (K, d + e)
                moments = moments + xp.matmul(xp.matrix_transpose(resp), features)
            else:
                centred = X[None, start:stop, :] - centres[:, None, :]  # (K, B, d)
                # sum_n z_nk (x_nj - c_kj)^2: (K, 1, B) @ (K, B, d) -> (K, d)
                squares = xp.matmul(xp.matrix_transpose(resp)[:, None, :], centred * centred)
                moments = moments + per_type_squares(squares[:, 0, :], covariance_type)
        return counts, moments, total_log_norm

    return (*over_blocks(sums_over, X.shape[0], block_size, n_threads), centre)


def diagonal_step(X, weights, means, precisions_cholesky, covariance_type, seed_form,
                  block_size, n_threads):
    """(counts, new means, scatter, sum_n ln p(x_n)) for diag and spherical.

    The scatter is (K, d) diagonals for diag; for spherical, (K, 1) holding
    (1/d) sum_n z_nk ||x_n - mu_k||^2, so that its mean over coordinates is the variance.

    The moments are around c; the scatter moves to the new means (trick 4):
    sum_n z_nk (x_n - mu_k)^2 = sum_n z_nk (x_n - c)^2 - N_k m_k^2, m_k = mu_k - c,
    with a second pass centred on the new means where that cancels too much.
    """
    n_features = X.shape[1]
    counts, moments, total_log_norm, centre = diagonal_em_sums(
        X, weights, means, precisions_cholesky, covariance_type, block_size, n_threads)
    sums, squares = moments[:, :n_features], moments[:, n_features:]  # around c: (K, d), (K, e)
    safe_counts = guarded_counts(counts)  # as in m_step: an empty component gets mean 0
    # mu_k = (1/N_k) sum_n z_nk x_n = c + (1/N_k) sum_n z_nk (x_n - c)
    new_means = (sums + counts[:, None] * centre) / safe_counts[:, None]
    shift = sums / safe_counts[:, None]  # m_k = mu_k - c: (K, d)
    # sum_n z_nk (x_n - mu_k)^2 = sum_n z_nk (x_n - c)^2 - N_k m_k^2
    correction = per_type_squares(counts[:, None] * shift * shift, covariance_type)  # (K, e)
    scatter = squares - correction
    if cancels_too_much(correction, scatter, X.dtype):
        scatter = diagonal_em_sums(X, weights, means, precisions_cholesky, covariance_type,
                                   block_size, n_threads, centres=new_means)[1]
    if seed_form:
        # Around the old means instead: + N_k (mu_new - mu_old)^2, no cancellation.
        scatter = scatter + per_type_squares(counts[:, None] * (new_means - means) ** 2,
                                             covariance_type)
    if covariance_type == "spherical":
        scatter = scatter / n_features  # (1/d) sum_j: the mean over coordinates
    return safe_counts, new_means, scatter, total_log_norm
