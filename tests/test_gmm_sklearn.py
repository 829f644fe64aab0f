"""em_tutorial.gmm.GaussianMixture against sklearn.mixture.GaussianMixture: the same numbers
after every EM iteration from the same start, the same fits from the same random_state, and
scikit-learn's own estimator checks."""

import warnings

import numpy as np
import pytest
import sklearn.mixture
from numpy.testing import assert_allclose
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from em_tutorial.gmm import GaussianMixture

TYPES = ["full", "tied", "diag", "spherical"]
# Per dtype: (rtol for weights, means and the log-likelihood; rtol, atol for covariances and
# precisions). float64 is held to 1e-7; float32 uses scikit-learn's own tolerances from its
# array-API GaussianMixture test.
TOLERANCES = {np.float64: (1e-7, 1e-7, 0.0), np.float32: (1e-4, 1e-3, 5e-4)}
N_ITERATIONS = 6


def blobs(rng, n_samples=240, n_features=3, n_components=3):
    centres = rng.normal(scale=3.0, size=(n_components, n_features))
    labels = rng.integers(n_components, size=n_samples)
    return centres[labels] + rng.normal(size=(n_samples, n_features))


def starting_point(rng, X, covariance_type, n_components=3):
    n_features = X.shape[1]
    precisions = {
        "full": np.tile(np.eye(n_features), (n_components, 1, 1)) * 0.5,
        "tied": np.eye(n_features) * 0.5,
        "diag": np.full((n_components, n_features), 0.5),
        "spherical": np.full(n_components, 0.5),
    }[covariance_type]
    return dict(
        weights_init=np.full(n_components, 1.0 / n_components),
        means_init=X[rng.choice(len(X), n_components, replace=False)].astype(np.float64),
        precisions_init=precisions,
    )


def fit_both(X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = GaussianMixture(**params).fit(X)
        theirs = sklearn.mixture.GaussianMixture(**params).fit(X)
    return ours, theirs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_every_iteration_matches_sklearn(rng, covariance_type, dtype):
    X = blobs(rng).astype(dtype)
    # Initial parameters in X's dtype, so that scikit-learn keeps float32 throughout.
    start = {k: v.astype(dtype) for k, v in starting_point(rng, X, covariance_type).items()}
    rtol, rtol_cov, atol_cov = TOLERANCES[dtype]
    for max_iter in range(1, N_ITERATIONS + 1):
        ours, theirs = fit_both(
            X, n_components=3, covariance_type=covariance_type, tol=0.0, max_iter=max_iter,
            **start,
        )
        assert ours.n_iter_ == theirs.n_iter_ == max_iter
        assert ours.means_.dtype == theirs.means_.dtype == dtype
        assert_allclose(ours.weights_, theirs.weights_, rtol=rtol)
        assert_allclose(ours.means_, theirs.means_, rtol=rtol, atol=rtol * np.abs(X).max())
        for name in ("covariances_", "precisions_cholesky_", "precisions_"):
            assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=rtol_cov,
                            atol=atol_cov, err_msg=f"{name} after {max_iter} iterations")
        assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=rtol)
    # ... and the fitted models answer the same.
    assert_allclose(ours.score_samples(X), theirs.score_samples(X), rtol=rtol_cov)
    assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=rtol_cov,
                    atol=atol_cov + 1e-12)
    assert_allclose(ours.bic(X), theirs.bic(X), rtol=rtol)
    assert_allclose(ours.aic(X), theirs.aic(X), rtol=rtol)


# scikit-learn's tied M-step uses X^T X over all samples, which assumes every row of the
# responsibilities sums to 1. The one-hot starts of "k-means++" and "random_from_data" give
# most rows all zeros, so there it differs from eq. 7 (ours follows eq. 7): compare only the
# starts where both agree with the equation.
SAME_START = [
    (covariance_type, init_params)
    for covariance_type in TYPES
    for init_params in ("kmeans", "k-means++", "random", "random_from_data")
    if not (covariance_type == "tied" and init_params in ("k-means++", "random_from_data"))
]


@pytest.mark.parametrize("covariance_type, init_params", SAME_START)
def test_same_random_state_gives_same_fit(rng, covariance_type, init_params):
    X = blobs(rng, n_samples=150)
    ours, theirs = fit_both(X, n_components=3, covariance_type=covariance_type,
                            init_params=init_params, n_init=2, random_state=0)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.converged_ == theirs.converged_
    assert_allclose(ours.means_, theirs.means_, rtol=1e-7, atol=1e-9)
    assert_allclose(ours.covariances_, theirs.covariances_, rtol=1e-7, atol=1e-9)
    assert_allclose(ours.lower_bound_, theirs.lower_bound_, rtol=1e-7)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    sample_ours, labels_ours = ours.sample(20)
    sample_theirs, labels_theirs = theirs.sample(20)
    assert_allclose(sample_ours, sample_theirs, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(labels_ours, labels_theirs)


def test_warm_start_continues_where_it_stopped(rng):
    X = blobs(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        stepwise = GaussianMixture(3, warm_start=True, max_iter=1, tol=0.0, random_state=0)
        for _ in range(4):
            stepwise.fit(X)
        at_once = GaussianMixture(3, max_iter=4, tol=0.0, random_state=0).fit(X)
    assert_allclose(stepwise.means_, at_once.means_, rtol=1e-10)
    assert_allclose(stepwise.lower_bound_, at_once.lower_bounds_[-1], rtol=1e-12)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_reconstruct_is_eq_8(rng, covariance_type):
    # x~_n = sum_k z_nk mu_k, by hand in float64 from the fitted parameters, with z_nk from
    # SciPy's densities: nothing of the estimator's own E-step. (Reconstructing from z_nk
    # that leave out pi_k, or from the model's own predict_proba, fails here.)
    X = blobs(rng)
    model = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)
    covariances = {
        "full": lambda k: model.covariances_[k],
        "tied": lambda k: model.covariances_,
        "diag": lambda k: np.diag(model.covariances_[k]),
        "spherical": lambda k: model.covariances_[k] * np.eye(X.shape[1]),
    }[covariance_type]
    log_joint = np.stack([multivariate_normal(model.means_[k], covariances(k)).logpdf(X)
                          + np.log(model.weights_[k]) for k in range(3)], axis=1)  # (N, K)
    resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))  # (N, K)
    expected = np.array([sum(resp[n, k] * model.means_[k] for k in range(3))
                         for n in range(len(X))])  # (N, d)
    got = model.reconstruct(X)
    assert got.shape == X.shape
    # The data's scale: x~_n lies among the means, a few sd of X from its centre.
    assert_allclose(got, expected, rtol=0, atol=1e-9 * X.std())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fit_predict_equals_fit_then_predict(rng):
    X = blobs(rng)
    labels = GaussianMixture(3, random_state=1, max_iter=2).fit_predict(X)
    np.testing.assert_array_equal(
        labels, GaussianMixture(3, random_state=1, max_iter=2).fit(X).predict(X)
    )


@parametrize_with_checks([GaussianMixture(), GaussianMixture(2, covariance_type="diag")])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
