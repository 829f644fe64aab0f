"""The bridge: EM attention's A_E is the E-step of a spherical Gaussian mixture, lambda = 1/sigma^2.

    ln N(x_n | mu_k, sigma^2 I) = -(|x_n|^2 - 2 x_n^T mu_k + |mu_k|^2) / (2 sigma^2) + const

|x_n|^2 is the same for every k and cancels in the softmax over k; |mu_k|^2 cancels only when
all bases have one common length (unit norm in EMA). With uniform mixing weights what is
left is softmax_k(x_n^T mu_k / sigma^2).
"""

import numpy as np
import pytest

from em_tutorial import ema, gmm


def unit_rows(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.mark.parametrize("sigma", [2.0, 1.0, 0.5, 0.2])
def test_spherical_gmm_e_step_is_the_attention_e_step(rng, sigma):
    x = unit_rows(rng.standard_normal((200, 16)))
    mu = unit_rows(rng.standard_normal((8, 16)))
    resp = gmm.e_step(x, mu, np.full(8, 1.0 / sigma), covariance_type="spherical", weights=None)
    z = ema.attention_e_step(x, mu, lam=1.0 / sigma**2)
    # |x - mu|^2 is formed in the mixture, x^T mu here: rounding of order lambda * 1e-16
    np.testing.assert_allclose(resp, z, rtol=1e-11, atol=1e-14)


def test_spherical_gmm_parameters_feed_the_mixture(rng):
    x = unit_rows(rng.standard_normal((100, 6)))
    mu = unit_rows(rng.standard_normal((5, 6)))
    params = ema.spherical_gmm_parameters(mu, lam=4.0)
    np.testing.assert_allclose(params["precisions_cholesky"], 2.0)  # 1/sigma, sigma = 1/2
    z = ema.attention_e_step(x, mu, 4.0)
    np.testing.assert_allclose(gmm.e_step(x, **params), z, rtol=1e-12)


def test_pixels_need_not_be_unit_norm_but_bases_need_a_common_length(rng):
    x = 3.0 * rng.standard_normal((100, 6))  # |x_n|^2 cancels whatever it is
    mu = 0.7 * unit_rows(rng.standard_normal((5, 6)))  # one common length 0.7
    params = ema.spherical_gmm_parameters(mu, lam=1.0)
    np.testing.assert_allclose(gmm.e_step(x, **params), ema.attention_e_step(x, mu), rtol=1e-12)
    # bases of different lengths: -|mu_k|^2 / (2 sigma^2) now favours the short ones
    mu_uneven = mu * np.array([[0.2], [0.5], [1.0], [2.0], [4.0]])
    params = ema.spherical_gmm_parameters(mu_uneven, lam=1.0)
    difference = np.abs(gmm.e_step(x, **params) - ema.attention_e_step(x, mu_uneven)).max()
    assert difference > 0.1


def test_non_uniform_weights_break_the_equality(rng):
    x = unit_rows(rng.standard_normal((100, 6)))
    mu = unit_rows(rng.standard_normal((3, 6)))
    params = ema.spherical_gmm_parameters(mu, lam=1.0) | {"weights": np.array([0.7, 0.2, 0.1])}
    assert np.abs(gmm.e_step(x, **params) - ema.attention_e_step(x, mu)).max() > 0.05


@pytest.mark.parametrize("lam", [0.0, -1.0, float("inf")])
def test_spherical_gmm_parameters_need_a_positive_finite_lambda(lam):
    with pytest.raises(ValueError, match="lam"):
        ema.spherical_gmm_parameters(np.eye(3), lam=lam)
