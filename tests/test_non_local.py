"""The non-local operation (eq. 9) against a loop reference, and EM attention's reduction to it."""

import math

import numpy as np
import pytest

from em_tutorial import ema
from em_tutorial.non_local import non_local, non_local_attention

TOL = {np.float64: 1e-12, np.float32: 1e-5}


def reference_non_local(x, w_theta, w_phi, w_g):
    """y_i = sum_j exp(theta_i . phi_j) g_j / sum_j exp(theta_i . phi_j), one pixel at a time."""
    x = np.asarray(x, dtype=np.float64)
    theta, phi, g = (x @ np.asarray(w, dtype=np.float64) for w in (w_theta, w_phi, w_g))
    y = np.empty((x.shape[0], g.shape[1]))
    for i in range(x.shape[0]):
        logits = np.array([math.fsum(theta[i] * phi[j]) for j in range(x.shape[0])])
        f = np.exp(logits - logits.max())
        y[i] = [math.fsum(f * g[:, c]) / math.fsum(f) for c in range(g.shape[1])]
    return y


def assert_close(actual, expected, tol):
    actual = np.asarray(actual, dtype=np.float64)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("embedded", [False, True], ids=["identity", "embedded"])
@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
def test_matches_loop_reference(rng, dtype, embedded, batched):
    c = 6
    x = rng.standard_normal((2, 30, c) if batched else (30, c)).astype(dtype)
    if embedded:
        w_theta, w_phi = (0.5 * rng.standard_normal((c, 4)).astype(dtype) for _ in range(2))
        w_g = rng.standard_normal((c, 3)).astype(dtype)
        y = non_local(x, w_theta, w_phi, w_g)
    else:
        w_theta = w_phi = w_g = np.eye(c)
        y = non_local(x)
    expected = (
        np.stack([reference_non_local(xb, w_theta, w_phi, w_g) for xb in x])
        if batched
        else reference_non_local(x, w_theta, w_phi, w_g)
    )
    assert y.dtype == dtype
    assert_close(y, expected, TOL[dtype])


def test_attention_rows_sum_to_one(rng):
    a = non_local_attention(rng.standard_normal((3, 50, 8)))
    assert a.shape == (3, 50, 50)
    np.testing.assert_allclose(a.sum(axis=-1), 1.0, rtol=1e-13)


# --------------------------------------------------------- reduction of EM attention to it
#
# Conditions: identity theta and phi, lambda = 1 (or theta = lambda I), bases = all N pixels
# (mu = x, K = N), one iteration. Then the first A_E *is* the non-local attention matrix, and
# reconstructing with those initial bases, z @ x (or z @ g(x)), *is* the non-local output.
# EM attention's x_tilde is not: A_M and the L2 normalisation replace the bases first.


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
def test_first_e_step_with_all_pixels_as_bases_is_the_non_local_attention(rng, batched):
    x = rng.standard_normal((2, 40, 5) if batched else (40, 5))
    z, _, _, history = ema.em_attention(x, x, n_iter=1, lam=1.0, return_history=True)
    attention = non_local_attention(x)
    np.testing.assert_allclose(history[0].z, attention, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(z, attention, rtol=1e-13, atol=1e-16)
    # z @ mu^(0) with mu^(0) = x is the non-local output y
    np.testing.assert_allclose(ema.attention_reconstruct(z, x), non_local(x), rtol=1e-12)


def test_lambda_is_a_scaled_theta_embedding(rng):
    x = rng.standard_normal((40, 5))
    lam = 0.37
    np.testing.assert_allclose(
        ema.attention_e_step(x, x, lam), non_local_attention(x, w_theta=lam * np.eye(5)), rtol=1e-13
    )


def test_g_embedding_applies_after_the_attention(rng):
    x = rng.standard_normal((40, 5))
    w_g = rng.standard_normal((5, 3))
    z = ema.attention_e_step(x, x)
    y = non_local(x, w_g=w_g)
    np.testing.assert_allclose(ema.attention_reconstruct(z, x @ w_g), y, rtol=1e-12)


@pytest.mark.parametrize("unit_norm", [False, True])
def test_em_attention_output_is_not_the_non_local_output(rng, unit_norm):
    # What A_M and the L2 normalisation change: the bases become column-weighted means of
    # the pixels with unit length, so x_tilde = z mu^(1) differs from y = z x, by a lot.
    x = rng.standard_normal((60, 5))
    if unit_norm:
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
    _, mu, x_tilde = ema.em_attention(x, x, n_iter=1)
    np.testing.assert_allclose(np.linalg.norm(mu, axis=-1), 1.0, atol=1e-5)
    y = non_local(x)
    relative_difference = np.linalg.norm(x_tilde - y) / np.linalg.norm(y)
    assert relative_difference > 0.1


# ----------------------------------------------------------------------------- bad input


def test_bad_embedding_shape_raises(rng):
    x = rng.standard_normal((10, 4))
    with pytest.raises(ValueError, match="w_theta must be a \\(C, C'\\) matrix with C = 4"):
        non_local(x, w_theta=np.eye(3))
    with pytest.raises(ValueError, match="same C'"):
        non_local(x, w_theta=np.ones((4, 2)), w_phi=np.ones((4, 3)))


@pytest.mark.parametrize(
    "x, error, message",
    [
        (np.ones(5), ValueError, "shape"),
        (np.ones((0, 3)), ValueError, "no pixels"),
        (np.array([[1.0, np.nan]]), ValueError, "NaN"),
        (np.ones((4, 3), np.float16), TypeError, "float32 or float64"),
    ],
)
def test_bad_features_raise(x, error, message):
    with pytest.raises(error, match=message):
        non_local(x)


@pytest.mark.parametrize(
    "x, weights, error, message",
    [
        ([[1.0, 2.0]], {}, TypeError, r"^x must be an array; got list"),
        (None, {}, TypeError, r"^x must be an array; got NoneType"),
        (np.ones((4, 3)), {"w_g": [[1.0]]}, TypeError, r"^w_g must be an array; got list"),
        (np.ones((4, 3)), {"w_phi": np.full((3, 2), np.nan), "w_theta": np.ones((3, 2))},
         ValueError, r"^w_phi contains NaN or inf \(6 of its 6"),
        (np.full((4, 3), 1e20, np.float32), {}, ValueError,
         r"^x is too large for float32: theta\(x_i\)\^T phi\(x_j\) can reach 3e\+40"),
        (np.ones((4, 3)), {"w_g": np.full((3, 2), 1e308)}, ValueError,
         r"^x is too large for float64: g\(x\) = x w_g can reach inf"),
    ],
)
def test_bad_types_and_overflow_are_named(x, weights, error, message):
    """Each was a raw AttributeError, a TypeError from array_api_compat or a silent NaN."""
    with pytest.raises(error, match=message):
        non_local(x, **weights)


def test_large_features_that_fit_stay_finite(rng):
    x = 1e17 * rng.standard_normal((6, 3)).astype(np.float32)  # logits up to ~1e35
    assert np.isfinite(non_local(x)).all()
