"""Numerics of the mixture at the edges: tight clusters far from the origin, covariances that
shrink a lot in one step, and the two engines (fast and reference) giving the same numbers."""

import warnings

import array_api_strict
import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.exceptions import ConvergenceWarning

from em_tutorial import gmm
from em_tutorial.gmm import fast
from em_tutorial.gmm import GaussianMixture
from em_tutorial.gmm.fast import _diagonal as fast_diagonal

TYPES = ["full", "tied", "diag", "spherical"]


def tight_clusters_far_away(dtype):
    """300 points, three clusters of std 0.01 at 1000 - 0.5, 1000 and 1000 + 0.5."""
    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 0.01, size=(300, 2)) + 1000.0
    X[100:200] += 0.5
    X[200:] -= 0.5
    return X.astype(dtype)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_tight_float32_clusters_far_from_the_origin_fit(covariance_type):
    # Variances of 1e-4 around 1000 are ~100 float32 units in the last place wide: a real
    # spread, not rounding noise (an earlier floor of (100 eps max|x|)^2 = 1.4e-4 called it
    # a collapse). The float32 fit matches the float64 one.
    params = dict(n_components=3, covariance_type=covariance_type, random_state=0)
    got = GaussianMixture(**params).fit(tight_clusters_far_away(np.float32))
    expected = GaussianMixture(**params).fit(tight_clusters_far_away(np.float64))
    order, expected_order = np.argsort(got.means_[:, 0]), np.argsort(expected.means_[:, 0])
    assert_allclose(got.means_[order], expected.means_[expected_order], rtol=1e-6)
    covariances, expected_covariances = got.covariances_, expected.covariances_
    if covariance_type != "tied":
        covariances, expected_covariances = covariances[order], expected_covariances[expected_order]
    assert_allclose(covariances, expected_covariances, rtol=2e-2, atol=2e-6)
    assert np.all(np.diff(np.sort(got.means_[:, 0])) > 0.4)  # three clusters found


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-3), (np.float64, 1e-9)])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_blocked_step_when_a_covariance_shrinks_a_lot(covariance_type, dtype, rtol):
    # Old variance 0.1, the component's points 0.3 away with variance 2e-6: moving the
    # one-pass scatter to the new mean cancels N 0.09 against N 2e-6, 4.7 digits, more than
    # half of float32's. The step must notice from the new scatter (the old spread sees a
    # harmless shift of one standard deviation) and centre a second pass on the new mean.
    rng = np.random.default_rng(1)
    X = (0.3 + np.sqrt(2e-6) * rng.standard_normal((200, 2))).astype(dtype)
    means = np.zeros((1, 2), dtype=dtype)
    covariances = {"full": np.eye(2)[None] * 0.1, "tied": np.eye(2) * 0.1,
                   "diag": np.full((1, 2), 0.1), "spherical": np.full(1, 0.1)}[covariance_type]
    precisions_chol = gmm.precisions_cholesky_from_covariances(
        covariances.astype(dtype), covariance_type)
    weights = np.ones(1, dtype=dtype)
    inputs = (X, weights, means, precisions_chol)
    expected = gmm.em_step(*(a.astype(np.float64) for a in inputs), covariance_type,
                           reg_covar=0.0)
    got = fast.em_step_blocked(*inputs, covariance_type, reg_covar=0.0)
    assert_allclose(got[2], expected[2], rtol=rtol)  # the covariances, ~2e-6
    for g, e in zip(got, expected):
        assert g.dtype == dtype
        assert_allclose(g, e, rtol=rtol, atol=rtol * np.max(np.abs(e)))


