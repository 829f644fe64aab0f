"""Checks on user input to :class:`GaussianMixture`, each failing with a ValueError that names
the problem. They run once per ``fit`` on the host, never inside the EM loop."""

from __future__ import annotations

import math

import numpy as np
from sklearn.utils import check_array

from em_tutorial.gmm.precision import parameter_shape


def check_n_samples(X, n_components):
    if X.shape[0] < n_components:
        raise ValueError(
            f"fewer samples than components: n_samples={X.shape[0]} < "
            f"n_components={n_components}. Use fewer components or more data."
        )


def check_not_overflowing(shape, dtype, max_abs, reg_covar):
    """Scatter and Mahalanobis distances of X must fit its dtype.

    The scatter sum_n (x_n - mu)^2 reaches ~4 N d max|X|^2; a distance (x - mu)^T Sigma^-1
    (x - mu) reaches ~4 d max|X|^2 / reg_covar, since every variance is at least reg_covar.
    ``shape`` and ``dtype`` (a NumPy dtype) are X's, ``max_abs`` is max |X|, a Python float.
    Raises a ValueError that names the dtype.
    """
    if max_abs == 0:
        return
    # a margin of 16 for the intermediates (whitened differences, their partial sums)
    log_largest = math.log(float(np.finfo(dtype).max) / 16)
    n_samples, n_features = shape
    # compared in the log domain: max_abs**2 itself overflows a Python float past 1.3e154
    log_square = math.log(4.0 * n_features) + 2 * math.log(max_abs)
    log_distance = log_square - math.log(reg_covar) if reg_covar > 0 else -math.inf
    if max(log_square + math.log(n_samples), log_distance) >= log_largest:
        advice = "pass float64 data or rescale it" if dtype == np.float32 else "rescale it"
        raise ValueError(
            f"X has values up to {max_abs:.3g}: its squared distances (over variances as small "
            f"as reg_covar={reg_covar:g}) overflow {dtype} (largest value "
            f"{float(np.finfo(dtype).max):.3g}); {advice}, e.g. with "
            "sklearn.preprocessing.StandardScaler."
        )


def _as_float_array(value, name, dtype):
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number):  # check_array's own error omits the name
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    # scikit-learn's check: "Input weights_init contains NaN." (or infinity)
    return check_array(array, dtype=dtype, ensure_2d=False, allow_nd=True, input_name=name)


def _check_shape(array, expected, name, parameter):
    # scikit-learn's wording first (its tests match it), then which argument it was.
    if array.shape != expected:
        raise ValueError(f"The parameter '{parameter}' should have the shape of {expected}, "
                         f"but got {array.shape} (from {name})")


def check_weights_init(weights, n_components, dtype):
    weights = _as_float_array(weights, "weights_init", dtype)
    _check_shape(weights, (n_components,), "weights_init", "weights")
    if np.any(weights < 0) or np.any(weights > 1):
        raise ValueError(f"The parameter 'weights' should be in the range [0, 1], but "
                         f"weights_init has min {weights.min():g} and max {weights.max():g}")
    atol = 1e-6 if dtype == np.float32 else 1e-8
    if abs(float(weights.sum()) - 1.0) > atol:
        raise ValueError("The parameter 'weights' should be normalized, but got "
                         f"sum(weights) = {float(weights.sum()):.5f} (weights_init must sum "
                         "to 1)")
    return weights


def check_means_init(means, n_components, n_features, dtype):
    means = _as_float_array(means, "means_init", dtype)
    _check_shape(means, (n_components, n_features), "means_init", "means")
    return means


def check_precisions_init(precisions, covariance_type, n_components, n_features, dtype):
    precisions = _as_float_array(precisions, "precisions_init", dtype)
    expected = parameter_shape(covariance_type, n_components, n_features)
    parameter = f"{covariance_type} precision"
    _check_shape(precisions, expected, f"precisions_init, covariance_type={covariance_type!r}",
                 parameter)
    if covariance_type in ("full", "tied"):
        matrices = precisions.reshape(-1, n_features, n_features)
        for k, matrix in enumerate(matrices):
            what = "the tied precision" if covariance_type == "tied" else f"precision {k}"
            if not np.allclose(matrix, matrix.T):
                problem = "is not symmetric"
            elif np.linalg.eigvalsh(matrix).min() <= 0:
                problem = "is not positive definite"
            else:
                continue
            raise ValueError(f"'{parameter}' should be symmetric, positive-definite: in "
                             f"precisions_init, {what} {problem}")
    elif np.any(precisions <= 0):
        raise ValueError(f"'{parameter}' should be positive: precisions_init has "
                         f"{int(np.sum(precisions <= 0))} entries <= 0")
    return precisions
