"""Fast path for diag and spherical covariances: never a d x d matrix (tricks 3 and 4 of
:mod:`em_tutorial.gmm.fast`)."""

from __future__ import annotations

import array_api_compat

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._arrays import replace_rows, take_rows
from em_tutorial.gmm.equations import guarded_counts, log_exp_floor
from em_tutorial.gmm.fast._blocks import (
    BLOCK_SIZE,
    expansion_is_accurate,
    log_joint_offset,
    map_blocks,
    over_blocks,
    reference_point,
    responsibilities,
    rows_that_cancel_too_much,
    squared_norms,
)


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
    side_by_side : array of shape (K, d + e)
        [-2 P_kj a_kj, P_kj], the coefficients of [x - c, (x - c)^2] (:func:`centred_data`),
        with e = d (diag) or 1 (spherical).
    constant : array of shape (K,)
        sum_j P_kj a_kj^2.
    """
    xp = get_array_module(means, precisions_cholesky)
    if covariance_type == "spherical":
        precision = precisions_cholesky[:, None] ** 2  # (K, 1)
    else:
        precision = precisions_cholesky**2  # (K, d)
    offsets = means - centre  # a_k: (K, d)
    side_by_side = xp.concat([-2 * precision * offsets, precision], axis=1)  # (K, d + e)
    return side_by_side, xp.sum(precision * offsets**2, axis=1)


def centred_data(X, centre, covariance_type, block_size=BLOCK_SIZE, n_threads=1):
    """c (1, d), and [x_n - c, (x_n - c)^2] for every sample of X, (N, d + e), the squares
    as in :func:`per_type_squares` (for spherical ||x_n - c||^2, e = 1).

    With c from :func:`reference_point`, which does not depend on the parameters, a fit forms
    these once (trick 6 of :mod:`em_tutorial.gmm.fast`) rather than in every step. Side by
    side, so that the E-step's distances and the M-step's sums are one product each per
    block: at 20k x 128 x 8 diag (K = 8, B = 2048, one thread) the E-step's one product took
    0.42x the time of its two thin ones with the squares formed per block, and a fit (median
    of 7, two threads) 0.91x the time (spherical 0.81x; diag 0.87x at 100k x 16 x 16, 0.79x
    at 200k x 4 x 32), for twice the memory of centring alone.

    Filled block by block (``block_size`` samples, ``n_threads`` threads as in
    :func:`map_blocks`): each block's x - c is squared while it is in cache, so X is read
    once and the result written once.
    """
    xp = get_array_module(X, centre)
    n_samples, n_features = X.shape
    n_squares = 1 if covariance_type == "spherical" else n_features  # e
    wide = xp.empty((n_samples, n_features + n_squares), dtype=X.dtype,
                    device=array_api_compat.device(X))  # (N, d + e)

    def fill(start, stop):
        centred = X[start:stop, :] - centre  # (B, d)
        wide[start:stop, :n_features] = centred
        wide[start:stop, n_features:] = per_type_squares(centred * centred,
                                                         covariance_type)  # (B, e)

    map_blocks(fill, n_samples, block_size, n_threads)
    return centre, wide


def expanded_features(data, start, stop):
    """[x - c, (x - c)^2], shape (B, d + e), for the samples ``start:stop`` of
    :func:`centred_data`'s ``data``."""
    return data[1][start:stop, :]  # (B, d + e)


def diagonal_mahalanobis(features, coefficients):
    """||(x_n - mu_k) p_k||^2 from the expansion, shape (K, B), clipped at 0.

    ``features`` as :func:`expanded_features` gives them; ``coefficients`` are
    [-2 P_k a_k, P_k], (K, d + e), and sum_j P_kj a_kj^2, (K,).
    """
    xp = get_array_module(features, *coefficients)
    side_by_side, constant = coefficients
    # [-2 P a, P] [x - c, (x - c)^2]^T + P a^2: (K, d + e) @ (d + e, B) -> (K, B)
    distances = xp.matmul(side_by_side, xp.matrix_transpose(features)) + constant[:, None]
    return xp.maximum(distances, xp.zeros_like(distances))  # rounding can dip below 0