def one_shrinking_component(covariance_type, n_features, dtype):
    """(X, pi, mu, P) where one step shrinks the third component's spread ~1e8-fold."""
    # Two wide clusters keep their spread; the third component's five points lie 1e-4 apart
    # at 8, ~11 from the reference point c: re-centring its scatter cancels ~1e10 against
    # 1e-8, so the step re-centres that component alone (the other two would pass).
    rng = np.random.default_rng(3)
    X = np.vstack([rng.standard_normal((150, n_features)),
                   rng.standard_normal((150, n_features)) - 6.0,
                   8.0 + 1e-4 * rng.standard_normal((5, n_features))])
    means = np.array([0.5, -5.5, 7.5])[:, None] * np.ones(n_features)  # (K, d)
    variances = np.ones((3, n_features)) if covariance_type == "diag" else np.ones(3)
    return tuple(a.astype(dtype) for a in (
        X, np.array([0.45, 0.45, 0.1]), means,
        gmm.precisions_cholesky_from_covariances(variances, covariance_type)))


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-3), (np.float64, 1e-9)])
@pytest.mark.parametrize("n_features", [2, 4])  # K = 3 > d: the E-step again; K <= d: kept
@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_second_pass_for_the_one_component_that_shrinks(monkeypatch, covariance_type,
                                                        n_features, dtype, rtol):
    # The reference is float64 arithmetic on the same inputs.
    inputs = one_shrinking_component(covariance_type, n_features, dtype)
    X = inputs[0]
    recentred = []  # (components, samples) of every second pass
    original = fast_diagonal.recentred_squares

    def spy(X, responsibilities_of, centres, *args):
        recentred.append((centres.shape[0], X.shape[0]))
        return original(X, responsibilities_of, centres, *args)

    monkeypatch.setattr(fast_diagonal, "recentred_squares", spy)
    expected = gmm.em_step(*(a.astype(np.float64) for a in inputs), covariance_type,
                           reg_covar=0.0)
    got = fast.em_step_blocked(*inputs, covariance_type, reg_covar=0.0, block_size=64,
                              n_threads=2)
    # The shrinking component alone; with kept z_nk (K <= d) only the samples it weighs
    # (z_nk > 0: its five points, and in float64 the wide clusters' near side), else all of X.
    [(components, samples)] = recentred
    assert components == 1
    assert 5 <= samples < len(X) if n_features >= 3 else samples == len(X)
    assert_allclose(got[2][2], expected[2][2], rtol=rtol)  # its variances, ~1e-8
    for g, e in zip(got, expected):
        assert g.dtype == dtype
        assert_allclose(g, e, rtol=rtol, atol=rtol * np.max(np.abs(e)))


