"""The mixture computes the same numbers in NumPy, PyTorch and CuPy: every EM iteration in
float64, all four covariance types, both engines, to 1e-12 (only summation order differs).

The estimator under scikit-learn's array-API dispatch runs in a subprocess, because
SCIPY_ARRAY_API=1 must be set before SciPy is imported. CuPy needs a GPU; without one its
leg is skipped with the reason.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from em_tutorial import gmm
from em_tutorial.gmm import fast
from em_tutorial.backend import gpu_unavailable_reason, to_numpy

TYPES = ["full", "tied", "diag", "spherical"]
N_ITERATIONS = 5
RTOL = 1e-12


def start(covariance_type, seed=0):
    """Data (400, 3) from three clusters, and a start from random responsibilities."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 1.0, 0.0], [0.0, 6.0, -2.0]])
    X = centres[rng.integers(3, size=400)] + rng.standard_normal((400, 3))
    resp = rng.dirichlet(np.ones(3), size=400)
    weights, means, covariances = gmm.m_step(X, resp, covariance_type)
    return X, weights, means, gmm.precisions_cholesky_from_covariances(covariances,
                                                                        covariance_type)


def iterate(step, convert, covariance_type):
    """N_ITERATIONS EM steps from ``start`` in the library ``convert`` moves arrays to;
    every iteration's (weights, means, covariances, mean log-likelihood) as NumPy."""
    X, weights, means, precisions_chol = (convert(a) for a in start(covariance_type))
    history = []
    for _ in range(N_ITERATIONS):
        weights, means, covariances, mean_log_likelihood = step(
            X, weights, means, precisions_chol, covariance_type)
        precisions_chol = gmm.precisions_cholesky_from_covariances(covariances, covariance_type)
        history.append([to_numpy(a) for a in (weights, means, covariances, mean_log_likelihood)])
    return history


def assert_same_history(got, expected):
    for iteration, (g_step, e_step) in enumerate(zip(got, expected)):
        for g, e, name in zip(g_step, e_step, ("weights", "means", "covariances", "ll")):
            assert_allclose(g, e, rtol=RTOL, atol=RTOL * np.max(np.abs(e)),
                            err_msg=f"{name}, iteration {iteration + 1}")


def to_cupy(array):
    import cupy

    return cupy.asarray(array)


@pytest.mark.parametrize("convert", [
    torch.from_numpy, pytest.param(to_cupy, marks=pytest.mark.gpu)], ids=["torch", "cupy"])
@pytest.mark.parametrize("step", [gmm.em_step, fast.em_step_blocked], ids=["plain", "fast"])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_float64_equals_numpy_every_iteration(convert, step, covariance_type):
    expected = iterate(step, np.asarray, covariance_type)
    got = iterate(step, convert, covariance_type)
    assert_same_history(got, expected)


CASES = [("full", "kmeans"), ("tied", "k-means++"), ("diag", "random"),
         ("spherical", "random_from_data")]

ESTIMATOR_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np, sklearn
    from em_tutorial.backend import to_numpy
    from em_tutorial.gmm import GaussianMixture
    library, cases = sys.argv[1], json.loads(sys.argv[2])
    if library == "torch":
        import torch
        to_library = torch.from_numpy
    else:
        import cupy
        to_library = cupy.asarray
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 1.0, 0.0], [0.0, 6.0, -2.0]])
    X = centres[rng.integers(3, size=400)] + rng.standard_normal((400, 3))
    warnings.simplefilter("ignore")
    names = ("weights_", "means_", "covariances_", "precisions_cholesky_")
    results = {}
    for covariance_type, init_params in cases:
        params = dict(n_components=3, covariance_type=covariance_type, max_iter=6, tol=0.0,
                      random_state=0, init_params=init_params)
        reference = GaussianMixture(**params).fit(X)
        with sklearn.config_context(array_api_dispatch=True):
            fitted = GaussianMixture(**params).fit(to_library(X))
            labels = fitted.predict(to_library(X))
            proba = fitted.predict_proba(to_library(X))
        outputs = [getattr(fitted, n) for n in names] + [labels, proba]
        results[covariance_type] = {
            "libraries": sorted({type(a).__module__.split(".")[0] for a in outputs}),
            "max_difference": max(float(np.max(np.abs(to_numpy(getattr(fitted, n))
                                                      - getattr(reference, n)))) for n in names),
            "lower_bounds": [fitted.lower_bounds_, reference.lower_bounds_],
            "labels_equal": bool(np.array_equal(to_numpy(labels), reference.predict(X))),
        }
    print(json.dumps(results))
""")

GPU_REASON = gpu_unavailable_reason()


@pytest.fixture(scope="module", params=[
    "torch",
    pytest.param("cupy", marks=pytest.mark.skipif(
        GPU_REASON is not None, reason=f"the CuPy leg needs a GPU: {GPU_REASON}")),
])
def fits_under_dispatch(request):
    """One subprocess per library, all four cases: {covariance_type: result}."""
    env = dict(os.environ, SCIPY_ARRAY_API="1")
    result = subprocess.run(
        [sys.executable, "-c", ESTIMATOR_SCRIPT, request.param, json.dumps(CASES)],
        env=env, capture_output=True, text=True, check=True)
    return request.param, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("covariance_type", TYPES)
def test_estimator_under_dispatch_stays_in_its_library(fits_under_dispatch, covariance_type):
    # Fitted attributes, labels and probabilities stay in the library of X, and equal the
    # NumPy fit from the same random_state (every initialisation, k-means ones included).
    library, results = fits_under_dispatch
    result = results[covariance_type]
    assert result["libraries"] == [library]
    assert result["max_difference"] < 1e-10
    assert_allclose(*result["lower_bounds"], rtol=RTOL)
    assert result["labels_equal"]
