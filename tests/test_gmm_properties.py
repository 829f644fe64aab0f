"""Property-based tests: awkward data (duplicate points, huge and tiny scales, one feature,
float32) fits to a valid mixture, or fails with the collapsed-component ValueError only
where scikit-learn fails too."""

import warnings

import numpy as np
import sklearn.mixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from sklearn.exceptions import ConvergenceWarning

from em_tutorial import gmm
from em_tutorial.gmm import fast
from em_tutorial.gmm import GaussianMixture

TYPES = ["full", "tied", "diag", "spherical"]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fits_clearly_with_sklearn(X, params):
    """Does scikit-learn fit X to covariances well above the rounding noise of X's dtype?

    scikit-learn fits the data standardised in float64 (with reg_covar scaled alike, the
    same model), where its arithmetic is accurate; its smallest variance, back in X's units,
    must exceed the noise of X's dtype: 1000 eps max|Sigma| (accumulated rounding), plus
    (100 eps max|x|)^2 (the points' own rounding). Below that, X's dtype cannot tell the
    covariance from a singular one, and either outcome is allowed.
    """
    X64 = X.astype(np.float64)
    centre, scale = X64.mean(axis=0), X64.std() or 1.0
    scaled = dict(params, reg_covar=1e-6 / scale**2)
    try:
        fitted = sklearn.mixture.GaussianMixture(**scaled).fit((X64 - centre) / scale)
    except ValueError:
        return False
    covariances = np.asarray(fitted.covariances_) * scale**2
    if params["covariance_type"] in ("full", "tied"):
        variances = np.linalg.eigvalsh(covariances.reshape(-1, *covariances.shape[-2:]))
    else:
        variances = covariances
    eps = np.finfo(X.dtype).eps
    noise = 1e3 * eps * np.max(np.abs(covariances)) + (1e2 * eps * np.max(np.abs(X64))) ** 2
    return bool(np.min(variances) > noise)


@st.composite
def awkward_data(draw):
    n_features = draw(st.integers(1, 3))
    n_distinct = draw(st.integers(2, 12))
    n_copies = draw(st.integers(1, 4))  # every point repeated: duplicates
    scale = 10.0 ** draw(st.integers(-8, 8))
    offset = draw(st.sampled_from([0.0, 1.0, -1e3]))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n_distinct, n_features))
    X = (np.repeat(points, n_copies, axis=0) + offset) * scale
    n_components = draw(st.integers(1, min(3, len(X))))
    return X.astype(dtype), n_components, seed


@FAST
@given(data=awkward_data(), covariance_type=st.sampled_from(TYPES),
       init_params=st.sampled_from(["kmeans", "random", "random_from_data", "k-means++"]))
def test_awkward_data_fits_or_says_which_component_collapsed(data, covariance_type, init_params):
    X, n_components, seed = data
    params = dict(n_components=n_components, covariance_type=covariance_type,
                  init_params=init_params, max_iter=20, random_state=seed)
    model = GaussianMixture(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            model.fit(X)
        except ValueError as error:
            assert "collapsed" in str(error) and "reg_covar" in str(error)
            # A collapse is only allowed where scikit-learn cannot fit these data either, or
            # fits them only to covariances at the level of their own rounding noise.
            assert not fits_clearly_with_sklearn(X, params)
            return
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(model, name))), name
        assert getattr(model, name).dtype == X.dtype
    assert_allclose(model.weights_.sum(), 1.0, rtol=1e-5)
    proba = model.predict_proba(X)
    assert np.all(np.isfinite(proba))
    assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-4)
    # Finite, but not necessarily increasing: where reg_covar is as large as the spread of
    # a component (a few points at scale 1e-3), the M-step no longer maximises Q.
    assert np.all(np.isfinite(model.lower_bounds_))
    assert model.reconstruct(X).shape == X.shape


@FAST
@given(seed=st.integers(0, 2**16), covariance_type=st.sampled_from(TYPES),
       log_scale=st.sampled_from([-6, -3, 3, 6]))
def test_fit_is_equivariant_to_scale_and_shift(seed, covariance_type, log_scale):
    # Scaling the data by s (and reg_covar by s^2) scales means by s, covariances by s^2.
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, 2)) + 3.0 * rng.integers(2, size=(40, 1))
    scale, shift = 10.0**log_scale, np.array([5.0, -2.0])
    params = dict(n_components=2, covariance_type=covariance_type, init_params="random",
                  max_iter=10, tol=0.0, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        base = GaussianMixture(reg_covar=1e-4, **params).fit(X)
        moved = GaussianMixture(reg_covar=1e-4 * scale**2, **params).fit(X * scale + shift)
    assert_allclose(moved.means_, base.means_ * scale + shift, rtol=1e-6, atol=1e-6 * scale)
    # Data at |shift| ~ 5 with spread ~scale are rounded at eps * 5 / scale of their spread
    # (1e-9 at scale 1e-6), so a small off-diagonal entry carries that much of the diagonal.
    assert_allclose(moved.covariances_, base.covariances_ * scale**2, rtol=1e-6,
                    atol=1e-7 * scale**2)
    assert_allclose(moved.weights_, base.weights_, rtol=1e-6)


@FAST
@given(n_samples=st.integers(1, 40), n_features=st.integers(1, 4), n_components=st.integers(1, 4),
       block_size=st.integers(1, 50), covariance_type=st.sampled_from(TYPES),
       seed=st.integers(0, 2**16))
def test_blocked_paths_equal_plain_paths(n_samples, n_features, n_components, block_size,
                                         covariance_type, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    resp = rng.dirichlet(np.ones(n_components), size=n_samples)
    _, means, covariances = gmm.m_step(X, resp, covariance_type, reg_covar=0.1)
    precisions_chol = gmm.precisions_cholesky_from_covariances(covariances, covariance_type)
    assert_allclose(
        fast.log_gaussian_density_blocked(X, means, precisions_chol, covariance_type, block_size),
        gmm.log_gaussian_density(X, means, precisions_chol, covariance_type),
        rtol=1e-10, atol=1e-10,
    )
    weights = rng.dirichlet(np.ones(n_components))
    for seed_form in (False, True):
        for blocked, plain in zip(
            fast.em_step_blocked(X, weights, means, precisions_chol, covariance_type, 0.1,
                                seed_form, block_size),
            gmm.em_step(X, weights, means, precisions_chol, covariance_type, 0.1, seed_form),
        ):
            assert_allclose(blocked, plain, rtol=1e-9, atol=1e-12)


@FAST
@given(seed=st.integers(0, 2**16), covariance_type=st.sampled_from(TYPES),
       dtype=st.sampled_from([np.float32, np.float64]), far=st.sampled_from([1.0, 1e3]))
def test_responsibilities_are_a_distribution(seed, covariance_type, dtype, far):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(30, 2)) * far).astype(dtype)
    resp = rng.dirichlet(np.ones(3), size=30).astype(dtype)
    weights, means, covariances = gmm.m_step(rng.normal(size=(30, 2)).astype(dtype), resp,
                                             covariance_type)
    precisions_chol = gmm.precisions_cholesky_from_covariances(covariances, covariance_type)
    z = gmm.e_step(X, means, precisions_chol, covariance_type, weights)
    assert z.dtype == dtype
    assert np.all((z >= 0) & (z <= 1))
    assert_allclose(z.sum(axis=1), 1.0, rtol=1e-5)