def centred_distance_function(means, precisions_cholesky, covariance_type):
    """``distances(X_block, features)`` = ||(x_n - mu_k) p_k||^2, shape (K, B), from the
    centred differences, (K, B, d) per block: where trick 3's expansion is not accurate
    (data far from c next to narrow components, such as clusters 1e5 standard deviations
    apart in float32)."""
    # p_k per coordinate: (K, d) for diag, (K, 1) for spherical
    scales = precisions_cholesky[:, None] if covariance_type == "spherical" else precisions_cholesky

    def centred_distances(X_block, features):
        whitened = (X_block[None, :, :] - means[:, None, :]) * scales[:, None, :]  # (K, B, d)
        return squared_norms(whitened)  # (K, B)

    return centred_distances


def distance_function(means, precisions_cholesky, covariance_type, centre):
    """``distances(X_block, features)`` = ||(x_n - mu_k) p_k||^2, shape (K, B): k along the
    rows, so that the E-step's sums over k run across whole rows of B samples.

    The expansion of trick 3 where it is accurate (:func:`expansion_is_accurate`), else
    :func:`centred_distance_function`'s.
    """
    coefficients = diagonal_coefficients(means, precisions_cholesky, covariance_type, centre)
    if expansion_is_accurate(coefficients[1]):
        return lambda X_block, features: diagonal_mahalanobis(features, coefficients)
    return centred_distance_function(means, precisions_cholesky, covariance_type)


def log_joint_function(weights, means, precisions_cholesky, covariance_type, centre):
    """``log_joint(X_block, features)`` = ln pi_k N(x_n | mu_k, Sigma_k)
    = offset_k - 1/2 ||(x_n - mu_k) p_k||^2, shape (K, B), for the E-step.

    Where the expansion is accurate, -1/2 and offset_k go into its coefficients, so that a
    block's log-joint is one product and one sum: no clipping of the distances at 0 (their
    rounding stays within :data:`em_tutorial.gmm.fast._blocks.EXPANSION_TOLERANCE` nats)
    and no separate scaling. Else from :func:`centred_distance_function`.
    """
    xp = get_array_module(means, precisions_cholesky, weights)
    offset = log_joint_offset(weights, precisions_cholesky, covariance_type, means)  # (K,)
    side_by_side, constant = diagonal_coefficients(
        means, precisions_cholesky, covariance_type, centre)  # (K, d + e), (K,)
    if expansion_is_accurate(constant):
        scaled = -0.5 * side_by_side  # (K, d + e)
        intercept = (offset - 0.5 * constant)[:, None]  # (K, 1)
        # offset_k - 1/2 ([-2 P a, P] [x - c, (x - c)^2]^T + P a^2): (K, d + e) @ (d + e, B)
        return lambda X_block, features: (
            xp.matmul(scaled, xp.matrix_transpose(features)) + intercept)
    distances = centred_distance_function(means, precisions_cholesky, covariance_type)
    return lambda X_block, features: offset[:, None] - 0.5 * distances(X_block, features)


def diagonal_mahalanobis_all(X, means, precisions_cholesky, covariance_type, block_size,
                             n_threads=1):
    """||(x_n - mu_k) p_k||^2 for every n and k, block by block, shape (N, K)."""
    xp = get_array_module(X, means, precisions_cholesky)
    centre = reference_point(X, block_size)
    distances = distance_function(means, precisions_cholesky, covariance_type, centre)

    def of_block(start, stop):  # centred block by block: no copy of X for one pass
        X_block = X[start:stop, :]  # (B, d)
        features = expanded_features(centred_data(X_block, centre, covariance_type,
                                                  block_size), 0, stop - start)
        return distances(X_block, features)  # (K, B)

    blocks = map_blocks(of_block, X.shape[0], block_size, n_threads)
    return xp.matrix_transpose(xp.concat(blocks, axis=1))  # (K, N) -> (N, K)


