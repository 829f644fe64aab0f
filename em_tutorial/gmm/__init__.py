"""Expectation-Maximization for Gaussian mixtures, equations (3)-(8) of the design brief.

One small function per equation, each working on NumPy, CuPy or any array-API arrays (the
``xp`` idiom of :mod:`em_tutorial.backend`):

=========================================  ===================================================
eq. (3), the terms N(x_n | mu_k, Sigma_k)  :func:`log_gaussian_density` (in log space)
eq. (4), the log-likelihood                :func:`log_likelihood`
eq. (5), the E-step                        :func:`e_step` (z_nk), :func:`log_e_step` (ln z_nk)
eq. (7), the M-step                        :func:`m_step`
eq. (8), the reconstruction                :func:`reconstruct`
one EM iteration, (5) then (7)             :func:`em_step`
=========================================  ===================================================

:class:`GaussianMixture` puts them together as a drop-in for
``sklearn.mixture.GaussianMixture``, with a ``reconstruct`` method. With
``algorithm="reference"`` it runs exactly these functions; by default (``"fast"``) it runs
the fast engine of :mod:`em_tutorial.gmm._fast` -- :func:`em_step_blocked`,
:func:`m_step_blocked`, :func:`log_gaussian_density_blocked` -- which computes the same
numbers in one pass over cache-sized blocks of samples (:data:`BLOCK_SIZE`, more for tied,
diag and spherical at small d and K).
"""

from em_tutorial.gmm._blocks import BLOCK_SIZE
from em_tutorial.gmm._density import log_gaussian_density
from em_tutorial.gmm._e_step import e_step, log_e_step, log_likelihood, log_softmax, logsumexp
from em_tutorial.gmm._estimator import GaussianMixture
from em_tutorial.gmm._em_step import em_step
from em_tutorial.gmm._fast import em_step_blocked, log_gaussian_density_blocked, m_step_blocked
from em_tutorial.gmm._m_step import m_step
from em_tutorial.gmm._precision import (
    COVARIANCE_TYPES,
    covariances_from_precisions_cholesky,
    precisions_cholesky_from_covariances,
    precisions_cholesky_from_precisions,
    precisions_from_cholesky,
)
from em_tutorial.gmm._reconstruct import reconstruct

__all__ = [
    "BLOCK_SIZE",
    "COVARIANCE_TYPES",
    "GaussianMixture",
    "covariances_from_precisions_cholesky",
    "e_step",
    "em_step",
    "em_step_blocked",
    "log_e_step",
    "log_gaussian_density",
    "log_gaussian_density_blocked",
    "log_likelihood",
    "log_softmax",
    "logsumexp",
    "m_step",
    "m_step_blocked",
    "precisions_cholesky_from_covariances",
    "precisions_cholesky_from_precisions",
    "precisions_from_cholesky",
    "reconstruct",
]
