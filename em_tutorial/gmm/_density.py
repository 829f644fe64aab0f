"""The log-density of every component at every point: ln N(x_n | mu_k, Sigma_k).

Two versions side by side, tested to agree:

* :func:`log_gaussian_density` -- the plain one, one component at a time, to read.
* :func:`log_gaussian_density_blocked` -- the fast one the estimator uses. It walks X in
  blocks of :data:`BLOCK_SIZE` samples and handles all K components of a block with one
  batched matrix product, so X is read once and no (N, K, d) array is ever built.
"""

from __future__ import annotations

import math

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._precision import check_covariance_type, log_det_cholesky, parameter_shape

#: Samples per block in the fast paths. A block's temporaries are (K, BLOCK_SIZE, d) floats,
#: 4 MiB for K = d = 16 in float64: they stay in cache (measured on a 2-core Xeon with 2 MiB
#: of L2 per core and a large shared L3, where 4096 already runs 1.5x slower), while the
#: ~30 array calls per block, and the threads' turns at Python's interpreter lock, stay
#: small next to the arithmetic (512 runs 1.3x slower with two threads).
BLOCK_SIZE = 2048


def _check_shapes(X, means, precisions_cholesky, covariance_type):
    check_covariance_type(covariance_type)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
    if means.ndim != 2 or means.shape[1] != X.shape[1]:
        raise ValueError(
            f"means must have shape (n_components, {X.shape[1]}), got {tuple(means.shape)}"
        )
    expected = parameter_shape(covariance_type, *means.shape)
    if tuple(precisions_cholesky.shape) != expected:
        raise ValueError(
            f"precisions_cholesky for covariance_type={covariance_type!r} must have shape "
            f"{expected}, got {tuple(precisions_cholesky.shape)}"
        )


def _log_density_from_mahalanobis(mahalanobis, log_det, n_features):
    # ln N(x | mu, Sigma) = -1/2 (d ln 2pi + (x - mu)^T Sigma^{-1} (x - mu)) - 1/2 ln |Sigma|
    return -0.5 * (n_features * math.log(2 * math.pi) + mahalanobis) + log_det


def log_gaussian_density(X, means, precisions_cholesky, covariance_type="full"):
    """ln N(x_n | mu_k, Sigma_k) for every sample n and component k (the terms of eq. 3).

    With P_k the precision Cholesky factor (Sigma_k^{-1} = P_k P_k^T),

        ln N(x | mu_k, Sigma_k) = -1/2 d ln(2 pi) - 1/2 ||(x - mu_k) P_k||^2 + ln |P_k|.

    Parameters
    ----------
    X : array of shape (N, d)
        Data x_n.
    means : array of shape (K, d)
        Component means mu_k.
    precisions_cholesky : array
        P_k, shaped per ``covariance_type`` as in :mod:`em_tutorial.gmm._precision`:
        full (K, d, d), tied (d, d), diag (K, d), spherical (K,).
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"

    Returns
    -------
    log_density : array of shape (N, K)
    """
    _check_shapes(X, means, precisions_cholesky, covariance_type)
    xp = get_array_module(X, means, precisions_cholesky)
    n_components, n_features = means.shape
    columns = []
    for k in range(n_components):
        centred = X - means[k, :]  # (N, d)
        if covariance_type == "full":
            whitened = xp.matmul(centred, precisions_cholesky[k, ...])  # (N, d) @ (d, d)
        elif covariance_type == "tied":
            whitened = xp.matmul(centred, precisions_cholesky)  # (N, d) @ (d, d)
        else:  # diag: P_k = diag(p_k); spherical: P_k = p_k I
            whitened = centred * precisions_cholesky[k, ...]  # (N, d)
        # (x - mu_k)^T Sigma_k^{-1} (x - mu_k) = ||(x - mu_k) P_k||^2
        columns.append(xp.sum(whitened**2, axis=1))  # (N,)
    mahalanobis = xp.stack(columns, axis=1)  # (N, K)
    log_det = log_det_cholesky(precisions_cholesky, covariance_type, n_features)
    return _log_density_from_mahalanobis(mahalanobis, log_det, n_features)


