"""The fast engine's re-centring check sees every direction (trick 4 of the fast engine).

A one-pass scatter around the old means, moved to the new ones (S - N s s^T), rounds off
every entry by ~eps N ||s||^2. A cluster 100 times thinner along (1, -1) than along (1, 1)
whose means start far away loses its thin variance that way even though nothing cancels
along the shift or on the diagonal: the step must see it and centre a second pass on the new
means. The references are float64 two-pass computations (the differences x_n - mu_k formed
before squaring) on the same inputs, and float64 fits of the reference engine.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning

from em_tutorial import gmm
from em_tutorial.gmm import fast

WIDE = np.array([1.0, 1.0]) / np.sqrt(2)
THIN = np.array([1.0, -1.0]) / np.sqrt(2)

# (dtype, distance of the clusters' centres and of the starting means, thin sd, rtol): the
# rtol sits above the dtype's own limit for a variance 1e4 (float64: 1e8) times narrower
# than the data's entries and below what the one-pass scatter gave before the check looked
# beyond the shift's direction (float32 full: 73 % off, tied: 100 %; float64: 2.4 % and 0.6 %).
CASES = [(np.float32, 30.0, 1e-2, 1e-2), (np.float64, 1000.0, 1e-4, 1e-4)]


def thin_oblique_clusters(rng, covariance_type, distance, thin_sd, dtype):
    """(X, weights, means, precisions_cholesky): clusters of sd 1 along (1, 1) and
    ``thin_sd`` along (1, -1), the starting means ``distance`` sd from the data.

    full: one cluster at the origin, the mean at distance * (1, 1) / sqrt(2). tied: two
    clusters at -+distance (1, 1), the means half a unit off them across the thin direction
    (many thin sd; the reference point c, the first block's mean, sits between them).
    """
    def cluster(n, centre):
        return (rng.normal(size=(n, 1)) * WIDE + thin_sd * rng.normal(size=(n, 1)) * THIN
                + centre)

    if covariance_type == "full":
        X = cluster(2000, np.zeros(2))
        means = distance * WIDE[None, :]  # (1, 2)
        covariances = np.eye(2)[None, :, :]  # (1, 2, 2)
    else:
        centres = np.array([-distance, distance])[:, None] * np.ones(2)  # (2, 2)
        X = np.vstack([cluster(1000, centres[0]), cluster(1000, centres[1])])
        means = centres + 0.5 * THIN
        covariances = np.eye(2)
    weights = np.full(len(means), 1 / len(means))
    precisions_chol = gmm.precisions_cholesky_from_covariances(covariances, covariance_type)
    return tuple(a.astype(dtype) for a in (X, weights, means, precisions_chol))


def two_pass_covariances(X, weights, means, covariances, covariance_type):
    """Eqs. 5 and 7 in float64: SciPy's densities, then the scatter of x_n - mu_new."""
    X, weights, means = (np.asarray(a, dtype=np.float64) for a in (X, weights, means))
    covariances = np.asarray(covariances, dtype=np.float64)
    log_joint = np.stack([
        multivariate_normal(means[k], covariances if covariance_type == "tied"
                            else covariances[k]).logpdf(X) + np.log(weights[k])
        for k in range(len(means))], axis=1)  # (N, K)
    resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))  # (N, K)
    counts = resp.sum(axis=0)  # (K,)
    new_means = resp.T @ X / counts[:, None]  # (K, N) @ (N, d)
    scatters = np.stack([(resp[:, k, None] * (X - new_means[k])).T @ (X - new_means[k])
                         for k in range(len(means))])  # (K, d, d)
    if covariance_type == "tied":
        return scatters.sum(axis=0) / counts.sum()  # (d, d)
    return scatters / counts[:, None, None]  # (K, d, d)


def worst_relative_error(got, expected):
    """max over directions u of |u^T G u / u^T E u - 1|: the eigenvalues of E^{-1/2} G E^{-1/2}."""
    got, expected = (np.asarray(a, dtype=np.float64).reshape(-1, 2, 2) for a in (got, expected))
    worst = 0.0
    for g, e in zip(got, expected):
        root_inverse = np.linalg.inv(np.linalg.cholesky(e))  # L^{-1}, E = L L^T
        ratio = root_inverse @ g @ root_inverse.T  # (d, d)
        worst = max(worst, np.max(np.abs(np.linalg.eigvalsh((ratio + ratio.T) / 2) - 1)))
    return worst


@pytest.mark.parametrize("dtype, distance, thin_sd, rtol", CASES)
@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_blocked_step_keeps_a_thin_oblique_variance(rng, covariance_type, dtype, distance,
                                                    thin_sd, rtol):
    X, weights, means, precisions_chol = thin_oblique_clusters(
        rng, covariance_type, distance, thin_sd, dtype)
    covariances = gmm.covariances_from_precisions_cholesky(precisions_chol, covariance_type)
    expected = two_pass_covariances(X, weights, means, covariances, covariance_type)
    got = fast.em_step_blocked(X, weights, means, precisions_chol, covariance_type,
                              reg_covar=0.0)[2]
    assert got.dtype == dtype
    assert worst_relative_error(got, expected) < rtol
    assert_allclose(THIN @ np.asarray(got, np.float64).reshape(-1, 2, 2)[0] @ THIN,
                    thin_sd**2, rtol=0.2)  # the data's own thin variance, to sampling error


@pytest.mark.parametrize("dtype, distance, thin_sd, rtol", CASES)
@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_fit_keeps_a_thin_oblique_variance(rng, covariance_type, dtype, distance, thin_sd,
                                           rtol):
    # The fast engine's first step in the working dtype against the reference engine in
    # float64 on the same numbers, from the same far-away start.
    X, weights, means, precisions_chol = thin_oblique_clusters(
        rng, covariance_type, distance, thin_sd, dtype)
    precisions = gmm.precisions_from_cholesky(precisions_chol, covariance_type)
    fits = {}
    for algorithm, data_type in (("fast", dtype), ("reference", np.float64)):
        mixture = gmm.GaussianMixture(
            len(means), covariance_type=covariance_type, reg_covar=0.0, max_iter=1,
            weights_init=weights.astype(data_type), means_init=means.astype(data_type),
            precisions_init=precisions.astype(data_type), algorithm=algorithm)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # one step on purpose
            fits[algorithm] = mixture.fit(X.astype(data_type))
    assert fits["fast"].covariances_.dtype == dtype
    assert worst_relative_error(fits["fast"].covariances_,
                                fits["reference"].covariances_) < rtol
