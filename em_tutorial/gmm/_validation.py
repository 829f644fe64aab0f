"""Checks on user input to :class:`GaussianMixture`, each failing with a ValueError that names
the problem. They run once per ``fit`` on the host, never inside the EM loop."""

from __future__ import annotations

import numpy as np

from em_tutorial.gmm._precision import parameter_shape


def check_n_samples(X, n_components):
    if X.shape[0] < n_components:
        raise ValueError(
            f"fewer samples than components: n_samples={X.shape[0]} < "
            f"n_components={n_components}. Use fewer components or more data."
        )


def check_not_overflowing(shape, dtype, max_abs):
    """Squared distances of X must fit its dtype: sum_n (x_n - mu)^2 reaches ~4 N d max|X|^2.

    ``shape`` and ``dtype`` (a NumPy dtype) are X's, ``max_abs`` is max |X|, a Python float.
    Raises a ValueError that names the dtype.
    """
    largest = float(np.finfo(dtype).max)
    n_samples, n_features = shape
    if 4.0 * n_samples * n_features * max_abs**2 >= largest:
        advice = "pass float64 data or rescale it" if dtype == np.float32 else "rescale it"
        raise ValueError(
            f"X has values up to {max_abs:.3g}: its squared distances overflow {dtype} "
            f"(largest value {largest:.3g}); {advice}, e.g. with "
            "sklearn.preprocessing.StandardScaler."
        )


def _as_float_array(value, name, dtype):
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(dtype)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity")
    return array


def _check_shape(array, expected, name):
    if array.shape != expected:
        raise ValueError(f"{name} must have shape {expected}, but got {array.shape}")


def check_weights_init(weights, n_components, dtype):
    weights = _as_float_array(weights, "weights_init", dtype)
    _check_shape(weights, (n_components,), "weights_init")
    if np.any(weights < 0) or np.any(weights > 1):
        raise ValueError(
            f"weights_init must lie in [0, 1], got min {weights.min():g}, max {weights.max():g}"
        )
    atol = 1e-6 if dtype == np.float32 else 1e-8
    if abs(float(weights.sum()) - 1.0) > atol:
        raise ValueError(f"weights_init must sum to 1, got sum {float(weights.sum()):.8g}")
    return weights


def check_means_init(means, n_components, n_features, dtype):
    means = _as_float_array(means, "means_init", dtype)
    _check_shape(means, (n_components, n_features), "means_init")
    return means


def check_precisions_init(precisions, covariance_type, n_components, n_features, dtype):
    precisions = _as_float_array(precisions, "precisions_init", dtype)
    expected = parameter_shape(covariance_type, n_components, n_features)
    _check_shape(precisions, expected, f"precisions_init (covariance_type={covariance_type!r})")
    if covariance_type in ("full", "tied"):
        matrices = precisions.reshape(-1, n_features, n_features)
        for k, matrix in enumerate(matrices):
            what = "the tied precision" if covariance_type == "tied" else f"precision {k}"
            if not np.allclose(matrix, matrix.T):
                raise ValueError(f"precisions_init: {what} is not symmetric")
            if np.linalg.eigvalsh(matrix).min() <= 0:
                raise ValueError(f"precisions_init: {what} is not positive definite")
    elif np.any(precisions <= 0):
        raise ValueError(f"precisions_init ({covariance_type}) must be positive everywhere")
    return precisions