def as_full_precisions_cholesky(precisions_cholesky, covariance_type, n_components, n_features):
    """Any covariance type's P_k written as K full (d, d) matrices, shape (K, d, d)."""
    xp = get_array_module(precisions_cholesky)
    if covariance_type == "full":
        return precisions_cholesky
    if covariance_type == "tied":
        return xp.broadcast_to(precisions_cholesky, (n_components, n_features, n_features))
    eye = xp.eye(n_features, dtype=precisions_cholesky.dtype)
    if covariance_type == "diag":
        return eye * precisions_cholesky[:, None, :]  # (K, d, d), diag(p_k)
    return eye * precisions_cholesky[:, None, None]  # (K, d, d), p_k I


def augmented_precisions_cholesky(means, precisions_cholesky, covariance_type):
    """[[P_k], [-mu_k P_k]] for every k, shape (K, d + 1, d).

    With a 1 appended to x, one product gives the centred, whitened difference:
    [x, 1] @ [[P_k], [-mu_k P_k]] = (x - mu_k) P_k.
    """
    xp = get_array_module(means, precisions_cholesky)
    n_components, n_features = means.shape
    p_full = as_full_precisions_cholesky(
        precisions_cholesky, covariance_type, n_components, n_features
    )  # (K, d, d)
    means_whitened = xp.matmul(means[:, None, :], p_full)  # (K, 1, d) @ (K, d, d) -> (K, 1, d)
    return xp.concat([p_full, -means_whitened], axis=1)  # (K, d + 1, d)


def whitened_differences(X_block, p_augmented):
    """y_nk = (x_n - mu_k) P_k for a block of samples and all K components, shape (K, B, d).

    Parameters
    ----------
    X_block : array of shape (B, d)
    p_augmented : array of shape (K, d + 1, d)
        From :func:`augmented_precisions_cholesky`.
    """
    xp = get_array_module(X_block, p_augmented)
    ones = xp.ones((X_block.shape[0], 1), dtype=X_block.dtype)
    # (1, B, d + 1) @ (K, d + 1, d) -> (K, B, d)
    return xp.matmul(xp.concat([X_block, ones], axis=1)[None, :, :], p_augmented)


def log_gaussian_density_blocked(
    X, means, precisions_cholesky, covariance_type="full", block_size=BLOCK_SIZE
):
    """Same result as :func:`log_gaussian_density`, computed block by block.

    For a block X_b of B samples, the K whitened differences (x - mu_k) P_k come out of one
    batched product against [[P_k], [-mu_k P_k]] (see :func:`whitened_differences`); their
    squared norms are the Mahalanobis distances.

    Parameters
    ----------
    X, means, precisions_cholesky, covariance_type
        As in :func:`log_gaussian_density`.
    block_size : int, default=BLOCK_SIZE
        Samples per block.

    Returns
    -------
    log_density : array of shape (N, K)
    """
    _check_shapes(X, means, precisions_cholesky, covariance_type)
    xp = get_array_module(X, means, precisions_cholesky)
    n_samples, n_features = X.shape
    p_augmented = augmented_precisions_cholesky(means, precisions_cholesky, covariance_type)
    blocks = []
    for start in range(0, n_samples, block_size):
        stop = min(start + block_size, n_samples)  # the array API has no out-of-range slices
        whitened = whitened_differences(X[start:stop, :], p_augmented)  # (K, B, d)
        # ||(x - mu_k) P_k||^2, squaring and summing in one pass: (K, B)
        blocks.append(xp.vecdot(whitened, whitened, axis=-1))
    mahalanobis = xp.matrix_transpose(xp.concat(blocks, axis=1))  # (N, K)
    log_det = log_det_cholesky(precisions_cholesky, covariance_type, n_features)
    return _log_density_from_mahalanobis(mahalanobis, log_det, n_features)
