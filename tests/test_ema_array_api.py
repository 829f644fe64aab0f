"""EM attention and the non-local operation on array_api_strict arrays give NumPy's numbers.

array_api_strict implements only the array API standard, so these tests fail on any NumPy-only
call in the shared code path, the one CuPy runs as well.
"""

import numpy as np
import pytest

from em_tutorial import ema
from em_tutorial.non_local import non_local, non_local_attention

xps = pytest.importorskip("array_api_strict")


def strict(a):
    return xps.asarray(a)


def close(strict_result, numpy_result, rtol=1e-12):
    assert not isinstance(strict_result, np.ndarray)
    np.testing.assert_allclose(
        np.asarray(strict_result), numpy_result, rtol=rtol, atol=rtol * np.abs(numpy_result).max()
    )


@pytest.mark.parametrize("mu_shape", [(4, 6), (2, 4, 6)], ids=["shared mu", "per-map mu"])
def test_em_attention(rng, mu_shape):
    x, mu = rng.standard_normal((2, 25, 6)), rng.standard_normal(mu_shape)
    expected = ema.em_attention(x, mu, n_iter=3, lam=0.7, return_history=True)
    got = ema.em_attention(strict(x), strict(mu), n_iter=3, lam=0.7, return_history=True)
    for a, b in zip(got[:3], expected[:3]):
        close(a, b)
    for step, step_np in zip(got[3], expected[3]):
        close(step.z, step_np.z)
        close(step.mu, step_np.mu)


def test_steps(rng):
    x, mu = rng.standard_normal((25, 6)), rng.standard_normal((4, 6))
    z = ema.attention_e_step(x, mu, 2.0)
    close(ema.attention_e_step(strict(x), strict(mu), 2.0), z)
    m = ema.attention_m_step(x, z)
    close(ema.attention_m_step(strict(x), strict(z)), m)
    close(ema.l2_normalize(strict(m)), ema.l2_normalize(m))
    close(ema.attention_reconstruct(strict(z), strict(m)), ema.attention_reconstruct(z, m))
    close(ema.softmax(strict(x)), ema.softmax(x))


def test_non_local(rng):
    x = rng.standard_normal((2, 20, 5))
    w = rng.standard_normal((5, 3))
    close(non_local_attention(strict(x)), non_local_attention(x))
    close(non_local(strict(x), strict(w), strict(w), strict(w)), non_local(x, w, w, w))


def test_bad_input_raises_the_same_errors(rng):
    x = rng.standard_normal((5, 3))
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        ema.em_attention(strict(x), strict(np.ones((2, 3))))
    with pytest.raises(ValueError, match="channel mismatch"):
        ema.em_attention(strict(np.ones((5, 3))), strict(np.ones((2, 4))))


def test_spherical_gmm_parameters(rng):
    mu = rng.standard_normal((4, 6))
    params = ema.spherical_gmm_parameters(strict(mu), lam=4.0)
    close(params["precisions_cholesky"], np.full(4, 2.0))
