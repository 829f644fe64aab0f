"""The Gaussian mixture on the GPU: every gmm function and the estimator, NumPy vs CuPy.

GPU tests (``@pytest.mark.gpu``) compare CuPy results with the NumPy ones: float64 to
``rtol=1e-10`` (only summation order differs), float32 to ``rtol=1e-4, atol=1e-5``, both for
single functions and for a 10-iteration float32 fit against the float64 NumPy fit (on the CPU
a float32 fit of these data stays within a tenth of that tolerance of the float64 one).

The CPU tests run :class:`GaussianMixtureGPU` on ``array_api_strict`` arrays: the same code
path as on CuPy (device-side checks, the parent's EM loop on ``xp`` calls) with a namespace
that refuses NumPy-only calls. They are a CPU stand-in, not a substitute for the GPU tests.
"""

import warnings

import array_api_strict as xps
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from em_tutorial import gmm
from em_tutorial.gmm import fast
from em_tutorial.gpu import GaussianMixtureGPU

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.fixture
def blobs(rng):
    """Three well-separated Gaussian clusters in d=3 (unambiguous fits), shape (600, 3)."""
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0]])
    scales = np.array([1.0, 0.5, 1.5])
    labels = rng.integers(0, 3, size=600)
    return centres[labels] + scales[labels, None] * rng.standard_normal((600, 3))


def _fit(cls, X, covariance_type, **kwargs):
    settings = dict(n_components=3, covariance_type=covariance_type, random_state=0,
                    init_params="random_from_data", max_iter=10, tol=0.0)
    settings.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0: exactly max_iter steps
        return cls(**settings).fit(X)


FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


