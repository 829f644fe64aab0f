"""The two engines the estimator can run, behind one interface.

``"reference"`` runs the plain one-function-per-equation path (:func:`m_step`,
:func:`em_step`, :func:`log_gaussian_density`), the code a learner reads next to the
equations. ``"fast"`` runs :mod:`em_tutorial.gmm.fast`, which computes the same numbers
in one blocked, threaded pass. Both see X in its own namespace and on its own device.
"""

from __future__ import annotations

import contextlib
import functools

import array_api_compat
from threadpoolctl import ThreadpoolController

from em_tutorial.backend import get_array_module, is_numpy_namespace, usable_cpus
from em_tutorial.gmm.equations import em_step, log_gaussian_density, m_step
from em_tutorial.gmm.fast import (
    DIAGONAL_TYPES,
    em_step_blocked,
    log_gaussian_density_blocked,
    m_step_blocked,
)
from em_tutorial.gmm.fast._blocks import (
    cpu_block_size,
    full_block_size_one_thread,
    reference_point,
)
from em_tutorial.gmm.fast._diagonal import centred_data

ALGORITHMS = ("fast", "reference")

GPU_BLOCK_SIZE = 2**16
"""Samples per block on a GPU: a launch per small block would leave it idle between
kernels, while 2**16 samples keep the (K, block, d) temporaries in the tens of megabytes."""


def _on_cpu(X):
    return is_numpy_namespace(get_array_module(X))


def block_size_for(X, n_components, covariance_type):
    """Samples per block: cache-sized in host memory (:func:`cpu_block_size`, or for full
    covariances on another library's CPU arrays :func:`full_block_size_one_thread`), large
    on a GPU."""
    on_host = _on_cpu(X) or "cpu" in str(array_api_compat.device(X)).lower()
    if not on_host:
        return GPU_BLOCK_SIZE
    if covariance_type == "full" and not _on_cpu(X):
        itemsize = get_array_module(X).finfo(X.dtype).bits // 8
        return full_block_size_one_thread(X.shape[1], n_components, itemsize)
    return cpu_block_size(X.shape[1], n_components, covariance_type)


def threads_for(X, block_size):
    """Threads for the fast engine: the available cores for NumPy, 1 for other libraries."""
    if not _on_cpu(X):
        return 1  # torch and CuPy parallelise inside each operation
    n_blocks = -(-X.shape[0] // block_size)
    return max(1, min(usable_cpus(), n_blocks))


@functools.cache
def _blas_controller():
    """The BLAS libraries loaded when first asked (NumPy's among them), found once: looking
    them up reads the process's memory map, a few milliseconds per fit otherwise."""
    return ThreadpoolController()


def single_threaded_blas(X):
    """For NumPy, BLAS limited to one thread: the per-block products are too small to split,
    and the cores are already busy with one block each (waiting threads would spin)."""
    if not _on_cpu(X):
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=1, user_api="blas")


def initial_m_step(algorithm, X, resp, covariance_type, reg_covar):
    """(pi_k, mu_k, Sigma_k) from the first responsibilities, eq. 7."""
    if algorithm == "reference":
        return m_step(X, resp, covariance_type, reg_covar)
    n_components = resp.shape[1]
    # Its temporaries are (K, B, d) for every type, as a full step's are.
    block_size = block_size_for(X, n_components, "full")
    return m_step_blocked(X, resp, covariance_type, reg_covar, block_size=block_size)


def centred_for_fit(algorithm, X, n_components, covariance_type):
    """What the fast engine forms once per fit (its trick 6): X centred for diag and
    spherical; None otherwise."""
    if algorithm == "reference" or covariance_type not in DIAGONAL_TYPES:
        return None
    block_size = block_size_for(X, n_components, covariance_type)
    return centred_data(X, reference_point(X, block_size), covariance_type, block_size,
                        threads_for(X, block_size))


def one_em_step(algorithm, X, weights, means, precisions_cholesky, covariance_type, reg_covar,
                centred=None):
    """One iteration, eqs. 5 then 7: (pi, mu, Sigma, mean ln p(x_n) of the parameters in).

    ``centred`` is :func:`centred_for_fit`'s.
    """
    if algorithm == "reference":
        return em_step(X, weights, means, precisions_cholesky, covariance_type, reg_covar)
    block_size = block_size_for(X, means.shape[0], covariance_type)
    return em_step_blocked(X, weights, means, precisions_cholesky, covariance_type, reg_covar,
                           block_size=block_size, n_threads=threads_for(X, block_size),
                           centred=centred)


def component_log_density(algorithm, X, means, precisions_cholesky, covariance_type):
    """ln N(x_n | mu_k, Sigma_k), eq. 3, shape (N, K)."""
    if algorithm == "reference":
        return log_gaussian_density(X, means, precisions_cholesky, covariance_type)
    block_size = block_size_for(X, means.shape[0], covariance_type)
    with single_threaded_blas(X):
        return log_gaussian_density_blocked(X, means, precisions_cholesky, covariance_type,
                                            block_size=block_size,
                                            n_threads=threads_for(X, block_size))
