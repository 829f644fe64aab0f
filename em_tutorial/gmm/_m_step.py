"""The M-step, eq. 7: new mixing weights, means and covariances from the responsibilities.

    N_k = sum_n z_nk,    pi_k = N_k / N,    mu_k = (1/N_k) sum_n z_nk x_n,
    Sigma_k = (1/N_k) sum_n z_nk (x_n - c_k)(x_n - c_k)^T + reg_covar I.

Textbook EM (Bishop, PRML eq. 9.25) centres the covariance on the *new* mean, c_k = mu_k.
The seed writes the *old* mean there; pass it as ``covariance_means`` to get the seed's form.
The new mean gives the Sigma_k that maximises Q (eq. 2) jointly with mu_k. The old mean gives
the Sigma_k that maximises Q *given the old means*, and the new mu_k maximises Q for any
Sigma_k, so the seed's form is a conditional-maximisation step (ECM, Meng and Rubin 1993):
the log-likelihood still never decreases, but each step raises Q less (Sigma_k is inflated
by (mu_new - mu_old)(mu_new - mu_old)^T), and EM typically converges more slowly.

:func:`m_step` computes it one component at a time, to read. The fast engine
(:mod:`em_tutorial.gmm._fast`) has a blocked version, :func:`em_tutorial.gmm.m_step_blocked`,
and fuses the M-step with the E-step in :func:`em_tutorial.gmm.em_step_blocked`; both are
tested equal to this one.
"""

from __future__ import annotations

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._arrays import constant_like, eye_like
from em_tutorial.gmm._precision import check_covariance_type


def guarded_counts(counts):
    """N_k, with at least 10 eps against an empty component's division by zero.

    A floor rather than scikit-learn's "+ 10 eps": a component with any weight keeps its
    exact mean, so one that starts on a single point has mu_k = x exactly and a scatter of
    exactly 0 (else its covariance is rank-one rounding noise, singular in float32).
    """
    xp = get_array_module(counts)
    return xp.maximum(counts, constant_like(10 * xp.finfo(counts.dtype).eps, counts))


def counts_weights_means(X, resp, covariance_means):
    """(xp, N_k, pi_k, mu_k, c_k): the first lines of eq. 7, shared with the fast engine."""
    xp = get_array_module(X, resp, covariance_means)
    if X.ndim != 2 or resp.ndim != 2 or resp.shape[0] != X.shape[0]:
        raise ValueError(
            "X must be (n_samples, n_features) and resp (n_samples, n_components); got "
            f"{tuple(X.shape)} and {tuple(resp.shape)}"
        )
    n_components, n_features = resp.shape[1], X.shape[1]
    if covariance_means is not None and tuple(covariance_means.shape) != (n_components, n_features):
        raise ValueError(
            f"covariance_means must have shape ({n_components}, {n_features}), "
            f"got {tuple(covariance_means.shape)}"
        )
    # N_k = sum_n z_nk, guarded against empty components
    counts = guarded_counts(xp.sum(resp, axis=0))  # (K,)
    # pi_k = N_k / N
    weights = counts / xp.sum(counts)  # (K,)
    # mu_k = (1/N_k) sum_n z_nk x_n: (K, N) @ (N, d) -> (K, d)
    means = xp.matmul(xp.matrix_transpose(resp), X) / counts[:, None]
    centres = means if covariance_means is None else covariance_means  # c_k
    return xp, counts, weights, means, centres


def covariances_from_scatter(scatter, counts, covariance_type, reg_covar):
    """Sigma from the scatter sum_n z_nk (x_n - c_k)(x_n - c_k)^T.

    ``scatter`` is (K, d, d), or (K, d) diagonals for diag and spherical.
    """
    xp = get_array_module(scatter, counts)
    n_features = scatter.shape[1]
    if covariance_type == "full":
        eye = eye_like(n_features, scatter)
        return scatter / counts[:, None, None] + reg_covar * eye  # (K, d, d)
    if covariance_type == "tied":
        # One Sigma for all: the pooled scatter over all N points.
        eye = eye_like(n_features, scatter)
        return xp.sum(scatter, axis=0) / xp.sum(counts) + reg_covar * eye  # (d, d)
    variances = scatter / counts[:, None] + reg_covar  # (K, d)
    if covariance_type == "diag":
        return variances
    return xp.mean(variances, axis=1)  # spherical: (K,)


def m_step(X, resp, covariance_type="full", reg_covar=1e-6, covariance_means=None):
    """New parameters from the responsibilities, eq. 7 (with the weights pi_k).

    Parameters
    ----------
    X : array of shape (N, d)
        Data x_n.
    resp : array of shape (N, K)
        Responsibilities z_nk from the E-step.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    reg_covar : float, default=1e-6
        Added to the diagonal of every Sigma_k, so a component on a single point keeps a
        positive-definite covariance.
    covariance_means : array of shape (K, d), optional
        The centres c_k inside the covariance. ``None`` (default): the new means, textbook
        EM (Bishop 9.25). The previous means: the seed's eq. 7.

    Returns
    -------
    weights : array of shape (K,)
        pi_k = N_k / N.
    means : array of shape (K, d)
        mu_k.
    covariances : array
        Sigma_k: full (K, d, d), tied (d, d), diag (K, d), spherical (K,).
    """
    check_covariance_type(covariance_type)
    xp, counts, weights, means, centres = counts_weights_means(X, resp, covariance_means)
    diagonal_only = covariance_type in ("diag", "spherical")
    scatters = []
    for k in range(resp.shape[1]):
        centred = X - centres[k, :]  # x_n - c_k: (N, d)
        weighted = resp[:, k : k + 1] * centred  # z_nk (x_n - c_k): (N, d)
        if diagonal_only:
            # sum_n z_nk (x_nj - c_kj)^2: (d,)
            scatters.append(xp.sum(weighted * centred, axis=0))
        else:
            # sum_n z_nk (x_n - c_k)(x_n - c_k)^T: (d, N) @ (N, d) -> (d, d)
            scatters.append(xp.matmul(xp.matrix_transpose(weighted), centred))
    scatter = xp.stack(scatters, axis=0)  # (K, d, d) or (K, d)
    return weights, means, covariances_from_scatter(scatter, counts, covariance_type, reg_covar)