@pytest.mark.parametrize("n_features", [2, 4])
@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_second_pass_runs_on_array_api_strict(covariance_type, n_features):
    # The second pass's gathers (take, nonzero) in the standard's calls only: the same
    # numbers from array_api_strict arrays as from NumPy's, float64.
    inputs = one_shrinking_component(covariance_type, n_features, np.float64)
    expected = fast.em_step_blocked(*inputs, covariance_type, reg_covar=0.0, block_size=64)
    got = fast.em_step_blocked(*(array_api_strict.asarray(a) for a in inputs), covariance_type,
                              reg_covar=0.0, block_size=64)
    for g, e in zip(got, expected):
        assert type(g).__module__.startswith("array_api_strict")
        assert_allclose(np.from_dlpack(g), e, rtol=1e-12, atol=1e-12 * np.max(np.abs(e)))


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_reference_engine_equals_fast_engine(rng, covariance_type, dtype, rtol, init_params):
    # The same estimator, once through the plain e_step/m_step functions and once through
    # the blocked, threaded engine: the same fit, iteration by iteration. In float64,
    # 20 000 samples: several blocks at the estimator's block sizes, so threads share them.
    # In float32 5000, one block or three: summed in another order, 20 000 float32 samples
    # drift apart by ~4e-4 in eight iterations from a random start.
    n_samples = 20_000 if dtype == np.float64 else 5000
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 1.0, 0.0], [0.0, 6.0, -2.0]])
    X = (centres[rng.integers(3, size=n_samples)]
         + rng.standard_normal((n_samples, 3))).astype(dtype)
    params = dict(n_components=3, covariance_type=covariance_type, max_iter=8, tol=0.0,
                  random_state=0, init_params=init_params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fast_fit = GaussianMixture(**params).fit(X)
        reference = GaussianMixture(algorithm="reference", **params).fit(X)
    assert_allclose(fast_fit.lower_bounds_, reference.lower_bounds_, rtol=rtol)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        got, expected = getattr(fast_fit, name), getattr(reference, name)
        assert got.dtype == expected.dtype == dtype
        assert_allclose(got, expected, rtol=rtol, atol=rtol * np.max(np.abs(expected)),
                        err_msg=name)
    assert_allclose(fast_fit.predict_proba(X), reference.predict_proba(X), atol=rtol)


def test_unknown_algorithm_is_named(rng):
    with pytest.raises(ValueError, match="algorithm must be one of"):
        GaussianMixture(algorithm="quick").fit(rng.normal(size=(10, 2)))


@pytest.mark.parametrize("dtype, rtol, atol_nats", [(np.float32, 1e-3, 2e-2),
                                                    (np.float64, 1e-6, 1e-9)])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_blocked_step_with_narrow_clusters_far_apart(covariance_type, dtype, rtol, atol_nats):
    # Two clusters of spread 0.01, 1000 apart: around the first one, the expanded distances
    # to the second would round off by eps 1e10 (a thousand nats in float32). The fast
    # engine forms them from centred differences there, and its moments from a second pass.
    # What remains is the rounding of whitened coordinates of size |x| |P| = 1e5: ~1e-2
    # nats in float32, and float64 covariances to 1e-15 of the old spread (rtol 1e-6 here).
    rng = np.random.default_rng(2)
    X = (0.01 * rng.standard_normal((200, 2)) + np.repeat([[0.0, 0.0], [1e3, 1e3]], 100, axis=0)
         ).astype(dtype)
    resp = np.repeat(np.eye(2), 100, axis=0)  # each cluster its own component, spread 0.01
    weights, means, covariances = gmm.m_step(X.astype(np.float64), resp, covariance_type)
    precisions_chol = gmm.precisions_cholesky_from_covariances(covariances, covariance_type)
    inputs = tuple(a.astype(dtype) for a in (X, weights, means, precisions_chol))
    expected = gmm.em_step(*(a.astype(np.float64) for a in inputs), covariance_type)
    got = fast.em_step_blocked(*inputs, covariance_type)
    for g, e in zip(got, expected):
        assert_allclose(g, e, rtol=rtol, atol=rtol * np.max(np.abs(e)))
    density = fast.log_gaussian_density_blocked(*inputs[:1], *inputs[2:], covariance_type)
    expected_density = gmm.log_gaussian_density(*(a.astype(np.float64) for a in inputs[:1]),
                                                *(a.astype(np.float64) for a in inputs[2:]),
                                                covariance_type)
    assert_allclose(density, expected_density, rtol=rtol, atol=atol_nats)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_float32_fit_samples_without_a_semidefiniteness_warning(covariance_type):
    # A float32 covariance can be asymmetric in its last bit; NumPy's positive-semidefinite
    # check (tolerance 1e-8) then warns. sample() symmetrises in float64 before drawing.
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(300, 2)) * [1.0, 5.0] + [[20.0, -30.0]]).astype(np.float32)
    X[150:] += 10.0
    fitted = GaussianMixture(n_components=2, covariance_type=covariance_type,
                             random_state=0).fit(X)
    covariances = fitted.covariances_.reshape(-1, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        samples, labels = fitted.sample(2000)
    assert samples.dtype == np.float64 and labels.shape == (2000,)
    for k in range(2):  # the draws follow the fitted covariance (a few % at 1000 points)
        expected = covariances[k if covariance_type == "full" else 0]
        assert_allclose(np.cov(samples[labels == k].T), expected, rtol=0.2, atol=0.3)


def test_numpy_fit_runs_blas_single_threaded_and_restores_it(monkeypatch, rng):
    # The engine's threads each take blocks; NumPy's BLAS threading on top would
    # oversubscribe the cores. Inside every EM step it has one thread; after the fit, what
    # it had before.
    from threadpoolctl import threadpool_info

    from em_tutorial.gmm import estimator

    def numpy_blas_threads():
        return [lib["num_threads"] for lib in threadpool_info()
                if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]

    before = numpy_blas_threads()
    if not before or max(before) == 1:
        pytest.skip("NumPy's BLAS is not its bundled one, or runs one thread already: a "
                    "limit could not be told apart")
    during = []
    original = estimator.one_em_step

    def spy(*args):
        during.append(numpy_blas_threads())
        return original(*args)

    monkeypatch.setattr(estimator, "one_em_step", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixture(n_components=2, max_iter=3, tol=0.0, random_state=0).fit(
            rng.standard_normal((500, 3)))
    assert during == [[1] * len(before)] * 3
    assert numpy_blas_threads() == before
