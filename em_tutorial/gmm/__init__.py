"""Expectation-Maximization for Gaussian mixtures, equations (3)-(8) of the design brief.

Read :mod:`em_tutorial.gmm.equations` first: one function per equation, in the seed's
numbering, each working on NumPy, CuPy or any array-API arrays (the ``xp`` idiom of
:mod:`em_tutorial.backend`):

=================================================  ==============================================
eq. (3), the terms N(x_n | mu_k, Sigma_k)          :func:`log_gaussian_density` (in log space)
eq. (4), the log-likelihood                        :func:`log_likelihood`
eq. (5), the E-step                                :func:`e_step` (z_nk), :func:`log_e_step`
eq. (7), the M-step                                :func:`m_step`
eq. (8), the reconstruction                        :func:`reconstruct`
one EM iteration, (5) then (7)                     :func:`em_step`
Sigma_k and its precision Cholesky factor P_k      :func:`precisions_cholesky_from_covariances`
                                                   and the others of :mod:`~.precision`
=================================================  ==============================================

:class:`GaussianMixture` (:mod:`em_tutorial.gmm.estimator`) puts them together as a drop-in
for ``sklearn.mixture.GaussianMixture``, with a ``reconstruct`` method. With
``algorithm="reference"`` it runs exactly these functions; by default (``"fast"``) it runs
the fast engine, :mod:`em_tutorial.gmm.fast` (``em_step_blocked``, ``m_step_blocked``,
``log_gaussian_density_blocked``), which computes the same numbers in one pass over
cache-sized blocks of samples; its docstring lists the tricks and what each one bought.
"""

from em_tutorial.gmm.equations import (
    e_step,
    em_step,
    log_e_step,
    log_gaussian_density,
    log_likelihood,
    log_softmax,
    logsumexp,
    m_step,
    reconstruct,
)
from em_tutorial.gmm.estimator import GaussianMixture
from em_tutorial.gmm.precision import (
    COVARIANCE_TYPES,
    covariances_from_precisions_cholesky,
    precisions_cholesky_from_covariances,
    precisions_cholesky_from_precisions,
    precisions_from_cholesky,
)

__all__ = [
    "COVARIANCE_TYPES",
    "GaussianMixture",
    "covariances_from_precisions_cholesky",
    "e_step",
    "em_step",
    "log_e_step",
    "log_gaussian_density",
    "log_likelihood",
    "log_softmax",
    "logsumexp",
    "m_step",
    "precisions_cholesky_from_covariances",
    "precisions_cholesky_from_precisions",
    "precisions_from_cholesky",
    "reconstruct",
]
