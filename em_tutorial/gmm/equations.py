"""The equations of the design brief, (3)-(8) in the seed's numbering, one function each.

Data x_n (N of them, d features), K components with weights pi_k, means mu_k and
covariances Sigma_k; every function takes NumPy, CuPy or any array-API arrays (the ``xp``
idiom of :mod:`em_tutorial.backend`). The covariances enter through their precision
Cholesky factors P_k, Sigma_k^{-1} = P_k P_k^T (:mod:`em_tutorial.gmm.precision`).

=======================================================  ================================
(3) p(x_n) = sum_k pi_k N(x_n | mu_k, Sigma_k)          :func:`log_gaussian_density`
(4) ln p(X) = sum_n ln sum_k pi_k N(x_n | mu_k, Sigma_k) :func:`log_likelihood`
(5) z_nk = pi_k N_nk / sum_j pi_j N_nj                  :func:`e_step`, :func:`log_e_step`
(7) N_k, pi_k, mu_k, Sigma_k from z_nk                  :func:`m_step`
(8) x~_n = sum_k z_nk mu_k                              :func:`reconstruct`
one EM iteration, (5) then (7)                          :func:`em_step`
=======================================================  ================================

Everything is computed as written, one component at a time where that reads more plainly:
this is the code of ``GaussianMixture(algorithm="reference")``. The fast engine
(:mod:`em_tutorial.gmm.fast`) computes the same numbers and is tested equal to these.

The densities N(x_n | mu_k, Sigma_k) underflow to 0 for points far from every component
(exp(-800) in float64), so the E-step and the likelihood work with ln N and the
log-sum-exp trick:

    ln sum_k exp(a_k) = m + ln sum_k exp(a_k - m),    m = max_k a_k.
"""

from __future__ import annotations

import math

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._arrays import constant_like, eye_like
from em_tutorial.gmm.precision import check_covariance_type, log_det_cholesky, parameter_shape



# --- The log-sum-exp trick -----------------------------------------------------------------

def log_exp_floor(like):
    """ln sqrt(tiny), 0-d, next to ``like``: shifted log-terms below it count as 0 in
    :func:`shifted_exp`."""
    xp = get_array_module(like)
    return constant_like(0.5 * math.log(xp.finfo(like.dtype).smallest_normal), like)


def shifted_exp(a, axis, floor):
    """exp(a - m) with m = max(a) along ``axis``: the terms of the log-sum-exp trick.

    Parameters
    ----------
    a : array
        Log-terms.
    axis : int
    floor : 0-d array
        From :func:`log_exp_floor`.

    Returns
    -------
    shifted : array, the shape of ``a``
        a - m.
    terms : array, the shape of ``a``
        exp(a - m), with 0 where a - m < ``floor``.
    peak : array, ``a`` with ``axis`` of length 1
        m.
    """
    xp = get_array_module(a)
    peak = xp.max(a, axis=axis, keepdims=True)
    # Rows that are -inf everywhere would give -inf - -inf = NaN; shift them by 0 instead.
    peak = xp.where(xp.isfinite(peak), peak, xp.zeros_like(peak))
    shifted = a - peak
    # Terms below sqrt(tiny) of the largest cannot change the sum: they count as 0, which keeps
    # exp away from its subnormal results, and sums away from subnormal products (~50x slower).
    # Written so that a NaN (e.g. from a collapsed component) still comes through.
    terms = xp.where(shifted < floor, xp.zeros_like(shifted), xp.exp(xp.maximum(shifted, floor)))
    return shifted, terms, peak


def log_softmax(a, axis=-1):
    """ln softmax(a) and ln sum exp(a) along ``axis``, stable for any magnitude of a.

    Both are formed from the shifted values a - max(a), so the log-softmax is never the
    difference of two large numbers: its exponentials sum to 1 to working precision even
    when a is around -1e5 in float32.

    Returns
    -------
    log_p : array, the shape of ``a``
    log_sum_exp : array, ``a`` without ``axis``
    """
    xp = get_array_module(a)
    shifted, terms, peak = shifted_exp(a, axis, log_exp_floor(a))
    log_sum_shifted = xp.log(xp.sum(terms, axis=axis, keepdims=True))
    log_p = shifted - log_sum_shifted
    return log_p, xp.squeeze(log_sum_shifted + peak, axis=axis)


