"""``GaussianMixture``: the equations put together as a scikit-learn estimator.

A drop-in for ``sklearn.mixture.GaussianMixture`` (same parameters, attributes and methods,
the same initialisations drawn from the same random numbers), plus :meth:`reconstruct`
(eq. 8) and a choice of engine (``algorithm``: the functions of
:mod:`em_tutorial.gmm.equations`, or the fast engine :mod:`em_tutorial.gmm.fast`).

It follows scikit-learn's array-API convention: by default X is converted to NumPy; under
``sklearn.config_context(array_api_dispatch=True)`` (which needs ``SCIPY_ARRAY_API=1`` in
the environment before SciPy is first imported; a device array met without dispatch is
refused with an error that says so) it fits NumPy, PyTorch and CuPy arrays, and any
other array-API array, in their own namespace and on their own device, and the fitted
attributes stay there. Every initialisation works there; the k-means ones copy X to the host
once per initialisation (see :mod:`em_tutorial.gmm._start`).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from numbers import Integral, Real

import array_api_compat
import numpy as np
import sklearn
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from em_tutorial.backend import get_array_module, is_numpy_namespace
from em_tutorial.gmm._arrays import to_host
from em_tutorial.gmm._engines import (
    ALGORITHMS,
    centred_for_fit,
    component_log_density,
    initial_m_step,
    one_em_step,
    single_threaded_blas,
)
from em_tutorial.gmm._start import (
    INIT_PARAMS,
    checked_inits,
    host_dtype,
    initial_responsibilities,
)
from em_tutorial.gmm._validation import check_n_samples, check_not_overflowing
from em_tutorial.gmm.equations import log_softmax, reconstruct, weighted_log_density
from em_tutorial.gmm.precision import (
    COVARIANCE_TYPES,
    collapse_error,
    collapsed_components,
    covariances_from_precisions_cholesky,
    precisions_cholesky_from_covariances,
    precisions_cholesky_from_precisions,
    precisions_from_cholesky,
    rounding_floors,
)


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
    algorithm : {"fast", "reference"}, default="fast"
        The engine. ``"reference"`` runs the plain functions of the equations
        (:func:`em_tutorial.gmm.e_step`, :func:`em_tutorial.gmm.m_step`, ...), the code to
        read; ``"fast"`` runs :mod:`em_tutorial.gmm.fast`, blocked and threaded (for diag
        and spherical it holds a centred copy of X while it fits). Both give the same
        numbers (to rounding).

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

    Notes
    -----
    Where it differs from scikit-learn's (otherwise the fits agree to rounding):

    * ``covariance_type="tied"`` with the ``"k-means++"`` or ``"random_from_data"`` starts:
      the first covariance is eq. 7's pooled scatter of the K chosen points, while
      scikit-learn's formula assumes every row of responsibilities sums to 1; from the same
      random numbers the fits then converge elsewhere (iris: -1.709 here, -2.533 there).
    * An empty component's count is floored at 10 eps (scikit-learn adds 10 eps), so a
      component on one point keeps that point as its exact mean.
    * A covariance at the rounding level of the data is reported as collapsed (see
      :func:`em_tutorial.gmm.precision.rounding_floors`), with scikit-learn's message first.
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
        algorithm="fast",
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
        self.algorithm = algorithm

    # ------------------------------------------------------------------ checks of X

    def _fit_samples(self, X):
        """X checked for fitting: NumPy, or under array-API dispatch its own namespace."""
        xp = _namespace_for(X)
        with _naming_x():
            return validate_data(self, X, dtype=[xp.float64, xp.float32], ensure_min_samples=2)

    def _validated(self, X):
        """X checked against the fit, for the methods that use it."""
        check_is_fitted(self)
        xp = _namespace_for(X)
        with _naming_x():
            return validate_data(self, X, dtype=[xp.float64, xp.float32], reset=False)

    def _precisions_cholesky(self, covariances, validate):
        try:
            return precisions_cholesky_from_covariances(
                covariances, self.covariance_type, validate=validate
            )
        except ValueError:
            raise collapse_error(covariances, self.covariance_type, self.reg_covar) from None

    def _check_not_collapsed(self, covariances, means):
        """Once per fit, on the host: no variance may be down at the rounding-noise level."""
        floors = rounding_floors(means, self.covariance_type, self.reg_covar)
        if collapsed_components(covariances, self.covariance_type, floors):
            raise collapse_error(covariances, self.covariance_type, self.reg_covar, floors)

    # ------------------------------------------------------------------ EM

    def _initial_parameters(self, X, random_state, inits):
        """(weights, means, covariances, precisions_cholesky) to start EM from."""
        weights, means, precisions = inits
        covariances = None
        if weights is None or means is None or precisions is None:
            resp = initial_responsibilities(X, self.n_components, self.init_params, random_state)
            with single_threaded_blas(X):  # small products: threads only wait on each other
                first = initial_m_step(self.algorithm, X, resp, self.covariance_type,
                                       self.reg_covar)
            weights = first[0] if weights is None else weights
            means = first[1] if means is None else means
            covariances = first[2]
        if precisions is None:
            return weights, means, covariances, self._precisions_cholesky(covariances, True)
        precisions_chol = precisions_cholesky_from_precisions(precisions, self.covariance_type)
        covariances = covariances_from_precisions_cholesky(precisions_chol, self.covariance_type)
        return weights, means, covariances, precisions_chol

    def _em(self, X, centred, params, lower_bound):
        """Run EM from ``params``; return (params, lower_bound, lower_bounds, n_iter, converged).

        ``centred`` is what the engine forms once per fit
        (:func:`em_tutorial.gmm._engines.centred_for_fit`).

        Everything here stays on X's device. The host round-trip per iteration is the scalar
        ``float(mean ln p(x_n))`` that decides convergence (plus, in the fast engine, one
        boolean: would re-centring cancel too many digits). The scalar also catches a
        collapsed component, whose NaN or infinite factor shows up in it; one that collapses
        only to a tiny positive variance is caught by one check after the loop.
        """
        weights, means, covariances, precisions_chol = params
        lower_bounds, converged, n_iter = [], False, 0
        with single_threaded_blas(X):
            for n_iter in range(1, self.max_iter + 1):
                previous_lower_bound, incoming_covariances = lower_bound, covariances
                # E-step (eq. 5) and M-step (eq. 7); the log-likelihood that comes back is
                # that of the parameters going in, as in scikit-learn.
                weights, means, covariances, mean_log_likelihood = one_em_step(
                    self.algorithm, X, weights, means, precisions_chol, self.covariance_type,
                    self.reg_covar, centred)
                lower_bound = float(mean_log_likelihood)  # eq. 4 / N: a host round-trip
                if not math.isfinite(lower_bound):
                    raise collapse_error(incoming_covariances, self.covariance_type,
                                         self.reg_covar)
                precisions_chol = self._precisions_cholesky(covariances, validate=False)
                lower_bounds.append(lower_bound)
                change = lower_bound - previous_lower_bound
                self._print_iteration(n_iter, change)
                if abs(change) < self.tol:
                    converged = True
                    break
        self._check_not_collapsed(covariances, means)
        params = (weights, means, covariances, precisions_chol)
        return params, lower_bound, lower_bounds, n_iter, converged

    def fit(self, X, y=None):
        """Estimate the parameters with EM (``n_init`` starts, the best one kept).

        Parameters
        ----------
        X : array of shape (N, d)
            NumPy or anything it takes; under array-API dispatch, any array-API array.
        y : ignored

        Returns
        -------
        self
        """
        self._fit(X)
        return self

    def fit_predict(self, X, y=None):
        """Fit as :meth:`fit`, then return the most probable component of each sample.

        Returns
        -------
        labels : array of shape (N,), in X's namespace
        """
        X = self._fit(X)
        # A last E-step, with the fitted parameters, so that fit_predict(X) always equals
        # fit(X).predict(X). (scikit-learn's fit runs it too and drops the labels; fit here
        # does not run it.)
        return get_array_module(X).argmax(self._weighted_log_density(X), axis=1)

    def _fit(self, X):
        """EM from ``n_init`` starts, the best kept as the fitted attributes; returns X as
        checked (NumPy, or under array-API dispatch its own namespace)."""
        check_hyperparameters(self)
        X = self._fit_samples(X)
        xp = get_array_module(X)
        check_n_samples(X, self.n_components)
        # max |x| as max(max x, -min x): no (N, d) temporary |X| (4.1 -> 2.4 ms at 20k x 128)
        max_abs = max(float(xp.max(X)), -float(xp.min(X)))
        check_not_overflowing(X.shape, host_dtype(X), max_abs, self.reg_covar)
        inits = checked_inits(X, self.covariance_type, self.n_components, self.weights_init,
                              self.means_init, self.precisions_init)
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        random_state = check_random_state(self.random_state)
        centred = centred_for_fit(self.algorithm, X, self.n_components, self.covariance_type)
        best = None
        for init in range(self.n_init if do_init else 1):
            self._print_init_start(init)
            if do_init:
                params, lower_bound = self._initial_parameters(X, random_state, inits), -math.inf
            else:
                params = (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
                lower_bound = self.lower_bound_
            result = self._em(X, centred, params, lower_bound)
            self._print_init_end(result[1], result[4])
            if best is None or result[1] > best[1]:
                best = result
        params, self.lower_bound_, self.lower_bounds_, self.n_iter_, self.converged_ = best
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
            )
        self._set_parameters(params)
        return X

    def _set_parameters(self, params):
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = params
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)

    # ------------------------------------------------------------------ using the fit

    def _weighted_log_density(self, X):
        """ln pi_k N(x_n | mu_k, Sigma_k) under the current parameters, shape (N, K)."""
        log_density = component_log_density(
            self.algorithm, X, self.means_, self.precisions_cholesky_, self.covariance_type)
        return weighted_log_density(log_density, self.weights_)

    def _log_resp(self, X):
        """(ln z_nk, ln p(x_n)) under the current parameters."""
        return log_softmax(self._weighted_log_density(X), axis=1)

    def score_samples(self, X):
        """ln p(x_n) = ln sum_k pi_k N(x_n | mu_k, Sigma_k) for each sample, shape (N,)."""
        _, log_norm = self._log_resp(self._validated(X))
        return log_norm

    def score(self, X, y=None):
        """Mean log-likelihood per sample, eq. 4 divided by N, as a Python float."""
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
        return get_array_module(weighted).argmax(weighted, axis=1)

    def reconstruct(self, X):
        """x~_n = sum_k z_nk mu_k (eq. 8): each sample re-expressed by the means, shape (N, d)."""
        return reconstruct(self.predict_proba(X), self.means_)

    def sample(self, n_samples=1):
        """Draw ``n_samples`` points from the fitted mixture (on the host, as scikit-learn).

        Returns
        -------
        X : array of shape (n_samples, d), float64 (in the fit's namespace and device)
        y : array of shape (n_samples,)
            The component each point was drawn from.
        """
        check_is_fitted(self)
        # bool is an Integral in Python, but sample(True) is a mistake, not one sample
        if (isinstance(n_samples, bool) or not isinstance(n_samples, Integral)
                or not 1 <= n_samples <= np.iinfo(np.int64).max):
            raise ValueError(f"Invalid value for 'n_samples': {n_samples!r}. The sampling "
                             "requires at least one sample (an int >= 1, at most 2**63 - 1).")
        rng = check_random_state(self.random_state)
        means = to_host(self.means_).astype(np.float64)
        covariances = to_host(self.covariances_).astype(np.float64)
        counts = rng.multinomial(n_samples, to_host(self.weights_))
        if self.covariance_type in ("full", "tied"):
            # NumPy's positive-semidefinite check has a tolerance of 1e-8: a float32 fit's
            # covariance, accurate to its own precision but asymmetric in the last bit, would
            # warn. Sigma_k is symmetric by definition, so symmetrise it in float64.
            covariances = (covariances + covariances.swapaxes(-1, -2)) / 2  # (K, d, d) or (d, d)
            if self.covariance_type == "tied":
                covariances = [covariances] * self.n_components
            parts = [rng.multivariate_normal(mean, cov, int(count))
                     for mean, cov, count in zip(means, covariances, counts)]
        else:  # diag (K, d) or spherical (K,) variances
            parts = [mean + rng.standard_normal(size=(count, means.shape[1])) * np.sqrt(var)
                     for mean, var, count in zip(means, covariances, counts)]
        X, labels = np.vstack(parts), np.repeat(np.arange(self.n_components), counts)
        xp = get_array_module(self.means_)
        if is_numpy_namespace(xp):
            return X, labels
        device = array_api_compat.device(self.means_)
        # float64 as scikit-learn samples, where the device has it (Apple's MPS has not)
        is_mps = array_api_compat.is_torch_namespace(xp) and "mps" in str(device)
        return (xp.asarray(X, dtype=xp.float32 if is_mps else xp.float64, device=device),
                xp.asarray(labels, dtype=xp.int64, device=device))

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


def check_hyperparameters(mixture):
    """Raise a ValueError that names the first argument of ``mixture`` out of its range."""

    def check(name, ok, expected):
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {getattr(mixture, name)!r}")

    def is_int(value):
        return isinstance(value, Integral) and not isinstance(value, bool)

    def is_real(value):
        return isinstance(value, Real) and not isinstance(value, bool)

    m = mixture
    check("n_components", is_int(m.n_components) and m.n_components >= 1, "an int >= 1")
    check("covariance_type", m.covariance_type in COVARIANCE_TYPES, f"one of {COVARIANCE_TYPES}")
    check("tol", is_real(m.tol) and m.tol >= 0, "a number >= 0")
    check("reg_covar", is_real(m.reg_covar) and m.reg_covar >= 0, "a number >= 0")
    check("max_iter", is_int(m.max_iter) and m.max_iter >= 0, "an int >= 0")
    check("n_init", is_int(m.n_init) and m.n_init >= 1, "an int >= 1")
    check("init_params", m.init_params in INIT_PARAMS, f"one of {INIT_PARAMS}")
    check("verbose_interval", is_int(m.verbose_interval) and m.verbose_interval >= 1,
          "an int >= 1")
    check("algorithm", m.algorithm in ALGORITHMS, f"one of {ALGORITHMS}")


def _namespace_for(X):
    """The namespace X is checked and fitted in: its own under scikit-learn's array-API
    dispatch, else NumPy (scikit-learn's convention), refusing an array on a device.

    Written here because scikit-learn's own (``get_namespace``) is private.
    """
    if sklearn.get_config()["array_api_dispatch"]:
        return array_api_compat.array_namespace(X) if array_api_compat.is_array_api_obj(X) else np
    if array_api_compat.is_array_api_obj(X) and not array_api_compat.is_numpy_array(X):
        device = array_api_compat.device(X)
        if "cpu" not in str(device).lower():
            raise TypeError(
                f"X is an array of {type(X).__module__.split('.')[0]} on {device}; without "
                "scikit-learn's array-API dispatch it would be copied to a NumPy array. To fit "
                "it where it is, set the environment variable SCIPY_ARRAY_API=1 before SciPy is "
                "first imported (before importing scipy, sklearn or em_tutorial; in Jupyter, "
                "set it and restart the kernel), then fit inside "
                "sklearn.config_context(array_api_dispatch=True). Or use "
                "em_tutorial.gpu.GaussianMixtureGPU, which needs neither."
            )
    return np


@contextlib.contextmanager
def _naming_x():
    """scikit-learn's checks of X (shape, dtype, NaN, sample count), re-raised as this package's
    error of the same type with the argument named: "X: Found array with 1 sample(s) ..."."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise type(error)(f"X: {error}") from error
