"""EM attention in PyTorch equals the float64 loop oracle, the NumPy stage and the CuPy stage.

``em_tutorial.nn.functional.em_attention`` and the EM attention inside ``EMAU.forward`` (its
1x1 convolutions set to the identity) share ``em_iterations``, so they are never compared with
each other: each is compared with the float64 loop oracle of ``ema_reference.py`` (no code in
common with either) and with the NumPy stage ``em_tutorial.ema.em_attention``.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from em_tutorial import ema  # noqa: E402
from em_tutorial.nn import EMAU  # noqa: E402
from em_tutorial.nn import functional as nnf  # noqa: E402

from ema_reference import reference_batched  # noqa: E402

# Tolerances per dtype: (rtol, atol). atol only covers entries that are ~0 by cancellation.
TOLERANCES = {np.float64: (1e-12, 1e-14), np.float32: (1e-5, 1e-6)}
B, H, W, C, K, T = 2, 5, 7, 16, 8, 3


def _inputs(rng, dtype):
    x = rng.standard_normal((B, H * W, C)).astype(dtype)  # (B, N, C)
    mu = rng.standard_normal((K, C))  # (K, C)
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    return x, mu.astype(dtype)


def _emau_with_identity_convs(dtype, mu):
    """An EMAU whose only computation before the reconstruction is EM attention itself."""
    emau = EMAU(C, num_bases=K, num_stages=T).to(getattr(torch, np.dtype(dtype).name)).eval()
    with torch.no_grad():
        emau.conv_in.weight.copy_(torch.eye(C)[:, :, None, None])  # (C, C, 1, 1)
        emau.conv_in.bias.zero_()
        emau.mu.copy_(torch.from_numpy(mu))
    return emau


def _emau_em_outputs(emau, x):
    """Run EMAU.forward on x (B, N, C); return its z, final bases and ReLU(x_tilde)."""
    captured = {}
    hook = emau.conv_out.register_forward_pre_hook(lambda m, args: captured.update(r=args[0]))
    feature_map = torch.from_numpy(x).mT.reshape(B, C, H, W)  # (B, C, H, W)
    with torch.no_grad():
        emau(feature_map)
    hook.remove()
    relu_x_tilde = captured["r"].flatten(2).mT  # (B, N, C)
    return emau.last_z.numpy(), emau.last_bases.numpy(), relu_x_tilde.numpy()


def _assert_matches(candidate, reference, dtype):
    rtol, atol = TOLERANCES[dtype]
    for c, r in zip(candidate, reference):
        np.testing.assert_allclose(np.asarray(c), r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_functional_matches_the_loop_oracle_and_numpy(rng, dtype):
    x, mu = _inputs(rng, dtype)
    z_t, mu_t, x_tilde_t = nnf.em_attention(torch.from_numpy(x), torch.from_numpy(mu), n_iter=T)
    assert z_t.dtype == mu_t.dtype == x_tilde_t.dtype == getattr(torch, np.dtype(dtype).name)
    got = (z_t.numpy(), mu_t.numpy(), x_tilde_t.numpy())
    _assert_matches(got, reference_batched(x, mu, T, 1.0), dtype)
    _assert_matches(got, ema.em_attention(x, mu, n_iter=T), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_emau_matches_the_loop_oracle_and_numpy(rng, dtype):
    x, mu = _inputs(rng, dtype)
    z_u, mu_u, relu_x_tilde_u = _emau_em_outputs(_emau_with_identity_convs(dtype, mu), x)
    for reference in (reference_batched(x, mu, T, 1.0), ema.em_attention(x, mu, n_iter=T)):
        z_r, mu_r, x_tilde_r = reference
        _assert_matches((z_u, mu_u, relu_x_tilde_u), (z_r, mu_r, np.maximum(x_tilde_r, 0)), dtype)


@pytest.mark.parametrize("lam, n_iter", [(0.5, 1), (4.0, 5)])
def test_functional_matches_numpy_unbatched_other_lambda(rng, lam, n_iter):
    rtol, atol = TOLERANCES[np.float64]
    x, mu = _inputs(rng, np.float64)
    expected = ema.em_attention(x[0], mu, n_iter=n_iter, lam=lam)
    got = nnf.em_attention(torch.from_numpy(x[0]), torch.from_numpy(mu), n_iter=n_iter, lam=lam)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=rtol, atol=atol)


def test_functional_batched_bases(rng):
    x, mu = _inputs(rng, np.float64)
    mu_batched = np.stack([mu, mu[::-1]])  # (B, K, C)
    expected = ema.em_attention(x, mu_batched)
    got = nnf.em_attention(torch.from_numpy(x), torch.from_numpy(mu_batched))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-12, atol=1e-14)


def test_functional_is_differentiable(rng):
    """Outside EMAU (which runs it under no-grad) autograd flows through every iteration."""
    x_t = torch.from_numpy(rng.standard_normal((6, 4))).requires_grad_()  # (N, C)
    mu_t = torch.from_numpy(rng.standard_normal((3, 4))).requires_grad_()  # (K, C)
    assert torch.autograd.gradcheck(lambda a, b: nnf.em_attention(a, b, n_iter=2)[2], (x_t, mu_t))


def test_functional_refuses_what_is_not_a_tensor():
    """The PyTorch stage's own rule; the shared ones are in test_validation_policy.py."""
    with pytest.raises(TypeError, match="torch tensors.*em_tutorial.ema.em_attention"):
        nnf.em_attention(np.zeros((10, 4)), torch.randn(3, 4))


def test_functional_can_skip_the_finite_check():
    x = torch.randn(10, 4)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):
        nnf.em_attention(x, torch.randn(3, 4))
    z, _, _ = nnf.em_attention(x, torch.randn(3, 4), check_finite=False)
    assert torch.isnan(z[3]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cupy_stage_joins_the_equality(rng, dtype):
    """CuPy (plain xp port and the fused kernels) == PyTorch on the same inputs."""
    from em_tutorial import gpu

    rtol, atol = TOLERANCES[dtype]
    x, mu = _inputs(rng, dtype)
    expected = nnf.em_attention(torch.from_numpy(x), torch.from_numpy(mu), n_iter=T)
    x_gpu, mu_gpu = gpu.to_gpu(x, mu, dtype=None)
    for stage in (gpu.em_attention_plain, gpu.em_attention_fused):
        for e, g in zip(expected, stage(x_gpu, mu_gpu, n_iter=T)):
            np.testing.assert_allclose(gpu.to_numpy(g), e.numpy(), rtol=rtol, atol=atol)