def logsumexp(a, axis):
    """ln sum exp(a) along ``axis``, without overflow or underflow; see :func:`log_softmax`."""
    return log_softmax(a, axis)[1]

# --- Eq. (3): the component densities N(x_n | mu_k, Sigma_k) -------------------------------

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
        P_k, shaped per ``covariance_type`` as in :mod:`em_tutorial.gmm.precision`:
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

# --- Eq. (4): the log-likelihood -----------------------------------------------------------

def log_likelihood(X, means, precisions_cholesky, covariance_type="full", weights=None):
    """The log-likelihood of the data, eq. 4.

        ln p(X | pi, mu, Sigma) = sum_n ln sum_k pi_k N(x_n | mu_k, Sigma_k)

    Arguments as in :func:`log_e_step` (``weights=None``: pi_k = 1/K).

    Returns
    -------
    log_likelihood : 0-d array
        The sum over samples (scikit-learn's ``score`` is this divided by N).
    """
    xp = get_array_module(X, means, precisions_cholesky, weights)
    _, log_norm = log_e_step(X, means, precisions_cholesky, covariance_type, weights)
    # ln p(X) = sum_n ln p(x_n)
    return xp.sum(log_norm)

# --- Eq. (5): the E-step -------------------------------------------------------------------

def weighted_log_density(log_density, weights=None):
    """ln(pi_k N(x_n | mu_k, Sigma_k)), shape (N, K).

    ``weights=None`` is the seed's uniform prior pi_k = 1/K: a constant shift that cancels in
    the responsibilities (eq. 5 as the seed writes it) but not in the likelihood.
    """
    xp = get_array_module(log_density, weights)
    n_components = log_density.shape[1]
    if weights is None:
        return log_density - xp.log(constant_like(float(n_components), log_density))
    if tuple(weights.shape) != (n_components,):
        raise ValueError(f"weights must have shape ({n_components},), got {tuple(weights.shape)}")
    # ln pi_k N(x_n | mu_k, Sigma_k) = ln N(x_n | mu_k, Sigma_k) + ln pi_k
    return log_density + xp.log(weights)


def log_responsibilities_from_log_density(log_density, weights=None):
    """ln z_nk and ln p(x_n) from the component log-densities; see :func:`log_e_step`."""
    weighted = weighted_log_density(log_density, weights)  # (N, K)
    # ln z_nk = ln pi_k N(x_n | mu_k, Sigma_k) - ln p(x_n)   (eq. 5, a log-softmax over k)
    # ln p(x_n) = ln sum_k pi_k N(x_n | mu_k, Sigma_k)
    return log_softmax(weighted, axis=1)  # (N, K), (N,)


def log_e_step(X, means, precisions_cholesky, covariance_type="full", weights=None):
    """The E-step in log space: ln z_nk, plus ln p(x_n) for the likelihood.

    Parameters
    ----------
    X : array of shape (N, d)
    means : array of shape (K, d)
        mu_k.
    precisions_cholesky : array
        P_k, shaped per ``covariance_type`` (see :func:`log_gaussian_density`).
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    weights : array of shape (K,), optional
        Mixing weights pi_k. ``None`` is the seed's eq. 5 (uniform prior, pi_k = 1/K).

    Returns
    -------
    log_resp : array of shape (N, K)
        ln z_nk; ``exp`` of it is what :func:`e_step` returns.
    log_norm : array of shape (N,)
        ln p(x_n) = ln sum_k pi_k N(x_n | mu_k, Sigma_k).
    """
    log_density = log_gaussian_density(X, means, precisions_cholesky, covariance_type)
    return log_responsibilities_from_log_density(log_density, weights)


