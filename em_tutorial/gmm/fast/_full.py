"""Fast path for full covariances: whitened differences, reused (tricks 2 and 4 of
:mod:`em_tutorial.gmm.fast`)."""

from __future__ import annotations

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._arrays import full_like_shape
from em_tutorial.gmm.equations import guarded_counts, log_exp_floor
from em_tutorial.gmm.fast._blocks import (
    log_joint_offset,
    map_blocks,
    matrix_cancels_too_much,
    over_blocks,
    responsibilities,
    squared_norms,
)
from em_tutorial.gmm.precision import invert_lower_triangular


def augmented_precisions_cholesky(means, precisions_cholesky):
    """[[P_k], [-mu_k P_k]] for all k side by side, shape (d + 1, K d), for full covariances.

    With a 1 appended to x, one product gives the centred, whitened difference:
    [x, 1] @ [[P_k], [-mu_k P_k]] = (x - mu_k) P_k. Columns k d to k d + d - 1 hold
    component k.
    """
    xp = get_array_module(means, precisions_cholesky)
    n_components, n_features = means.shape
    # (K, 1, d) @ (K, d, d) -> (K, 1, d)
    means_whitened = xp.matmul(means[:, None, :], precisions_cholesky)
    stacked = xp.concat([precisions_cholesky, -means_whitened], axis=1)  # (K, d + 1, d)
    side_by_side = xp.permute_dims(stacked, (1, 0, 2))  # (d + 1, K, d)
    return xp.reshape(side_by_side, (n_features + 1, n_components * n_features))  # (d + 1, K d)


GENERAL_PRODUCT_MAX_FEATURES = 16
"""Up to this many features :func:`weighted_gram` uses a general product. Per block of a
full fit ((K, 2048, d), BLAS on one thread, median of 15, alternating, 2-core machine
under load), the general product (z v)^T v took 0.70-0.84x the time of the symmetric
rank-k update (sqrt(z) v)^T (sqrt(z) v) at d = 16, K = 16 and 0.60-0.89x at d = 4,
K = 32, about the same at d = 24-32, and 1.3x at d = 48 and d = 128 (K = 8), where the
update's halved products win. The two agree to ~3e-15 relative, so speed decides.
The same bound picks the layout of :func:`whitened_differences`."""


def whitened_differences(X_block, p_augmented):
    """y_nk = (x_n - mu_k) P_k for a block of samples and all K components, shape (K, B, d).

    Above :data:`GENERAL_PRODUCT_MAX_FEATURES` features, one product
    (B, d + 1) @ (d + 1, K d) for all K components, and the result is a view of that
    (B, K, d) memory (at 20k x 128 x 8, one thread, 0.77x the time of K products); at
    fewer, K products, each (B, d + 1) @ (d + 1, d), into (K, B, d) memory, where the
    general product of :func:`weighted_gram` runs at twice the speed.

    Parameters
    ----------
    X_block : array of shape (B, d)
    p_augmented : array of shape (d + 1, K d)
        From :func:`augmented_precisions_cholesky`.
    """
    xp = get_array_module(X_block, p_augmented)
    n_samples, n_features = X_block.shape
    ones = full_like_shape((n_samples, 1), 1, X_block)
    X_augmented = xp.concat([X_block, ones], axis=1)  # (B, d + 1)
    if n_features > GENERAL_PRODUCT_MAX_FEATURES:
        product = xp.matmul(X_augmented, p_augmented)  # (B, d + 1) @ (d + 1, K d)
        by_sample = xp.reshape(product, (n_samples, -1, n_features))  # (B, K, d)
        return xp.permute_dims(by_sample, (1, 0, 2))  # (K, B, d)
    per_component = xp.permute_dims(
        xp.reshape(p_augmented, (n_features + 1, -1, n_features)), (1, 0, 2))  # (K, d + 1, d)
    # (1, B, d + 1) @ (K, d + 1, d) -> (K, B, d)
    return xp.matmul(X_augmented[None, :, :], per_component)


def weighted_gram(vectors, resp):
    """sum_n z_nk v_nk^T v_nk for every k, shape (K, d, d), from v (K, B, d) and z (K, B).

    Up to :data:`GENERAL_PRODUCT_MAX_FEATURES` features as (z_nk v_nk)^T v_nk; above, as
    (sqrt(z_nk) v_nk)^T (sqrt(z_nk) v_nk), one array times its own transpose, which NumPy
    hands to BLAS as a symmetric rank-k update (half the products). That branch scales
    ``vectors`` in place (the caller must not need them afterwards) in the order of (B, K, d)
    memory, which :func:`whitened_differences` gives there (scaling a (K, B, d) view of it
    in K-major order took ~1.5x as long at d = 128, K = 8).
    """
    xp = get_array_module(vectors, resp)
    if vectors.shape[-1] <= GENERAL_PRODUCT_MAX_FEATURES:
        weighted = vectors * resp[:, :, None]  # z_nk v_nk: (K, B, d)
        return xp.matmul(xp.matrix_transpose(weighted), vectors)  # (K, d, B) @ (K, B, d)
    by_sample = xp.permute_dims(vectors, (1, 0, 2))  # (B, K, d)
    by_sample *= xp.sqrt(xp.matrix_transpose(resp))[:, :, None]  # in place: sqrt(z_nk) v_nk
    rooted = xp.permute_dims(by_sample, (1, 0, 2))  # (K, B, d)
    return xp.matmul(xp.matrix_transpose(rooted), rooted)  # (K, d, B) @ (K, B, d)


