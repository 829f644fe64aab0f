"""The E-step (eq. 5) and the log-likelihood (eq. 4), both in log space.

The densities N(x_n | mu_k, Sigma_k) underflow to 0 for points far from every component
(exp(-800) in float64), so everything is done with ln N and the log-sum-exp trick:

    ln sum_k exp(a_k) = m + ln sum_k exp(a_k - m),    m = max_k a_k.
"""

from __future__ import annotations

import math

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._arrays import constant_like
from em_tutorial.gmm._density import log_gaussian_density


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
    return xp.exp(log_resp)


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
    return xp.sum(log_norm)
