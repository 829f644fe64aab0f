"""EM attention (plain and NumPy fast path) against a float64 loop-per-pixel reference.

Bad input is tested for every stage at once in test_validation_policy.py.
"""

import numpy as np
import pytest

from em_tutorial import ema
from em_tutorial.ema import EPS, em_attention
from em_tutorial.ema_fast import em_attention_fast

from ema_reference import reference_batched, reference_em_attention

# Tolerances against the float64 reference; atol is relative to the largest |value| compared,
# because entries of x_tilde and mu can be arbitrarily close to 0.
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def assert_close(actual, expected, tol):
    actual = np.asarray(actual, dtype=np.float64)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


SHAPES = {
    "unbatched": ((23, 6), (4, 6)),
    "batched, shared mu": ((3, 23, 6), (4, 6)),
    "batched, per-map mu": ((3, 23, 6), (3, 4, 6)),
}


def make_inputs(rng, x_shape, mu_shape, dtype, scale=1.0):
    x = (scale * rng.standard_normal(x_shape)).astype(dtype)
    mu = rng.standard_normal(mu_shape)
    mu /= np.linalg.norm(mu, axis=-1, keepdims=True)
    return x, mu.astype(dtype)


# the lesson's loop and the NumPy fast path, each checked against the reference
PATHS = {"plain": em_attention, "fast": em_attention_fast}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_matches_loop_reference(rng, shapes, dtype, path, lam):
    x, mu = make_inputs(rng, *shapes, dtype)
    z, mu_out, x_tilde = PATHS[path](x, mu, n_iter=3, lam=lam)
    z_ref, mu_ref, x_tilde_ref = reference_batched(x, mu, 3, lam)
    assert z.dtype == mu_out.dtype == x_tilde.dtype == dtype
    assert z.shape == x.shape[:-1] + (mu.shape[-2],)
    assert mu_out.shape == x.shape[:-2] + mu.shape[-2:]
    assert x_tilde.shape == x.shape
    for actual, expected in ((z, z_ref), (mu_out, mu_ref), (x_tilde, x_tilde_ref)):
        assert_close(actual, expected, TOL[dtype])