# --- CPU: the GPU estimator's code path on a strict array-API namespace --------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("init_params", ["random_from_data", "kmeans"])
def test_gpu_estimator_path_on_strict_arrays_matches_numpy(blobs, covariance_type, init_params):
    expected = _fit(gmm.GaussianMixture, blobs, covariance_type, init_params=init_params)
    X = xps.asarray(blobs)
    got = _fit(GaussianMixtureGPU, X, covariance_type, init_params=init_params)
    for name in FITTED:
        value = getattr(got, name)
        assert type(value).__module__.startswith("array_api_strict"), (name, type(value))
        np.testing.assert_allclose(np.asarray(value), getattr(expected, name), rtol=1e-12,
                                   atol=1e-12, err_msg=name)
    assert got.n_iter_ == expected.n_iter_ == 10
    # the same fitted attributes as the parent's
    fitted_names = {name for name in vars(expected) if name.endswith("_")}
    assert {name for name in vars(got) if name.endswith("_")} == fitted_names
    assert got.converged_ == expected.converged_
    assert got.lower_bound_ == pytest.approx(expected.lower_bound_, rel=1e-12)
    np.testing.assert_allclose(got.lower_bounds_, expected.lower_bounds_, rtol=1e-12)
    for method in ("predict_proba", "score_samples", "reconstruct"):
        result = getattr(got, method)(X)
        assert type(result).__module__.startswith("array_api_strict"), (method, type(result))
        np.testing.assert_allclose(np.asarray(result), getattr(expected, method)(blobs),
                                   rtol=1e-10, atol=1e-12, err_msg=method)
    np.testing.assert_array_equal(got.predict(X), expected.predict(blobs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        np.testing.assert_array_equal(got.fit_predict(X), expected.fit_predict(blobs))


def test_gpu_estimator_path_with_initial_parameters_on_strict_arrays(blobs, rng):
    # *_init arrays are host (NumPy) arrays, checked by the parent, then moved to X's device
    start = dict(weights_init=np.full(3, 1 / 3), means_init=blobs[rng.choice(600, 3)],
                 precisions_init=np.tile(np.eye(3), (3, 1, 1)))
    expected = _fit(gmm.GaussianMixture, blobs, "full", **start)
    got = _fit(GaussianMixtureGPU, xps.asarray(blobs), "full", **start)
    for name in FITTED:
        np.testing.assert_allclose(np.asarray(getattr(got, name)), getattr(expected, name),
                                   rtol=1e-12, atol=1e-12, err_msg=name)


def test_gpu_estimator_checks_its_input_on_the_device(blobs):
    bad = blobs.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixtureGPU(3).fit(xps.asarray(bad))
    with pytest.raises(ValueError, match="2-D"):
        GaussianMixtureGPU(3).fit(xps.asarray(blobs[:, 0]))
    with pytest.raises(ValueError, match="fewer samples than components"):
        GaussianMixtureGPU(5).fit(xps.asarray(blobs[:4]))
    fitted = _fit(GaussianMixtureGPU, xps.asarray(blobs), "diag")
    with pytest.raises(ValueError, match="features"):
        fitted.predict(xps.asarray(blobs[:, :2]))


def test_gpu_estimator_without_a_gpu_refuses_host_data_clearly(blobs, monkeypatch):
    from em_tutorial import backend

    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    with pytest.raises(RuntimeError, match="no GPU"):
        GaussianMixtureGPU(3).fit(blobs)


# --- GPU: every function, NumPy vs CuPy ----------------------------------------------------------


def _gpu(*arrays):
    import cupy

    return tuple(cupy.asarray(a) for a in arrays)


def _close(gpu_result, numpy_result, dtype):
    import cupy

    assert isinstance(gpu_result, cupy.ndarray), type(gpu_result)
    assert gpu_result.dtype == np.dtype(dtype)
    np.testing.assert_allclose(gpu_result.get(), numpy_result, **TOL[dtype])


def _parameters(X, covariance_type, dtype):
    """Means, covariances and precision factors of a 3-component fit of X, in ``dtype``."""
    fitted = _fit(gmm.GaussianMixture, X, covariance_type)
    return tuple(np.asarray(getattr(fitted, name), dtype=dtype)
                 for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_every_gmm_function_matches_numpy(blobs, dtype, covariance_type):
    X = blobs.astype(dtype)
    weights, means, covariances, p_chol = _parameters(blobs, covariance_type, dtype)
    X_d, w_d, m_d, c_d, p_d = _gpu(X, weights, means, covariances, p_chol)
    ct = covariance_type
    for function in (gmm.log_gaussian_density, fast.log_gaussian_density_blocked):
        _close(function(X_d, m_d, p_d, ct), function(X, means, p_chol, ct), dtype)
    for function in (gmm.e_step, gmm.log_likelihood):
        _close(function(X_d, m_d, p_d, ct, w_d), function(X, means, p_chol, ct, weights), dtype)
        _close(function(X_d, m_d, p_d, ct), function(X, means, p_chol, ct), dtype)
    for got, expected in zip(gmm.log_e_step(X_d, m_d, p_d, ct, w_d),
                             gmm.log_e_step(X, means, p_chol, ct, weights)):
        _close(got, expected, dtype)
    resp = gmm.e_step(X, means, p_chol, ct, weights)
    (resp_d,) = _gpu(resp)
    _close(gmm.logsumexp(X_d, axis=1), gmm.logsumexp(X, axis=1), dtype)
    for got, expected in zip(gmm.log_softmax(X_d, axis=1), gmm.log_softmax(X, axis=1)):
        _close(got, expected, dtype)
    for function in (gmm.em_step, fast.em_step_blocked):
        for seed_form in (False, True):
            got = function(X_d, w_d, m_d, p_d, ct, seed_form=seed_form)
            expected = function(X, weights, means, p_chol, ct, seed_form=seed_form)
            for g, e in zip(got, expected):
                _close(g, e, dtype)
    for function in (gmm.m_step, fast.m_step_blocked):
        for got, expected in zip(function(X_d, resp_d, ct), function(X, resp, ct)):
            _close(got, expected, dtype)
        seed_form = function(X_d, resp_d, ct, covariance_means=m_d)
        for got, expected in zip(seed_form, function(X, resp, ct, covariance_means=means)):
            _close(got, expected, dtype)
    _close(gmm.reconstruct(resp_d, m_d), gmm.reconstruct(resp, means), dtype)
    _close(gmm.precisions_cholesky_from_covariances(c_d, ct),
           gmm.precisions_cholesky_from_covariances(covariances, ct), dtype)
    precisions = gmm.precisions_from_cholesky(p_chol, ct)
    _close(gmm.precisions_from_cholesky(p_d, ct), precisions, dtype)
    (prec_d,) = _gpu(precisions)
    _close(gmm.precisions_cholesky_from_precisions(prec_d, ct),
           gmm.precisions_cholesky_from_precisions(precisions, ct), dtype)
    _close(gmm.covariances_from_precisions_cholesky(p_d, ct),
           gmm.covariances_from_precisions_cholesky(p_chol, ct), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("init_params", ["random_from_data", "kmeans"])
def test_estimator_on_cupy_float64_matches_numpy(blobs, covariance_type, init_params):
    import cupy

    expected = _fit(gmm.GaussianMixture, blobs, covariance_type, init_params=init_params)
    (X_d,) = _gpu(blobs)
    got = _fit(GaussianMixtureGPU, X_d, covariance_type, init_params=init_params)
    for name in FITTED:
        _close(getattr(got, name), getattr(expected, name), np.float64)
    np.testing.assert_allclose(got.lower_bounds_, expected.lower_bounds_, rtol=1e-10)
    for method in ("predict_proba", "score_samples", "reconstruct"):
        _close(getattr(got, method)(X_d), getattr(expected, method)(blobs), np.float64)
    assert isinstance(got.means_, cupy.ndarray)
    np.testing.assert_array_equal(got.predict(X_d).get(), expected.predict(blobs))
    assert got.score(X_d) == pytest.approx(expected.score(blobs), rel=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_estimator_float32_on_the_gpu_by_default(blobs, covariance_type):
    import cupy

    expected = _fit(gmm.GaussianMixture, blobs, covariance_type)
    got = _fit(GaussianMixtureGPU, blobs, covariance_type)  # host data: moved as float32
    for name in ("weights_", "means_", "covariances_"):
        value = getattr(got, name)
        assert isinstance(value, cupy.ndarray) and value.dtype == np.float32, name
        np.testing.assert_allclose(value.get(), getattr(expected, name), **TOL[np.float32],
                                   err_msg=name)


@pytest.mark.gpu
def test_mixed_numpy_and_cupy_is_a_type_error(blobs):
    weights, means, _, p_chol = _parameters(blobs, "full", np.float64)
    (X_d,) = _gpu(blobs)
    with pytest.raises(TypeError, match="different libraries"):
        gmm.e_step(X_d, means, p_chol, "full")
    fitted = _fit(GaussianMixtureGPU, X_d, "full")
    with pytest.raises(TypeError, match="different libraries"):
        gmm.e_step(blobs, fitted.means_, fitted.precisions_cholesky_, "full")


@pytest.mark.gpu
def test_collapsed_component_is_reported_on_the_gpu(rng):
    # 3 components, but every point on one of two locations: a covariance collapses
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 50, axis=0)
    (X_d,) = _gpu(X)
    with pytest.raises(ValueError, match="collapsed"):
        _fit(GaussianMixtureGPU, X_d, "full", reg_covar=0.0)
