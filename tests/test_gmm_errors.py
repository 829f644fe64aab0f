"""Bad input gets a ValueError that names the problem."""

import array_api_strict
import numpy as np
import pytest

from em_tutorial import gmm
from em_tutorial.gmm import GaussianMixture


@pytest.fixture
def X(rng):
    return rng.normal(size=(30, 2))


@pytest.mark.parametrize(
    "value, message", [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")]
)
def test_non_finite_data(X, value, message):
    X[3, 1] = value
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2).fit(X)


def test_wrong_dimensionality(X):
    with pytest.raises(ValueError, match="Expected 2D array"):
        GaussianMixture(2).fit(X[:, 0])
    with pytest.raises(ValueError, match="dim"):
        GaussianMixture(2).fit(X[None])
    model = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="features"):
        model.predict(np.ones((4, 3)))


def test_fewer_samples_than_components(X):
    with pytest.raises(ValueError, match=r"n_samples=3 < n_components=4"):
        GaussianMixture(4).fit(X[:3])


def test_collapsed_component_is_named_with_the_fix():
    # Component 1 starts on five copies of one point, so far from the rest that their
    # responsibilities underflow to exactly 0: its covariance is 0 + reg_covar.
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(40, 2)), np.full((5, 2), 100.0)])
    precisions = {"full": np.stack([np.eye(2)] * 2), "diag": np.ones((2, 2)),
                  "spherical": np.ones(2)}
    for covariance_type in ("full", "diag", "spherical"):
        start = dict(weights_init=[0.9, 0.1], means_init=[[0.0, 0.0], [100.0, 100.0]],
                     precisions_init=precisions[covariance_type])
        model = GaussianMixture(2, covariance_type=covariance_type, reg_covar=0.0, **start)
        expected = r"component 1 collapsed.*Increase reg_covar \(reg_covar is now 0\)"
        with pytest.raises(ValueError, match=expected):
            model.fit(X)
        # The advice works.
        GaussianMixture(2, covariance_type=covariance_type, reg_covar=1e-3, **start).fit(X)


@pytest.mark.filterwarnings(
    "ignore:Number of distinct clusters:sklearn.exceptions.ConvergenceWarning"
)
def test_collapsed_tied_covariance_is_named(rng):
    X = np.repeat(rng.normal(size=(1, 2)), 10, axis=0)
    with pytest.raises(ValueError, match="the tied covariance .* collapsed"):
        GaussianMixture(2, covariance_type="tied", reg_covar=0.0).fit(X)


@pytest.mark.parametrize("large", [1e19, 1e30])
def test_float32_overflow_is_a_clear_error(rng, large):
    # float32 data so large that the squared distances overflow: named as such, with the two
    # fixes, before any NaN reaches a factorisation.
    X = rng.standard_normal((200, 2)).astype(np.float32)
    X[:100] *= np.float32(large)
    expected = r"overflow float32 .* pass float64 data or rescale it"
    with pytest.raises(ValueError, match=expected), np.errstate(all="ignore"):
        GaussianMixture(2).fit(X)
    with pytest.raises(ValueError, match=expected), np.errstate(all="ignore"):
        GaussianMixture(2, means_init=[[0, 0], [1, 1]],
                        precisions_init=np.stack([np.eye(2)] * 2)).fit(X)
    GaussianMixture(2, random_state=0).fit(X.astype(np.float64))  # the first fix works


def test_collapse_in_the_functions_names_the_component():
    covariances = np.stack([np.eye(2), np.zeros((2, 2)), np.eye(2)])
    with pytest.raises(ValueError, match="component 1 collapsed"):
        gmm.precisions_cholesky_from_covariances(covariances, "full")
    with pytest.raises(ValueError, match="components 0, 2 collapsed"):
        gmm.precisions_cholesky_from_covariances(np.array([0.0, 1.0, -1.0]), "spherical")


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(weights_init=[0.5, 0.5, 0.0]),
         r"'weights' should have the shape of \(2,\), but got \(3,\) \(from weights_init\)"),
        (dict(weights_init=[0.7, 0.7]), "weights_init must sum to 1"),
        (dict(weights_init=[1.5, -0.5]),
         r"in the range \[0, 1\], but weights_init has min -0.5 and max 1.5"),
        (dict(weights_init=[np.nan, 0.5]), "weights_init contains NaN"),
        (dict(means_init=np.zeros((2, 3))),
         r"'means' should have the shape of \(2, 2\), but got \(2, 3\) \(from means_init"),
        (dict(means_init=[["a", "b"], ["c", "d"]]), "means_init must be numeric"),
        (dict(precisions_init=np.ones((2, 2))),
         r"'full precision' should have the shape of \(2, 2, 2\).*from precisions_init"),
        (dict(precisions_init=np.stack([np.eye(2), [[1.0, 2.0], [0.0, 1.0]]])),
         "precision 1 is not symmetric"),
        (dict(precisions_init=np.stack([np.eye(2), -np.eye(2)])),
         "precision 1 is not positive definite"),
        (dict(covariance_type="diag", precisions_init=[[1.0, 1.0], [1.0, 0.0]]),
         "'diag precision' should be positive: precisions_init has 1 entries <= 0"),
        (dict(covariance_type="tied", precisions_init=-np.eye(2)),
         "the tied precision is not positive definite"),
    ],
)
def test_malformed_initial_parameters(X, params, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2, **params).fit(X)


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(covariance_type="banana"), "covariance_type must be one of"),
        (dict(n_components=0), "n_components must be an int >= 1"),
        (dict(reg_covar=-1.0), "reg_covar must be a number >= 0"),
        (dict(init_params="kmeans--"), "init_params must be one of"),
    ],
)
def test_bad_hyperparameters(X, params, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**params).fit(X)


def test_functions_check_shapes(rng):
    X = rng.normal(size=(5, 2))
    means = np.zeros((3, 2))
    expected = r"precisions_cholesky for covariance_type='full' must have shape \(3, 2, 2\)"
    with pytest.raises(ValueError, match=expected):
        gmm.log_gaussian_density(X, means, np.ones((3, 2)))
    with pytest.raises(ValueError, match="X must be 2-D"):
        gmm.e_step(X[0], means, np.ones(3), "spherical")
    with pytest.raises(ValueError, match=r"means must have shape \(n_components, 2\)"):
        gmm.log_gaussian_density(X, np.zeros((3, 4)), np.ones(3), "spherical")
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        gmm.log_gaussian_density(X, means, np.ones(3), "round")
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
        gmm.e_step(X, means, np.ones(3), "spherical", weights=np.ones(2) / 2)
    resp = np.full((5, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"covariance_means must have shape \(3, 2\)"):
        gmm.m_step(X, resp, covariance_means=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"resp \(n_samples, n_components\)"):
        gmm.m_step(X, resp[:4])
    with pytest.raises(ValueError, match="resp must be"):
        gmm.reconstruct(resp, np.zeros((2, 2)))


def test_device_array_without_array_api_dispatch_says_how_to_enable_it(X):
    # Without dispatch scikit-learn's convention copies X to NumPy, which a GPU array
    # refuses; the error names the environment variable that dispatch needs.
    on_device = array_api_strict.asarray(X, device=array_api_strict.Device("device1"))
    with pytest.raises(TypeError, match="SCIPY_ARRAY_API=1 before SciPy is first imported"):
        GaussianMixture(2).fit(on_device)
    model = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(TypeError, match="array_api_dispatch=True"):
        model.predict(on_device)