@pytest.mark.parametrize("path", PATHS)
def test_history_is_every_iteration(rng, path):
    x, mu = make_inputs(rng, (2, 17, 5), (3, 5), np.float64)
    z, mu_out, x_tilde, history = PATHS[path](x, mu, n_iter=4, return_history=True)
    assert len(history) == 4
    assert all(isinstance(step, ema.EMIteration) for step in history)
    np.testing.assert_array_equal(history[-1].z, z)
    np.testing.assert_array_equal(history[-1].mu, mu_out)
    for b in range(2):
        ref_history = reference_em_attention(x[b], mu, 4, 1.0)[3]
        for step, (z_ref, mu_ref) in zip(history, ref_history):
            assert_close(step.z[b], z_ref, 1e-12)
            assert_close(step.mu[b], mu_ref, 1e-12)
    # each step is its own array: the fast path must not reuse one buffer for all of them
    assert not np.allclose(history[0].z, history[-1].z)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_path_equals_plain_path(rng, dtype):
    x, mu = make_inputs(rng, (2, 300, 16), (8, 16), dtype, scale=2.0)
    fast = em_attention_fast(x, mu, n_iter=3)
    plain = em_attention(x, mu, n_iter=3)
    tol = 10 * np.finfo(dtype).eps
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def test_steps_compose_to_em_attention(rng):
    x, mu = make_inputs(rng, (31, 7), (5, 7), np.float64)
    z1 = ema.attention_e_step(x, mu, lam=1.0)
    mu1 = ema.l2_normalize(ema.attention_m_step(x, z1))
    z, mu_out, x_tilde = em_attention(x, mu, n_iter=1)
    np.testing.assert_allclose(z, z1, rtol=1e-13)
    np.testing.assert_allclose(mu_out, mu1, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(x_tilde, ema.attention_reconstruct(z1, mu1), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("path", PATHS)
def test_invariants_rows_sum_to_one_and_unit_bases(rng, path):
    x, mu = make_inputs(rng, (4, 500, 32), (16, 32), np.float32, scale=3.0)
    z, mu_out, _ = PATHS[path](x, mu)
    np.testing.assert_allclose(z.sum(axis=-1), 1.0, rtol=1e-5)
    assert (z >= 0).all()
    # |mu_k| = r / (eps + r) for the pre-normalisation length r: 1 up to ~eps / r
    np.testing.assert_allclose(np.linalg.norm(mu_out, axis=-1), 1.0, atol=1e-5)


def test_l2_normalize_uses_the_official_eps():
    mu = np.array([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]])
    out = ema.l2_normalize(mu)
    np.testing.assert_allclose(out[0], np.array([3.0, 4.0]) / (EPS + 5.0), rtol=1e-15)
    np.testing.assert_array_equal(out[1], 0.0)  # a basis no pixel chose stays 0, not NaN
    np.testing.assert_allclose(out[2], [1e-7 / (EPS + 1e-7), 0.0], rtol=1e-15)


def test_m_step_uses_the_official_eps():
    x = np.array([[2.0, 0.0], [0.0, 4.0]])
    z = np.array([[1.0, 0.0], [0.0, 0.0]])  # basis 1 chosen by no pixel
    mu = ema.attention_m_step(x, z)
    np.testing.assert_allclose(mu[0], [2.0 / (1.0 + EPS), 0.0], rtol=1e-15)
    np.testing.assert_array_equal(mu[1], 0.0)


@pytest.mark.parametrize("lam", [1e3, 1e4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("path", PATHS)
def test_large_lam_stays_finite(rng, path, lam, dtype):
    x, mu = make_inputs(rng, (2, 200, 16), (8, 16), dtype)
    z, mu_out, x_tilde = PATHS[path](x, mu, lam=lam)
    for a in (z, mu_out, x_tilde):
        assert np.isfinite(a).all()
    np.testing.assert_allclose(z.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "dtype, scale",
    [(np.float64, 1e150), (np.float64, 1e-150), (np.float32, 1e30), (np.float32, 1e-30)],
)
@pytest.mark.parametrize("path", PATHS)
def test_large_and_small_feature_scales_stay_finite(rng, path, dtype, scale):
    # unit-norm initial bases: the logits are lam |x_n| cos(angle), here up to ~1e150 * 4
    x, mu = make_inputs(rng, (2, 100, 16), (8, 16), dtype, scale=scale)
    z, mu_out, x_tilde = PATHS[path](x, mu)
    for a in (z, mu_out, x_tilde):
        assert np.isfinite(a).all()
    norms = np.linalg.norm(mu_out.astype(np.float64), axis=-1)
    if scale > 1:
        # |mu_k| = r / (eps + r) with r ~ scale: unit norm whatever the feature scale
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    else:
        # r ~ scale << eps: the eps of the official code dominates and the bases shrink to ~r/eps
        assert (norms < 1e3 * scale / EPS).all()


def test_fast_path_takes_numpy_only():
    xps = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="NumPy arrays.*em_tutorial.ema.em_attention"):
        em_attention_fast(xps.ones((5, 3)), xps.ones((2, 3)))


@pytest.mark.parametrize("path", PATHS)
def test_inputs_are_not_modified(rng, path):
    x, mu = make_inputs(rng, (2, 40, 6), (3, 6), np.float32)
    x_before, mu_before = x.copy(), mu.copy()
    PATHS[path](x, mu, lam=2.0)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(mu, mu_before)


@pytest.mark.parametrize("path", PATHS)
def test_channels_first_view_and_lambda_zero(rng, path):
    # a (B, C, N) feature map seen as (B, N, C) without a copy: a strided, non-contiguous x
    x_channels_first = rng.standard_normal((2, 5, 30))
    x = np.swapaxes(x_channels_first, 1, 2)
    mu = rng.standard_normal((3, 5))
    for lam in (1.0, 0.0):
        got = PATHS[path](x, mu, lam=lam)
        expected = reference_batched(np.ascontiguousarray(x), mu, 3, lam)
        for a, b in zip(got, expected):
            assert_close(a, b, 1e-12)
    # lambda = 0 (sigma -> infinity): every pixel belongs equally to every basis
    np.testing.assert_allclose(got[0], 1.0 / 3.0, rtol=1e-15)
