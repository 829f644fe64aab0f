"""The methods of :class:`GaussianMixture` that use a fit: densities, responsibilities,
labels, reconstruction (eq. 8), samples and information criteria.

Each takes X in the namespace the mixture was fitted in and answers there (a score is a
Python float, as in scikit-learn).
"""

from __future__ import annotations

import math
from numbers import Integral

import array_api_compat
import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._array_api import _max_precision_float_dtype
from sklearn.utils.validation import check_is_fitted

from em_tutorial.backend import get_array_module, is_numpy_namespace
from em_tutorial.gmm._arrays import to_host
from em_tutorial.gmm._e_step import log_softmax, weighted_log_density
from em_tutorial.gmm._engines import component_log_density
from em_tutorial.gmm._reconstruct import reconstruct


class FittedMixtureMethods:
    """Mixed into :class:`GaussianMixture`; needs its fitted attributes and ``_validated``."""

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
        return (xp.asarray(X, dtype=_max_precision_float_dtype(xp, device), device=device),
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
