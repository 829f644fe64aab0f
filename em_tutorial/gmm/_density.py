"""The log-density of every component at every point: ln N(x_n | mu_k, Sigma_k), eq. 3.

:func:`log_gaussian_density` is the plain version, one component at a time, to read. The
fast engine's :func:`em_tutorial.gmm.log_gaussian_density_blocked` computes the same numbers
(see :mod:`em_tutorial.gmm._fast`).
"""

from __future__ import annotations

import math

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._precision import check_covariance_type, log_det_cholesky, parameter_shape

def check_parameter_shapes(X, means, precisions_cholesky, covariance_type):
    """Raise a ValueError naming the problem unless the shapes fit together (eq. 3's inputs)."""
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


def log_density_from_mahalanobis(mahalanobis, log_det, n_features):
    """ln N from the squared Mahalanobis distances and ln |P_k| (``log_det``)."""
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
    check_parameter_shapes(X, means, precisions_cholesky, covariance_type)
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
    return log_density_from_mahalanobis(mahalanobis, log_det, n_features)
