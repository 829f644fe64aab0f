"""One whole EM iteration, E-step (eq. 5) then M-step (eq. 7): :func:`em_step`, the plain
composition of :func:`e_step` and :func:`m_step`, to read. The fast engine's
:func:`em_tutorial.gmm.em_step_blocked` computes the same numbers in one pass over X (see
:mod:`em_tutorial.gmm._fast`).
"""

from __future__ import annotations

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._e_step import log_e_step
from em_tutorial.gmm._m_step import m_step


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