def diagonal_e_step(X, data, weights, means, precisions_cholesky, covariance_type):
    """``e_step(start, stop)`` -> (features, z_nk (K, B), the block's sum_n ln p(x_n)).

    ``data`` is :func:`centred_data`'s; ``features`` as :func:`expanded_features` returns
    them, around its c.
    """
    log_joint_of = log_joint_function(weights, means, precisions_cholesky, covariance_type,
                                      data[0])
    log_floor = log_exp_floor(X)

    def e_step(start, stop):
        features = expanded_features(data, start, stop)
        log_joint = log_joint_of(X[start:stop, :], features)  # ln pi_k N_nk: (K, B)
        return (features, *responsibilities(log_joint, 0, log_floor))

    return e_step


def diagonal_em_sums(X, e_step, block_size, n_threads, kept=None):
    """The E-step and the M-step's sums for diag and spherical, in one blocked pass.

    ``e_step`` is from :func:`diagonal_e_step`; a dict ``kept`` receives every block's z_nk
    (K, B) under the block's first sample, for :func:`weighted_samples`. Returns
    counts (K,), sum_n z_nk; sums (K, d), sum_n z_nk (x_n - c); squares (K, e),
    sum_n z_nk (x_n - c)^2 as in :func:`per_type_squares`; total_log_norm (0-d),
    sum_n ln p(x_n).
    """
    xp = get_array_module(X)

    def sums_over(slices):
        counts = moments = total_log_norm = 0.0
        for start, stop in slices:
            features, resp, log_norm = e_step(start, stop)
            if kept is not None:
                kept[start] = resp
            total_log_norm = total_log_norm + log_norm
            counts = counts + xp.sum(resp, axis=1)  # (K,)
            # [sum_n z_nk (x_n - c), sum_n z_nk (x_n - c)^2]: (K, B) @ (B, d + e) -> (K, d + e)
            moments = moments + xp.matmul(resp, features)
        return counts, moments, total_log_norm

    counts, moments, total_log_norm = over_blocks(sums_over, X.shape[0], block_size,
                                                  n_threads)
    n_features = X.shape[1]
    return counts, moments[:, :n_features], moments[:, n_features:], total_log_norm


def recentred_squares(X, responsibilities_of, centres, covariance_type, block_size, n_threads):
    """sum_n z_nk (x_n - centres_k)^2 for K' components, shape (K', e): trick 4's second pass.

    ``centres`` has shape (K', d); ``responsibilities_of(start, stop, X_block)`` gives those
    components' z_nk for the block, (K', B). The centred squares are (K', B, d) per block
    rather than (K, B, d).
    """
    xp = get_array_module(X, centres)

    def sums_over(slices):
        squares = 0.0
        for start, stop in slices:
            X_block = X[start:stop, :]  # (B, d)
            resp = responsibilities_of(start, stop, X_block)  # (K', B)
            centred = X_block[None, :, :] - centres[:, None, :]  # (K', B, d)
            if covariance_type == "spherical":
                # sum_n z_nk ||x_n - c_k||^2: (K', B) . (K', B) -> (K', 1)
                block_squares = xp.vecdot(resp, squared_norms(centred))[:, None]
            else:
                # sum_n z_nk (x_nj - c_kj)^2: (K', 1, B) @ (K', B, d) -> (K', d)
                block_squares = xp.matmul(resp[:, None, :], centred * centred)[:, 0, :]
            squares = squares + block_squares
        return (squares,)

    return over_blocks(sums_over, X.shape[0], block_size, n_threads)[0]


