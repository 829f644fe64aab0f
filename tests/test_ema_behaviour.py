"""What lambda and the L2 normalisation do, measured."""

import numpy as np
import pytest

from em_tutorial import ema


def mean_entropy(z):
    """Average over pixels of -sum_k z_nk log z_nk (nats); log K for uniform z, 0 for one-hot."""
    return float(-np.sum(z * np.log(np.clip(z, 1e-300, None)), axis=-1).mean())


def unit_rows(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture
def clustered(rng):
    """Unit-norm pixels around 4 unit-norm directions, and 4 unit-norm initial bases."""
    centres = unit_rows(rng.standard_normal((4, 8)))
    x = unit_rows(centres[rng.integers(0, 4, 400)] + 0.15 * rng.standard_normal((400, 8)))
    return x, unit_rows(rng.standard_normal((4, 8)))


def test_entropy_of_z_falls_as_lambda_grows(clustered):
    x, mu = clustered
    lams = [0.0, 0.3, 1.0, 3.0, 10.0, 100.0, 1e3, 1e4]
    entropies = [mean_entropy(ema.attention_e_step(x, mu, lam)) for lam in lams]
    assert entropies[0] == pytest.approx(np.log(4), rel=1e-12)  # lambda = 0: z uniform
    assert all(a > b for a, b in zip(entropies, entropies[1:]))
    assert entropies[-1] < 1e-3 * np.log(4)


def test_large_lambda_is_a_spherical_k_means_step(clustered):
    # lambda -> infinity: z_n becomes the one-hot of the nearest basis (for unit vectors,
    # largest x^T mu = smallest distance), and A_M + L2 gives the normalised cluster means.
    x, mu = clustered
    lam = 1e4
    # keep the pixels whose two best bases differ by lam * gap >= 20 in the logits, so that
    # the one-hot limit holds to exp(-20) ~ 2e-9 (nearly tied pixels split their weight)
    logits = np.sort(x @ mu.T, axis=1)
    x = x[lam * (logits[:, -1] - logits[:, -2]) >= 20]
    assert len(x) > 350
    z, mu_next, _ = ema.em_attention(x, mu, n_iter=1, lam=lam)
    nearest = np.argmin(((x[:, None, :] - mu[None, :, :]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(z, np.eye(4)[nearest], atol=1e-8)
    centroids = np.stack([x[nearest == k].mean(axis=0) for k in range(4)])
    np.testing.assert_allclose(mu_next, unit_rows(centroids), rtol=1e-5, atol=1e-7)


def iterate_without_l2(x, mu, n_iter):
    """A_E and A_M as in em_attention, but with the L2 normalisation left out."""
    for _ in range(n_iter):
        z = ema.attention_e_step(x, mu)
        mu = ema.attention_m_step(x, z)
    return z, mu, ema.attention_reconstruct(z, mu)


def test_l2_normalisation_pins_the_bases_to_unit_length(clustered):
    # Without it |mu_k| follows the features: averaging spread unit vectors shortens them
    # (flatter z), large features lengthen them; the effective lambda becomes lambda |mu_k|.
    x, mu = clustered
    for scale in (1.0, 3.0, 30.0):
        _, mu_l2, x_tilde = ema.em_attention(scale * x, mu)
        np.testing.assert_allclose(np.linalg.norm(mu_l2, axis=-1), 1.0, atol=1e-5)
        # x_tilde is a convex combination of unit bases: length <= 1 at any feature scale
        assert np.linalg.norm(x_tilde, axis=-1).max() <= 1.0
    assert np.linalg.norm(iterate_without_l2(x, mu, 3)[1], axis=-1).max() < 0.5
    assert np.linalg.norm(iterate_without_l2(30.0 * x, mu, 3)[1], axis=-1).min() > 10.0


def test_without_l2_the_softmax_saturates_and_x_tilde_grows(clustered):
    x, mu = 30.0 * clustered[0], clustered[1]
    z, _, x_tilde = ema.em_attention(x, mu)
    z_raw, _, x_tilde_raw = iterate_without_l2(x, mu, 3)
    # logits x^T mu grow like scale^2 instead of scale: near-hard assignments
    assert mean_entropy(z_raw) < 0.2 * mean_entropy(z)
    length, length_raw = (np.linalg.norm(a, axis=-1).mean() for a in (x_tilde, x_tilde_raw))
    assert length_raw > 10.0 * length