def e_step(X, means, precisions_cholesky, covariance_type="full", weights=None):
    """Responsibilities z_nk, eq. 5, through a log-space softmax over k.

        z_nk = pi_k N(x_n | mu_k, Sigma_k) / sum_j pi_j N(x_n | mu_j, Sigma_j)

    With ``weights=None`` every pi_k = 1/K, which is eq. 5 exactly as the seed writes it.
    Arguments as in :func:`log_e_step`; for ln z_nk use :func:`log_e_step`.

    Returns
    -------
    resp : array of shape (N, K)
        z_nk; each row sums to 1.
    """
    xp = get_array_module(X, means, precisions_cholesky, weights)
    log_resp, _ = log_e_step(X, means, precisions_cholesky, covariance_type, weights)
    # z_nk = exp(ln z_nk)
    return xp.exp(log_resp)

# --- Eq. (7): the M-step -------------------------------------------------------------------

# New mixing weights, means and covariances from the responsibilities:
#
#     N_k = sum_n z_nk,    pi_k = N_k / N,    mu_k = (1/N_k) sum_n z_nk x_n,
#     Sigma_k = (1/N_k) sum_n z_nk (x_n - c_k)(x_n - c_k)^T + reg_covar I.
#
# Textbook EM (Bishop, PRML eq. 9.25) centres the covariance on the *new* mean, c_k = mu_k.
# The seed writes the *old* mean there; pass it as ``covariance_means`` to get the seed's form.
# The new mean gives the Sigma_k that maximises Q (eq. 2) jointly with mu_k. The old mean gives
# the Sigma_k that maximises Q *given the old means*, and the new mu_k maximises Q for any
# Sigma_k, so the seed's form is a conditional-maximisation step (ECM, Meng and Rubin 1993):
# the log-likelihood still never decreases, but each step raises Q less (Sigma_k is inflated
# by (mu_new - mu_old)(mu_new - mu_old)^T), and EM typically converges more slowly.
#
# :func:`m_step` computes it one component at a time, to read. The fast engine has a blocked
# version (:func:`em_tutorial.gmm.fast.m_step_blocked`) and fuses the M-step with the E-step
# (:func:`em_tutorial.gmm.fast.em_step_blocked`); both are tested equal to this one.


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
        # Sigma_k = (1/N_k) sum_n z_nk (x_n - c_k)(x_n - c_k)^T + reg_covar I
        return scatter / counts[:, None, None] + reg_covar * eye  # (K, d, d)
    if covariance_type == "tied":
        # One Sigma for all, the pooled scatter over all N points:
        # Sigma = (1/N) sum_k sum_n z_nk (x_n - c_k)(x_n - c_k)^T + reg_covar I
        eye = eye_like(n_features, scatter)
        return xp.sum(scatter, axis=0) / xp.sum(counts) + reg_covar * eye  # (d, d)
    # sigma_kj^2 = (1/N_k) sum_n z_nk (x_nj - c_kj)^2 + reg_covar
    variances = scatter / counts[:, None] + reg_covar  # (K, d)
    if covariance_type == "diag":
        return variances
    # spherical, Sigma_k = sigma_k^2 I: sigma_k^2 = (1/d) sum_j sigma_kj^2
    return xp.mean(variances, axis=1)  # (K,)


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

# --- Eq. (8): the reconstruction -----------------------------------------------------------

def reconstruct(resp, means):
    """x~_n = sum_k z_nk mu_k, eq. 8.

    Parameters
    ----------
    resp : array of shape (N, K)
        Responsibilities z_nk (rows sum to 1), e.g. from :func:`e_step`.
    means : array of shape (K, d)
        The bases mu_k.

    Returns
    -------
    X_tilde : array of shape (N, d)
    """
    xp = get_array_module(resp, means)
    if resp.ndim != 2 or means.ndim != 2 or resp.shape[1] != means.shape[0]:
        raise ValueError(
            "resp must be (n_samples, n_components) and means (n_components, n_features); got "
            f"{tuple(resp.shape)} and {tuple(means.shape)}"
        )
    return xp.matmul(resp, means)  # (N, K) @ (K, d) -> (N, d)

# --- One EM iteration: eq. (5), then eq. (7) -----------------------------------------------

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
