"""``GaussianMixture``: the equations put together as a scikit-learn estimator.

A drop-in for ``sklearn.mixture.GaussianMixture`` (same parameters, attributes and methods,
the same initialisations drawn from the same random numbers), plus :meth:`reconstruct`
(eq. 8). Input is checked and converted to NumPy at the scikit-learn boundary; the EM loop
itself only calls the ``xp`` functions, so it runs unchanged on device arrays.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from em_tutorial.backend import get_array_module, is_numpy_namespace, to_numpy
from em_tutorial.gmm._blocks import BLOCK_SIZE
from em_tutorial.gmm._e_step import log_softmax, weighted_log_density
from em_tutorial.gmm._fast import em_step_blocked, log_gaussian_density_blocked, m_step_blocked
from em_tutorial.gmm._precision import (
    COVARIANCE_TYPES,
    collapse_error,
    collapsed_components,
    covariances_from_precisions_cholesky,
    precisions_cholesky_from_covariances,
    precisions_cholesky_from_precisions,
    precisions_from_cholesky,
)
from em_tutorial.gmm._reconstruct import reconstruct
from em_tutorial.gmm._validation import (
    check_means_init,
    check_n_samples,
    check_precisions_init,
    check_weights_init,
)

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def _cpu_threads(X):
    """Threads for :func:`em_step_blocked`: the available cores on the CPU, 1 on a GPU."""
    if not is_numpy_namespace(get_array_module(X)):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n_blocks = -(-X.shape[0] // BLOCK_SIZE)
    return max(1, min(cores or 1, n_blocks))


#: Samples per block on a GPU: a launch per small block would leave it idle between kernels,
#: while 2**16 samples keep the (K, block, d) temporaries in the tens of megabytes.
GPU_BLOCK_SIZE = 2**16


def _block_size(X):
    """Samples per block: cache-sized on the CPU (:data:`BLOCK_SIZE`), large on a GPU."""
    return BLOCK_SIZE if is_numpy_namespace(get_array_module(X)) else GPU_BLOCK_SIZE


def _single_threaded_blas(X):
    """On the CPU, BLAS limited to one thread: the per-block products are too small to split,
    and the cores are already busy with one block each (or waiting threads would spin)."""
    if not is_numpy_namespace(get_array_module(X)):
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM (eqs. 3-7), a drop-in for scikit-learn's.

    Parameters
    ----------
    n_components : int, default=1
        K, the number of mixture components.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
        Shape of Sigma_k: full matrices, one matrix shared by all components, diagonal
        matrices, or sigma_k^2 I.
    tol : float, default=1e-3
        Stop when the mean log-likelihood per sample changes by less than this.
    reg_covar : float, default=1e-6
        Added to the diagonal of every Sigma_k; raise it if a component collapses. The
        likelihood is guaranteed not to decrease only while reg_covar is small next to the
        components' variances: the regularised M-step no longer maximises Q exactly.
    max_iter : int, default=100
        EM iterations per initialisation.
    n_init : int, default=1
        Initialisations; the one with the highest likelihood is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How the first responsibilities are drawn (as in scikit-learn).
    weights_init : array-like of shape (K,), optional
        Initial pi_k.
    means_init : array-like of shape (K, d), optional
        Initial mu_k.
    precisions_init : array-like, optional
        Initial Sigma_k^{-1}: full (K, d, d), tied (d, d), diag (K, d), spherical (K,).
    random_state : int, RandomState instance or None, default=None
    warm_start : bool, default=False
        Continue from the last fit instead of initialising again.
    verbose : int, default=0
    verbose_interval : int, default=10
        Iterations between progress messages.

    Attributes
    ----------
    weights_ : ndarray of shape (K,)
    means_ : ndarray of shape (K, d)
    covariances_ : ndarray
    precisions_ : ndarray
    precisions_cholesky_ : ndarray
        P_k with Sigma_k^{-1} = P_k P_k^T (shapes as ``precisions_init``).
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood per sample of the best initialisation, eq. 4 divided by N.
    lower_bounds_ : list of float
        That value at every iteration of the best initialisation.
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    # ------------------------------------------------------------------ checks

    def _check_hyperparameters(self):
        def check(name, ok, expected):
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(value):
            return isinstance(value, Integral) and not isinstance(value, bool)

        def is_real(value):
            return isinstance(value, Real) and not isinstance(value, bool)

        check("n_components", is_int(self.n_components) and self.n_components >= 1, "an int >= 1")
        check("covariance_type", self.covariance_type in COVARIANCE_TYPES,
              f"one of {COVARIANCE_TYPES}")
        check("tol", is_real(self.tol) and self.tol >= 0, "a number >= 0")
        check("reg_covar", is_real(self.reg_covar) and self.reg_covar >= 0, "a number >= 0")
        check("max_iter", is_int(self.max_iter) and self.max_iter >= 0, "an int >= 0")
        check("n_init", is_int(self.n_init) and self.n_init >= 1, "an int >= 1")
        check("init_params", self.init_params in INIT_PARAMS, f"one of {INIT_PARAMS}")
        check("verbose_interval", is_int(self.verbose_interval) and self.verbose_interval >= 1,
              "an int >= 1")

    def _checked_inits(self, X):
        n_features = X.shape[1]
        weights, means, precisions = self.weights_init, self.means_init, self.precisions_init
        if weights is not None:
            weights = check_weights_init(weights, self.n_components, X.dtype)
        if means is not None:
            means = check_means_init(means, self.n_components, n_features, X.dtype)
        if precisions is not None:
            precisions = check_precisions_init(
                precisions, self.covariance_type, self.n_components, n_features, X.dtype
            )
        return weights, means, precisions

    def _precisions_cholesky(self, covariances, validate):
        try:
            return precisions_cholesky_from_covariances(
                covariances, self.covariance_type, validate=validate
            )
        except ValueError:
            raise collapse_error(covariances, self.covariance_type, self.reg_covar) from None

    # ------------------------------------------------------------------ initialisation

    def _initial_responsibilities(self, X, random_state):
        n_samples, n_components = X.shape[0], self.n_components
        if self.init_params == "random":
            resp = random_state.uniform(size=(n_samples, n_components)).astype(X.dtype)
            return resp / resp.sum(axis=1, keepdims=True)
        if self.init_params == "kmeans":
            labels = (
                KMeans(n_clusters=n_components, n_init=1, random_state=random_state)
                .fit(X)
                .labels_
            )
        elif self.init_params == "random_from_data":
            indices = random_state.choice(n_samples, size=n_components, replace=False)
        else:  # k-means++
            _, indices = kmeans_plusplus(X, n_components, random_state=random_state)
        resp = np.zeros((n_samples, n_components), dtype=X.dtype)
        if self.init_params == "kmeans":
            resp[np.arange(n_samples), labels] = 1
        else:
            resp[indices, np.arange(n_components)] = 1
        return resp

    def _initial_parameters(self, X, random_state, inits):
        """(weights, means, covariances, precisions_cholesky) to start EM from."""
        with _single_threaded_blas(X):  # small factorisations: threads only wait on each other
            return self._initial_parameters_from(X, random_state, inits)

    def _initial_parameters_from(self, X, random_state, inits):
        weights_init, means_init, precisions_init = inits
        xp = get_array_module(X)
        weights = means = covariances = None
        if weights_init is None or means_init is None or precisions_init is None:
            resp = xp.asarray(self._initial_responsibilities(X, random_state))
            weights, means, covariances = m_step_blocked(
                X, resp, self.covariance_type, self.reg_covar, block_size=_block_size(X)
            )
        if weights_init is not None:
            weights = xp.asarray(weights_init)
        if means_init is not None:
            means = xp.asarray(means_init)
        if precisions_init is None:
            precisions_chol = self._precisions_cholesky(covariances, validate=True)
        else:
            precisions_chol = precisions_cholesky_from_precisions(
                xp.asarray(precisions_init), self.covariance_type
            )
            covariances = covariances_from_precisions_cholesky(
                precisions_chol, self.covariance_type
            )
        return weights, means, covariances, precisions_chol

    # ------------------------------------------------------------------ EM

    def _weighted_log_density(self, X):
        """ln pi_k N(x_n | mu_k, Sigma_k) under the current parameters, shape (N, K)."""
        with _single_threaded_blas(X):
            log_density = log_gaussian_density_blocked(
                X, self.means_, self.precisions_cholesky_, self.covariance_type,
                block_size=_block_size(X),
            )
        return weighted_log_density(log_density, self.weights_)

    def _log_resp(self, X):
        """(ln z_nk, ln p(x_n)) under the current parameters, via the blocked fast path."""
        return log_softmax(self._weighted_log_density(X), axis=1)

    def _check_not_collapsed(self, covariances, variance_floor):
        """Once per fit, on the host: no variance may be down at the rounding-noise level."""
        if collapsed_components(covariances, self.covariance_type, variance_floor):
            raise collapse_error(covariances, self.covariance_type, self.reg_covar, variance_floor)

    def _em(self, X, params, lower_bound, variance_floor):
        """Run EM from ``params``; return (params, lower_bound, lower_bounds, n_iter, converged).

        Everything here stays on X's device. The host round-trip per iteration is the scalar
        ``float(mean ln p(x_n))`` that decides convergence (plus, inside
        :func:`em_step_blocked`, one boolean: did the means jump too far for its one-pass
        covariance). The scalar also catches a collapsed component, whose NaN or infinite
        factor shows up in it; one that collapses only to a tiny positive variance is caught
        by one check after the loop.
        """
        n_threads, block_size = _cpu_threads(X), _block_size(X)
        with _single_threaded_blas(X):
            return self._em_loop(X, params, lower_bound, variance_floor, n_threads, block_size)

    def _em_loop(self, X, params, lower_bound, variance_floor, n_threads, block_size):
        weights, means, covariances, precisions_chol = params
        lower_bounds = []
        converged = False
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            previous_lower_bound = lower_bound
            incoming_covariances = covariances
            # E-step (eq. 5) and M-step (eq. 7) in one blocked pass; the log-likelihood that
            # comes back is that of the parameters going in, as in scikit-learn.
            weights, means, covariances, mean_log_likelihood = em_step_blocked(
                X, weights, means, precisions_chol, self.covariance_type, self.reg_covar,
                block_size=block_size, n_threads=n_threads,
            )
            # The convergence scalar, eq. 4 divided by N: a host round-trip on a GPU.
            lower_bound = float(mean_log_likelihood)
            if not math.isfinite(lower_bound):
                raise collapse_error(incoming_covariances, self.covariance_type, self.reg_covar)
            precisions_chol = self._precisions_cholesky(covariances, validate=False)
            lower_bounds.append(lower_bound)
            change = lower_bound - previous_lower_bound
            self._print_iteration(n_iter, change)
            if abs(change) < self.tol:
                converged = True
                break
        self._check_not_collapsed(covariances, variance_floor)
        params = (weights, means, covariances, precisions_chol)
        return params, lower_bound, lower_bounds, n_iter, converged

    def fit(self, X, y=None):
        """Estimate the parameters with EM (``n_init`` starts, the best one kept).

        Parameters
        ----------
        X : array-like of shape (N, d)
        y : ignored

        Returns
        -------
        self
        """
        self.fit_predict(X, y)
        return self

    def fit_predict(self, X, y=None):
        """Fit as :meth:`fit`, then return the most probable component of each sample.

        Returns
        -------
        labels : ndarray of shape (N,)
        """
        self._check_hyperparameters()
        X = self._fit_samples(X)
        xp = get_array_module(X)
        check_n_samples(X, self.n_components)
        inits = self._checked_inits(X)

        do_init = not (self.warm_start and hasattr(self, "converged_"))
        n_init = self.n_init if do_init else 1
        random_state = check_random_state(self.random_state)
        # Variances below this are rounding noise on data of this size, (100 eps max|x|)^2.
        variance_floor = (100 * xp.finfo(X.dtype).eps * float(xp.max(xp.abs(X)))) ** 2
        best = None
        for init in range(n_init):
            self._print_init_start(init)
            if do_init:
                params = self._initial_parameters(X, random_state, inits)
                lower_bound = -math.inf
            else:
                params = (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
                lower_bound = self.lower_bound_
            result = self._em(X, params, lower_bound, variance_floor)
            self._print_init_end(result[1], result[4])
            if best is None or result[1] > best[1]:
                best = result
        (params, lower_bound, lower_bounds, n_iter, converged) = best
        if not converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
            )
        self._set_parameters(params)
        self.converged_ = converged
        self.n_iter_ = n_iter
        self.lower_bound_ = lower_bound
        self.lower_bounds_ = lower_bounds
        # A last E-step, so that fit_predict(X) always equals fit(X).predict(X).
        return to_numpy(xp.argmax(self._weighted_log_density(X), axis=1))

    def _set_parameters(self, params):
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = params
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)

    # ------------------------------------------------------------------ using the fit

    def _fit_samples(self, X):
        """X checked and converted for fitting (NumPy here; a subclass may keep it on a GPU)."""
        return validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)

    def _validated(self, X):
        """X checked against the fit, for the methods that use it."""
        check_is_fitted(self)
        return validate_data(self, X, dtype=[np.float64, np.float32], reset=False)

    def score_samples(self, X):
        """ln p(x_n) = ln sum_k pi_k N(x_n | mu_k, Sigma_k) for each sample, shape (N,)."""
        _, log_norm = self._log_resp(self._validated(X))
        return log_norm

    def score(self, X, y=None):
        """Mean log-likelihood per sample, eq. 4 divided by N."""
        log_norm = self.score_samples(X)
        return float(get_array_module(log_norm).mean(log_norm))

    def predict_proba(self, X):
        """Responsibilities z_nk (eq. 5), shape (N, K)."""
        log_resp, _ = self._log_resp(self._validated(X))
        return get_array_module(log_resp).exp(log_resp)

    def predict(self, X):
        """The most probable component of each sample, argmax_k z_nk, shape (N,)."""
        # argmax_k z_nk = argmax_k pi_k N(x_n | mu_k, Sigma_k): no normalisation needed.
        weighted = self._weighted_log_density(self._validated(X))
        return to_numpy(get_array_module(weighted).argmax(weighted, axis=1))

    def reconstruct(self, X):
        """x~_n = sum_k z_nk mu_k (eq. 8): each sample re-expressed by the means, shape (N, d)."""
        return reconstruct(self.predict_proba(X), self.means_)

    def sample(self, n_samples=1):
        """Draw ``n_samples`` points from the fitted mixture.

        Returns
        -------
        X : ndarray of shape (n_samples, d)
        y : ndarray of shape (n_samples,)
            The component each point was drawn from.
        """
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        rng = check_random_state(self.random_state)
        means, covariances = to_numpy(self.means_), to_numpy(self.covariances_)
        counts = rng.multinomial(n_samples, to_numpy(self.weights_))
        if self.covariance_type == "tied":
            covariances = [covariances] * self.n_components
        if self.covariance_type in ("full", "tied"):
            parts = [rng.multivariate_normal(mean, cov, int(count))
                     for mean, cov, count in zip(means, covariances, counts)]
        else:  # diag (K, d) or spherical (K,) variances
            parts = [mean + rng.standard_normal(size=(count, means.shape[1])) * np.sqrt(var)
                     for mean, var, count in zip(means, covariances, counts)]
        labels = np.repeat(np.arange(self.n_components), counts)
        return np.vstack(parts), labels

    def _n_parameters(self):
        n_features = self.means_.shape[1]
        K = self.n_components
        covariance_parameters = {
            "full": K * n_features * (n_features + 1) / 2,
            "tied": n_features * (n_features + 1) / 2,
            "diag": K * n_features,
            "spherical": K,
        }[self.covariance_type]
        return int(covariance_parameters + K * n_features + K - 1)

    def bic(self, X):
        """Bayesian information criterion (lower is better)."""
        return -2 * self.score(X) * X.shape[0] + self._n_parameters() * math.log(X.shape[0])

    def aic(self, X):
        """Akaike information criterion (lower is better)."""
        return -2 * self.score(X) * X.shape[0] + 2 * self._n_parameters()

    # ------------------------------------------------------------------ progress messages

    def _print_init_start(self, init):
        if self.verbose >= 1:
            print(f"Initialization {init}")
            self._iteration_time = time.time()

    def _print_iteration(self, n_iter, change):
        if self.verbose >= 1 and n_iter % self.verbose_interval == 0:
            if self.verbose == 1:
                print(f"  Iteration {n_iter}")
            else:
                now = time.time()
                print(f"  Iteration {n_iter}\t time lapse {now - self._iteration_time:.5f}s"
                      f"\t ll change {change:.5f}")
                self._iteration_time = now

    def _print_init_end(self, lower_bound, converged):
        if self.verbose >= 1:
            state = "converged" if converged else "did not converge"
            print(f"Initialization {state}. lower bound {lower_bound:.5f}.")