def full_mahalanobis(X, means, precisions_cholesky, block_size, n_threads=1):
    """||(x_n - mu_k) P_k||^2 for every n and k, block by block, shape (N, K)."""
    xp = get_array_module(X, means, precisions_cholesky)
    p_augmented = augmented_precisions_cholesky(means, precisions_cholesky)

    def of_block(start, stop):
        whitened = whitened_differences(X[start:stop, :], p_augmented)  # (K, B, d)
        return squared_norms(whitened)  # (K, B)

    blocks = map_blocks(of_block, X.shape[0], block_size, n_threads)
    return xp.matrix_transpose(xp.concat(blocks, axis=1))  # (N, K)


def full_em_sums(X, weights, means, precisions_cholesky, block_size, n_threads):
    """The E-step and the M-step's sums for full and tied, in one blocked pass.

    Returns
    -------
    counts : (K,), sum_n z_nk
    weighted_sums : (K, d), sum_n z_nk x_n
    scatter : (K, d, d), sum_n z_nk (x_n - mu_k)(x_n - mu_k)^T around the *old* means
    total_log_norm : 0-d, sum_n ln p(x_n)
    """
    xp = get_array_module(X, means, precisions_cholesky, weights)
    p_augmented = augmented_precisions_cholesky(means, precisions_cholesky)
    offset = log_joint_offset(weights, precisions_cholesky, "full", means)  # (K,)
    log_floor = log_exp_floor(X)

    def sums_over(slices):
        counts = weighted_sums = whitened_scatter = total_log_norm = 0.0
        for start, stop in slices:
            X_block = X[start:stop, :]  # (B, d)
            whitened = whitened_differences(X_block, p_augmented)  # y_nk: (K, B, d)
            # ln pi_k N(x_n | mu_k, Sigma_k) = offset_k - 1/2 ||y_nk||^2: (K, B)
            log_joint = offset[:, None] - 0.5 * squared_norms(whitened)
            resp, log_norm = responsibilities(log_joint, 0, log_floor)  # z_nk: (K, B)
            total_log_norm = total_log_norm + log_norm
            counts = counts + xp.sum(resp, axis=1)  # (K,)
            weighted_sums = weighted_sums + xp.matmul(resp, X_block)  # (K, B) @ (B, d)
            whitened_scatter = whitened_scatter + weighted_gram(whitened, resp)
        return counts, weighted_sums, whitened_scatter, total_log_norm

    counts, weighted_sums, whitened_scatter, total_log_norm = over_blocks(
        sums_over, X.shape[0], block_size, n_threads)
    # Back from whitened coordinates, x - mu_old = y P^{-1}:
    # sum_n z_nk (x_n - mu_old)(x_n - mu_old)^T = P_k^{-T} (sum_n z_nk y_nk^T y_nk) P_k^{-1}
    p_inverse_t = invert_lower_triangular(
        xp.matrix_transpose(precisions_cholesky), xp)  # P^{-T}: (K, d, d)
    scatter = xp.matmul(xp.matmul(p_inverse_t, whitened_scatter),
                        xp.matrix_transpose(p_inverse_t))  # (K, d, d)
    return counts, weighted_sums, scatter, total_log_norm


def centred_scatter(X, weights, means, precisions_cholesky, centres, block_size, n_threads):
    """sum_n z_nk (x_n - c_k)(x_n - c_k)^T, the E-step done again: trick 4's second pass."""
    xp = get_array_module(X, means, centres)
    p_augmented = augmented_precisions_cholesky(means, precisions_cholesky)
    offset = log_joint_offset(weights, precisions_cholesky, "full", means)
    log_floor = log_exp_floor(X)

    def sums_over(slices):
        scatter = 0.0
        for start, stop in slices:
            X_block = X[start:stop, :]  # (B, d)
            whitened = whitened_differences(X_block, p_augmented)  # (K, B, d)
            log_joint = offset[:, None] - 0.5 * squared_norms(whitened)
            resp, _ = responsibilities(log_joint, 0, log_floor)  # (K, B)
            # x_n - c_k, (K, B, d), in the memory layout weighted_gram prefers
            if X.shape[1] > GENERAL_PRODUCT_MAX_FEATURES:
                centred = xp.permute_dims(
                    X_block[:, None, :] - centres[None, :, :], (1, 0, 2))  # (B, K, d) memory
            else:
                centred = X_block[None, :, :] - centres[:, None, :]  # (K, B, d) memory
            scatter = scatter + weighted_gram(centred, resp)  # (K, d, d)
        return (scatter,)

    return over_blocks(sums_over, X.shape[0], block_size, n_threads)[0]


def full_step_scatter(X, weights, means, precisions_cholesky, counts, weighted_sums, scatter,
                      seed_form, block_size, n_threads):
    """The scatter around the new means (or the old ones, ``seed_form``), shape (K, d, d).

    ``scatter`` is around the old means. Moving it to the new ones (textbook EM),
    S_new = S_old - N_k s s^T with s = mu_new - mu_old, unless that cancels too much
    (trick 4): then a second pass centred on the new means. ``counts`` are the plain N_k.
    """
    if seed_form:
        return scatter
    xp = get_array_module(scatter, weighted_sums)
    safe_counts = guarded_counts(counts)  # as in m_step
    new_means = weighted_sums / safe_counts[:, None]  # (K, d)
    shift = new_means - means  # s: (K, d)
    # sum_n z_nk (x_n - mu_new)(x_n - mu_new)^T = S_old - N_k s s^T
    moved = scatter - counts[:, None, None] * (shift[:, :, None] * shift[:, None, :])
    # The cancellation in the narrowest direction: N_k ||s||^2 against lambda_min(S_new).
    if matrix_cancels_too_much(counts * xp.vecdot(shift, shift, axis=-1), moved, X.dtype):
        return centred_scatter(X, weights, means, precisions_cholesky, new_means, block_size,
                               n_threads)
    return moved
