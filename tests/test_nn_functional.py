"""EM attention in PyTorch equals the NumPy stage (and the CuPy stage where a GPU runs it).

Three-way equality on the same input and initial bases:
``em_tutorial.ema.em_attention`` (NumPy) == ``em_tutorial.nn.functional.em_attention`` ==
the EM attention inside ``EMAU.forward`` with its 1x1 convolutions set to the identity.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from em_tutorial import ema  # noqa: E402
from em_tutorial.nn import EMAU  # noqa: E402
from em_tutorial.nn import functional as nnf  # noqa: E402

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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_functional_and_emau_agree(rng, dtype):
    rtol, atol = TOLERANCES[dtype]
    x, mu = _inputs(rng, dtype)
    z_np, mu_np, x_tilde_np = ema.em_attention(x, mu, n_iter=T)
    z_t, mu_t, x_tilde_t = nnf.em_attention(torch.from_numpy(x), torch.from_numpy(mu), n_iter=T)
    z_u, mu_u, relu_x_tilde_u = _emau_em_outputs(_emau_with_identity_convs(dtype, mu), x)

    for reference, candidate in ((z_np, z_t.numpy()), (z_np, z_u)):
        np.testing.assert_allclose(candidate, reference, rtol=rtol, atol=atol)
    for reference, candidate in ((mu_np, mu_t.numpy()), (mu_np, mu_u)):
        np.testing.assert_allclose(candidate, reference, rtol=rtol, atol=atol)
    np.testing.assert_allclose(x_tilde_t.numpy(), x_tilde_np, rtol=rtol, atol=atol)
    np.testing.assert_allclose(relu_x_tilde_u, np.maximum(x_tilde_np, 0), rtol=rtol, atol=atol)
    assert z_t.dtype == mu_t.dtype == x_tilde_t.dtype == getattr(torch, np.dtype(dtype).name)


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


@pytest.mark.parametrize(
    "x_shape, mu_shape, kwargs, error, match",
    [
        ((10, 4), (3, 5), {}, ValueError, "channel mismatch"),
        ((10,), (3, 4), {}, ValueError, r"\(N, C\)"),
        ((2, 10, 4), (3, 3, 4), {}, ValueError, "batched mu"),
        ((10, 4), (3, 4), {"n_iter": 0}, ValueError, "n_iter"),
        ((10, 4), (3, 4), {"lam": -1.0}, ValueError, "lam"),
        ((0, 4), (3, 4), {}, ValueError, "nothing to compute"),
    ],
)
def test_functional_bad_input(x_shape, mu_shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        nnf.em_attention(torch.randn(x_shape), torch.randn(mu_shape), **kwargs)


def test_functional_refuses_half_precision_and_nan():
    with pytest.raises(TypeError, match="float32 or float64"):
        nnf.em_attention(torch.randn(10, 4).half(), torch.randn(3, 4).half())
    with pytest.raises(TypeError, match="one dtype"):
        nnf.em_attention(torch.randn(10, 4), torch.randn(3, 4, dtype=torch.float64))
    x = torch.randn(10, 4)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nnf.em_attention(x, torch.randn(3, 4))
    with pytest.raises(TypeError, match="torch tensors"):
        nnf.em_attention(np.zeros((10, 4)), torch.randn(3, 4))


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
