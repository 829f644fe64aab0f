"""EM attention on the GPU: NumPy vs plain CuPy vs fused kernels.

Every test here except the launch-geometry and input-check ones needs a GPU
(``@pytest.mark.gpu``) and is skipped with the reason elsewhere. References are the NumPy
functions of em_tutorial.ema, themselves checked against hand computations in test_ema.

Tolerances: float64 ``rtol=1e-10, atol=1e-12`` (the two sides differ only in summation
order); float32 ``rtol=1e-4, atol=2e-5``. Two float32 implementations on the CPU (NumPy's fast
and plain paths) already differ by up to 5e-6 in the bases after three iterations at
lambda = 20, the sharpest softmax tested: a basis has C = 300-512 entries of ~0.05, so its
small entries have few correct digits relative to themselves, hence the absolute term.
"""

import math

import numpy as np
import pytest

from em_tutorial import ema
from em_tutorial.gpu.fused_ema import softmax_launch_config
from em_tutorial.gpu.kernels import WARPS_PER_BLOCK

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=2e-5)}


def _features(rng, shape, dtype=np.float64):
    """Unit-norm feature rows with some cluster structure, like EMANet's inputs."""
    centres = rng.standard_normal((5, shape[-1]))
    x = centres[rng.integers(0, 5, size=shape[:-1])] + 0.5 * rng.standard_normal(shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(dtype)


def _bases(rng, k, c, dtype=np.float64, batch=()):
    mu = rng.standard_normal((*batch, k, c))
    return (mu / np.linalg.norm(mu, axis=-1, keepdims=True)).astype(dtype)


# --- launch geometry: CPU checks of the index arithmetic the kernels rely on ---------------------


@pytest.mark.parametrize("batch,n_points", [(1, 1), (1, 7), (2, 100), (16, 9409), (3, 50_000)])
def test_softmax_blocks_visit_every_row_once(batch, n_points):
    """The kernel's row loop ``n = p*W + w; n < N; n += P*W`` covers 0..N-1 exactly once."""
    blocks, threads, _ = softmax_launch_config(batch, n_points, 64, np.float32)
    warps = threads // 32
    assert warps == WARPS_PER_BLOCK and threads % 32 == 0 and threads <= 1024
    visits = np.zeros(n_points, dtype=int)
    for p in range(blocks):
        for w in range(warps):
            visits[np.arange(p * warps + w, n_points, blocks * warps)] += 1
    np.testing.assert_array_equal(visits, 1)
    assert blocks <= 2**31 - 1


def test_softmax_launch_refuses_a_batch_beyond_the_grid_limit():
    with pytest.raises(ValueError, match="65535"):
        softmax_launch_config(70_000, 10, 4, np.float32)


def test_softmax_launch_refuses_too_many_bases_for_shared_memory():
    with pytest.raises(ValueError, match="shared memory"):
        softmax_launch_config(1, 10, 10_000, np.float64)


# --- NumPy vs plain CuPy: every em_tutorial.ema function ----------------------------------------


def _to_gpu(*arrays):
    import cupy

    return tuple(cupy.asarray(a) for a in arrays)


def _assert_on_gpu_and_close(gpu_result, numpy_result, dtype):
    import cupy

    assert isinstance(gpu_result, cupy.ndarray), type(gpu_result)
    assert gpu_result.dtype == np.dtype(dtype)
    assert gpu_result.shape == numpy_result.shape
    np.testing.assert_allclose(gpu_result.get(), numpy_result, **TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batched", [False, True])
def test_every_ema_function_matches_numpy(rng, dtype, batched):
    batch = (3,) if batched else ()
    x = _features(rng, (*batch, 200, 24), dtype)
    mu = _bases(rng, 7, 24, dtype, batch)
    z = ema.attention_e_step(x, mu, 2.0)
    x_d, mu_d, z_d = _to_gpu(x, mu, z)
    _assert_on_gpu_and_close(ema.softmax(x_d), ema.softmax(x), dtype)
    _assert_on_gpu_and_close(ema.attention_e_step(x_d, mu_d, 2.0), z, dtype)
    _assert_on_gpu_and_close(ema.attention_m_step(x_d, z_d), ema.attention_m_step(x, z), dtype)
    _assert_on_gpu_and_close(ema.l2_normalize(x_d), ema.l2_normalize(x), dtype)
    _assert_on_gpu_and_close(
        ema.attention_reconstruct(z_d, mu_d), ema.attention_reconstruct(z, mu), dtype
    )
    gpu_params = ema.spherical_gmm_parameters(mu_d[0] if batched else mu_d, 2.0)
    cpu_params = ema.spherical_gmm_parameters(mu[0] if batched else mu, 2.0)
    for name in ("means", "precisions_cholesky"):
        _assert_on_gpu_and_close(gpu_params[name], cpu_params[name], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_em_attention_plain_cupy_matches_numpy_with_history(rng, dtype):
    x = _features(rng, (2, 300, 32), dtype)
    mu = _bases(rng, 8, 32, dtype)
    expected = ema.em_attention(x, mu, n_iter=3, lam=1.5, return_history=True)
    got = ema.em_attention(*_to_gpu(x, mu), n_iter=3, lam=1.5, return_history=True)
    for g, e in zip(got[:3], expected[:3]):
        _assert_on_gpu_and_close(g, e, dtype)
    for (gz, gmu), (ez, emu) in zip(got[3], expected[3]):
        _assert_on_gpu_and_close(gz, ez, dtype)
        _assert_on_gpu_and_close(gmu, emu, dtype)


# --- fused vs plain -----------------------------------------------------------------------------

# (batch shape of x, N, C, K, batched initial bases): K below, at and above a warp, not a
# multiple of 32; C not a multiple of the 256-thread block; N smaller than a block's 8 warps.
SHAPES = [
    ((), 5, 3, 2, False),
    ((), 300, 24, 37, False),
    ((2,), 1000, 64, 64, False),
    ((2,), 513, 300, 100, True),
    ((4,), 97, 512, 64, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch,n,c,k,batched_mu", SHAPES)
@pytest.mark.parametrize("lam", [0.0, 1.0, 20.0])
def test_fused_matches_plain_cupy_and_numpy(rng, dtype, batch, n, c, k, batched_mu, lam):
    from em_tutorial.gpu import em_attention_fused

    x = _features(rng, (*batch, n, c), dtype)
    mu = _bases(rng, k, c, dtype, batch if batched_mu else ())
    x_d, mu_d = _to_gpu(x, mu)
    fused = em_attention_fused(x_d, mu_d, n_iter=3, lam=lam)
    plain = ema.em_attention(x_d, mu_d, n_iter=3, lam=lam)
    reference = ema.em_attention(x, mu, n_iter=3, lam=lam)
    for f, p, r in zip(fused, plain, reference):
        _assert_on_gpu_and_close(f, p.get(), dtype)
        _assert_on_gpu_and_close(f, r, dtype)


@pytest.mark.gpu
def test_fused_history_matches_plain(rng):
    from em_tutorial.gpu import em_attention_fused

    x_d, mu_d = _to_gpu(_features(rng, (2, 400, 16)), _bases(rng, 6, 16))
    *_, fused = em_attention_fused(x_d, mu_d, n_iter=4, return_history=True)
    *_, plain = ema.em_attention(x_d, mu_d, n_iter=4, return_history=True)
    assert len(fused) == len(plain) == 4
    for f, p in zip(fused, plain):
        _assert_on_gpu_and_close(f.z, p.z.get(), np.float64)
        _assert_on_gpu_and_close(f.mu, p.mu.get(), np.float64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_steps_match_the_step_functions(rng, dtype):
    import cupy

    from em_tutorial.gpu import fused_attention_e_step, fused_attention_m_step

    x_d, mu_d = _to_gpu(_features(rng, (3, 2000, 40), dtype), _bases(rng, 33, 40, dtype, (3,)))
    z, partial_counts = fused_attention_e_step(x_d, mu_d, lam=3.0)
    _assert_on_gpu_and_close(z, ema.attention_e_step(x_d, mu_d, 3.0).get(), dtype)
    # the per-block partials add up to N_k = sum_n z_nk
    _assert_on_gpu_and_close(cupy.sum(partial_counts, axis=1), cupy.sum(z, axis=1).get(), dtype)
    np.testing.assert_allclose(cupy.sum(z, axis=-1).get(), 1.0, **TOL[dtype])
    mu_new = fused_attention_m_step(x_d, z, partial_counts)
    _assert_on_gpu_and_close(mu_new, ema.l2_normalize(ema.attention_m_step(x_d, z)).get(), dtype)


@pytest.mark.gpu
def test_fused_survives_large_logits_and_huge_features(rng):
    """Max-subtraction (no exp overflow) and the max-scaled norm (no square overflow)."""
    from em_tutorial.gpu import em_attention_fused

    x = (1e20 * _features(rng, (300, 8))).astype(np.float32)  # |x|^2 overflows float32
    mu = _bases(rng, 4, 8, np.float32)
    x_d, mu_d = _to_gpu(x, mu)
    z, mu_out, _ = em_attention_fused(x_d, mu_d, n_iter=2, lam=1.0)
    assert bool(np.all(np.isfinite(z.get()))) and bool(np.all(np.isfinite(mu_out.get())))
    norms = np.linalg.norm(mu_out.get(), axis=-1)  # 1, or 0 for a basis no pixel chose
    assert np.all(np.isclose(norms, 1.0, rtol=1e-5) | (norms == 0)), norms
    _assert_on_gpu_and_close(z, ema.em_attention(x, mu, n_iter=2)[0], np.float32)


@pytest.mark.gpu
def test_fused_is_deterministic(rng):
    from em_tutorial.gpu import em_attention_fused

    x_d, mu_d = _to_gpu(_features(rng, (2, 3000, 64), np.float32), _bases(rng, 64, 64, np.float32))
    first = em_attention_fused(x_d, mu_d)
    second = em_attention_fused(x_d, mu_d)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.get(), b.get())


@pytest.mark.gpu
def test_fused_refuses_mixed_numpy_and_cupy(rng):
    from em_tutorial.gpu import em_attention_fused

    x = _features(rng, (50, 8))
    (mu_d,) = _to_gpu(_bases(rng, 3, 8))
    with pytest.raises(TypeError, match="different libraries"):
        em_attention_fused(x, mu_d)
    with pytest.raises(TypeError, match="different libraries"):
        ema.em_attention(x, mu_d)


def test_fused_refuses_numpy_arrays_with_a_pointer_to_the_cpu_path(rng):
    from em_tutorial.gpu import em_attention_fused

    with pytest.raises(TypeError, match="CuPy arrays"):
        em_attention_fused(_features(rng, (50, 8)), _bases(rng, 3, 8))


@pytest.fixture
def fused_steps_on_numpy(monkeypatch):
    """em_tutorial.gpu.fused_ema with NumPy accepted in place of CuPy, for the shape checks
    that run before any kernel (the kernels themselves are not reached)."""
    from em_tutorial.backend import get_array_module
    from em_tutorial.gpu import fused_ema

    monkeypatch.setattr(fused_ema, "_cupy", lambda: np)
    monkeypatch.setattr(fused_ema, "_require_cupy", get_array_module)

    def no_kernel(name, dtype):
        raise AssertionError(f"kernel {name} launched despite invalid shapes")

    monkeypatch.setattr(fused_ema, "get_kernel", no_kernel)
    return fused_ema


def test_fused_e_step_refuses_bases_for_another_batch(fused_steps_on_numpy, rng):
    x = _features(rng, (1, 20, 8))
    with pytest.raises(ValueError, match=r"\(1, K, C\) or \(B, K, C\)"):
        fused_steps_on_numpy.fused_attention_e_step(x, _bases(rng, 3, 8, batch=(2,)))


@pytest.mark.parametrize(
    "z_shape,partial_shape",
    [((2, 20, 3), (1, 4, 3)), ((2, 20, 3), (2, 4, 5)), ((1, 20, 3), (1, 4, 3)),
     ((2, 19, 3), (2, 4, 3)), ((2, 20, 3), (2, 3))],
)
def test_fused_m_step_refuses_mismatched_shapes(fused_steps_on_numpy, rng, z_shape,
                                                partial_shape):
    x = _features(rng, (2, 20, 8))
    z, partial_counts = np.ones(z_shape), np.ones(partial_shape)
    with pytest.raises(ValueError, match=r"partial_counts \(B, P, K\)"):
        fused_steps_on_numpy.fused_attention_m_step(x, z, partial_counts)


@pytest.mark.gpu
def test_fused_validates_like_the_plain_path(rng):
    from em_tutorial.gpu import em_attention_fused

    x = _features(rng, (50, 8))
    x[3, 2] = np.nan
    x_d, mu_d = _to_gpu(x, _bases(rng, 3, 8))
    with pytest.raises(ValueError, match="NaN"):
        em_attention_fused(x_d, mu_d)
    with pytest.raises(ValueError, match="channel mismatch"):
        em_attention_fused(x_d[:, :4], mu_d)
    with pytest.raises(TypeError, match="float16"):
        em_attention_fused(x_d.astype(np.float16), mu_d.astype(np.float16))


# --- the loop stays on the device ---------------------------------------------------------------

_SPIN_SOURCE = r"""
extern "C" __global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


def _host_never_waits(run):
    """True if ``run()`` returns while the GPU is still busy with work queued before it.

    A kernel that spins for ~0.5 s is queued first; any host synchronisation inside ``run``
    (``.get()``, ``float()``, ``bool()`` of a device value) would wait for it to finish.
    """
    import cupy

    spin = cupy.RawKernel(_SPIN_SOURCE, "spin")
    spin((1,), (1,), (np.int64(1_000_000_000),))
    run()
    done = cupy.cuda.Event()
    done.record()
    still_busy = not done.done
    cupy.cuda.Device().synchronize()
    return still_busy


@pytest.mark.gpu
def test_em_loops_never_synchronise_with_the_host(rng):
    import cupy

    from em_tutorial.gpu.fused_ema import _fused_iterations

    x_d, mu_d = _to_gpu(_features(rng, (2, 2000, 64), np.float32), _bases(rng, 16, 64, np.float32))
    # warm up: compile the kernels, create the cuBLAS handle, fill CuPy's memory pool with the
    # blocks these calls need (a cudaMalloc may wait for the GPU; taking from the pool does not)
    _fused_iterations(x_d, mu_d[None], 3, 1.0, True)
    ema.em_iterations(x_d, mu_d, 3, 1.0, True)
    cupy.cuda.Device().synchronize()
    # the check itself can fail: a deliberate host read is caught
    assert not _host_never_waits(lambda: float(cupy.sum(x_d)))
    assert _host_never_waits(lambda: _fused_iterations(x_d, mu_d[None], 3, 1.0, True))
    assert _host_never_waits(lambda: ema.em_iterations(x_d, mu_d, 3, 1.0, True))


def test_tolerances_are_meaningful():
    # float32 tolerances far above its eps, and the absolute one at most 1% of the smallest
    # typical value compared (z ~ 1/K with K up to 100)
    assert np.finfo(np.float32).eps < TOL[np.float32]["rtol"] < 1e-3
    assert TOL[np.float32]["atol"] <= 0.01 * (1 / 100)
    assert math.isclose(TOL[np.float64]["rtol"], 1e-10)
