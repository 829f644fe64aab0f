"""Float32 variances stay positive and accurate: centre before squaring.

The GPU stage runs in float32. The one-pass formula Var = E[x^2] - mu^2 loses every digit when
the mean is large against the spread (scikit-learn issue 30382): x^2 ~ 1e8 here, where float32
steps by 8, while the variance is ~1. em_tutorial.gmm forms the differences x_n - mu_k first
and squares those. Data: 2000 points in d=4, mean 1e4, standard deviation 1, stored in
float32; the reference is the exact two-pass variance of those same float32 values in float64.

Tolerance: relative error below 5e-3 of the variance (float32 means carry an error of
~1e4 * 1e-7 * sqrt(n) relative to a spread of 1; we measure ~5e-4). The naive formula is off
by a factor of hundreds and gives negative variances on the same data.

The same pitfall in another form: a one-pass EM step that centres the scatter on the *old*
means and corrects it afterwards, ``S_new = S_old - N_k (mu_new - mu_old)(mu_new - mu_old)^T``,
subtracts two large numbers whenever the means move far in one iteration (early iterations,
a poor ``means_init``). The last tests move the means by 1000 standard deviations.
"""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from em_tutorial.gmm import (
    GaussianMixture,
    em_step,
    m_step,
    precisions_cholesky_from_covariances,
)
from em_tutorial.gmm.fast import em_step_blocked, m_step_blocked

CENTRE, SPREAD, N, D, K = 1e4, 1.0, 2000, 4, 3
RTOL = 5e-3


@pytest.fixture
def large_mean_data(rng):
    X = (CENTRE + SPREAD * rng.standard_normal((N, D))).astype(np.float32)
    logits = rng.standard_normal((N, K))
    resp = np.exp(logits) / np.sum(np.exp(logits), axis=1, keepdims=True)
    return X, resp.astype(np.float32)


def _reference_variances(X, resp):
    """Two-pass weighted variances of the float32 data, in float64: (K, D)."""
    X, resp = X.astype(np.float64), resp.astype(np.float64)
    counts = resp.sum(axis=0)
    means = resp.T @ X / counts[:, None]
    return np.stack([resp[:, k] @ (X - means[k]) ** 2 / counts[k] for k in range(K)])


def _naive_variances_float32(X, resp):
    """Var = E[x^2] - mu^2, all in float32: what the package must not do."""
    counts = resp.sum(axis=0)
    means = resp.T @ X / counts[:, None]
    return (resp.T @ (X * X)) / counts[:, None] - means**2


def _as(backend, *arrays):
    if backend == "numpy":
        return arrays
    import cupy

    return tuple(cupy.asarray(a) for a in arrays)


BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("step", [m_step, m_step_blocked], ids=["m_step", "m_step_blocked"])
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_float32_variances_are_positive_and_accurate(
    large_mean_data, backend, step, covariance_type
):
    from em_tutorial.backend import to_numpy

    X, resp = large_mean_data
    reference = _reference_variances(X, resp)
    _, _, covariances = step(*_as(backend, X, resp), covariance_type, reg_covar=0.0)
    covariances = to_numpy(covariances)
    assert covariances.dtype == np.float32
    if covariance_type == "full":
        assert np.linalg.eigvalsh(covariances.astype(np.float64)).min() > 0
        variances = np.diagonal(covariances, axis1=1, axis2=2)
    else:
        variances = covariances
    assert variances.min() > 0
    np.testing.assert_allclose(variances, reference, rtol=RTOL)


def test_the_naive_formula_fails_on_the_same_data(large_mean_data):
    X, resp = large_mean_data
    reference = _reference_variances(X, resp)
    naive = _naive_variances_float32(X, resp)
    assert naive.dtype == np.float32
    assert naive.min() < 0, "E[x^2] - mu^2 should produce negative variances here"
    assert np.max(np.abs(naive - reference) / reference) > 100 * RTOL


# --- a whole EM step, when the means move far -----------------------------------------------------

SHIFT = 1000.0  # distance, in standard deviations, from the old means to the new ones
def _one_component_problem(rng):
    """X (float32, mean 1e4, sd 1) and the old parameters of a single component far away."""
    X = (CENTRE + SPREAD * rng.standard_normal((N, D))).astype(np.float32)
    old_means = X.astype(np.float64).mean(axis=0, keepdims=True) + SHIFT * SPREAD  # (1, D)
    precisions_chol = precisions_cholesky_from_covariances(
        np.eye(D)[None] * SPREAD**2, "full"
    )  # (1, D, D)
    return X, old_means, precisions_chol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("step", [em_step, em_step_blocked], ids=["em_step", "em_step_blocked"])
def test_em_step_variances_after_a_large_mean_shift(rng, backend, step):
    from em_tutorial.backend import to_numpy

    X, old_means, precisions_chol = _one_component_problem(rng)
    reference = X.astype(np.float64).var(axis=0)  # one component: z_n1 = 1 for every n
    arrays = (X, np.ones(1, dtype=np.float32), old_means.astype(np.float32),
              precisions_chol.astype(np.float32))
    _, _, covariances, _ = step(*_as(backend, *arrays), "full", reg_covar=0.0)
    variances = np.diagonal(to_numpy(covariances)[0])
    assert variances.min() > 0
    np.testing.assert_allclose(variances, reference, rtol=RTOL)


def test_estimator_float32_variances_from_a_far_means_init(rng):
    X, old_means, _ = _one_component_problem(rng)
    mixture = GaussianMixture(1, means_init=old_means, max_iter=1, tol=0.0, reg_covar=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # one iteration: not converged
        mixture.fit(X)
    variances = np.diagonal(mixture.covariances_[0])
    assert variances.min() > 0
    np.testing.assert_allclose(variances, X.astype(np.float64).var(axis=0), rtol=RTOL)