def weighted_samples(X, kept, components):
    """The samples with some z_nk > 0 in the listed ``components``, and those z_nk.

    ``kept`` holds every block's z_nk (K, B) under the block's first sample. Returns
    (M, d) and (K', M). Only these samples add to trick 4's second pass, and a component
    that cancels is mostly one that shrank onto a few samples: at 20k x 128 x 8 the
    spherical fit's shrinking component has z_nk > 0 for 1 sample of 20 000.
    """
    xp = get_array_module(X)
    resp = xp.concat([take_rows(kept[start], components) for start in sorted(kept)],
                     axis=1)  # (K', N)
    used = xp.nonzero(xp.any(resp > 0, axis=0))[0]  # (M,)
    return xp.take(X, used, axis=0), xp.take(resp, used, axis=1)


def diagonal_step(X, weights, means, precisions_cholesky, covariance_type, seed_form,
                  block_size, n_threads, data=None):
    """(counts, new means, scatter, sum_n ln p(x_n)) for diag and spherical.

    ``data`` is :func:`centred_data`'s, formed here if not given.

    The scatter is (K, d) diagonals for diag; for spherical, (K, 1) holding
    (1/d) sum_n z_nk ||x_n - mu_k||^2, so that its mean over coordinates is the variance.

    The moments are around c; the scatter moves to the new means (trick 4):
    sum_n z_nk (x_n - mu_k)^2 = sum_n z_nk (x_n - c)^2 - N_k m_k^2, m_k = mu_k - c,
    with a second pass centred on the new means where that cancels too much.
    """
    n_features = X.shape[1]
    if data is None:
        data = centred_data(X, reference_point(X, block_size), covariance_type, block_size,
                            n_threads)
    centre = data[0]
    e_step = diagonal_e_step(X, data, weights, means, precisions_cholesky, covariance_type)
    # The step keeps its z_nk for a second pass where they take no more memory than X.
    kept = {} if means.shape[0] <= n_features else None
    # around c: (K,), (K, d), (K, e), 0-d
    counts, sums, squares, total_log_norm = diagonal_em_sums(
        X, e_step, block_size, n_threads, kept)
    safe_counts = guarded_counts(counts)  # as in m_step: an empty component gets mean 0
    # mu_k = (1/N_k) sum_n z_nk x_n = c + (1/N_k) sum_n z_nk (x_n - c)
    new_means = (sums + counts[:, None] * centre) / safe_counts[:, None]
    shift = sums / safe_counts[:, None]  # m_k = mu_k - c: (K, d)
    # sum_n z_nk (x_n - mu_k)^2 = sum_n z_nk (x_n - c)^2 - N_k m_k^2
    correction = per_type_squares(counts[:, None] * shift * shift, covariance_type)  # (K, e)
    scatter = squares - correction
    flagged = rows_that_cancel_too_much(correction, scatter, X.dtype)
    if flagged:
        new_centres = take_rows(new_means, flagged)  # (K', d)
        if kept is None:  # the E-step again, for the flagged components' z_nk
            recentred = recentred_squares(
                X, lambda start, stop, X_block: take_rows(e_step(start, stop)[1], flagged),
                new_centres, covariance_type, block_size, n_threads)
        else:  # the kept z_nk, and only the samples they weigh
            X_used, resp_used = weighted_samples(X, kept, flagged)  # (M, d), (K', M)
            recentred = recentred_squares(
                X_used, lambda start, stop, X_block: resp_used[:, start:stop],
                new_centres, covariance_type, block_size, n_threads)
        scatter = replace_rows(scatter, flagged, recentred)
    if seed_form:
        # Around the old means instead: + N_k (mu_new - mu_old)^2, no cancellation.
        scatter = scatter + per_type_squares(counts[:, None] * (new_means - means) ** 2,
                                             covariance_type)
    if covariance_type == "spherical":
        scatter = scatter / n_features  # (1/d) sum_j: the mean over coordinates
    return safe_counts, new_means, scatter, total_log_norm
