"""The fused kernels' CUDA source, executed on the CPU by a small thread-level emulator.

Not a GPU test and no substitute for one (that is test_gpu_ema.py): the same source text runs
here as C++ with one host thread per CUDA thread, ``__syncthreads`` and ``__shfl_xor_sync``
emulated with barriers, blocks one after another. It checks the kernels' *logic* (indexing,
the warp and block reductions, the partial column sums, in-place softmax, the launch
geometry the Python side chooses) on machines without a GPU. It cannot check NVRTC,
the GPU memory model, coalescing or speed.

Needs a C++20 compiler (``g++``); skipped with the reason otherwise.
"""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from em_tutorial import ema
from em_tutorial.gpu.fused_ema import _THREADS_NORMALIZE, softmax_launch_config
from em_tutorial.gpu.kernels import CUDA_SOURCE

CXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(CXX is None, reason="g++ (C++20) is not on PATH")

# Stand-ins for the CUDA built-ins the kernels use. Blocks run one after another, so a
# function-local `static` array is exactly one block's __shared__ memory.
_SHIM = r"""
#include <barrier>
#include <cstring>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

struct Dim3 { unsigned x = 1, y = 1, z = 1; };
thread_local Dim3 threadIdx, blockIdx;
static Dim3 blockDim, gridDim;
static std::barrier<>* block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
alignas(16) static unsigned char shuffle_slots[1024 * 8];
alignas(16) unsigned char shared_raw[64 * 1024];

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n)  // the buffer below is aligned already

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
template <typename T> T __shfl_xor_sync(unsigned, T v, int offset) {
    const unsigned t = threadIdx.x, warp = t >> 5, lane = t & 31;
    std::memcpy(shuffle_slots + 8 * t, &v, sizeof(T));
    warp_barriers[warp]->arrive_and_wait();
    T out;
    std::memcpy(&out, shuffle_slots + 8 * ((warp << 5) | (lane ^ offset)), sizeof(T));
    warp_barriers[warp]->arrive_and_wait();
    return out;
}
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

template <typename Kernel>
void launch(Dim3 grid, Dim3 block, Kernel kernel) {
    // One host thread per CUDA thread of a block; they walk the blocks together, and a
    // barrier after each block keeps its shared memory from being reused too early.
    gridDim = grid;
    blockDim = block;
    std::barrier<> barrier(block.x);
    block_barrier = &barrier;
    warp_barriers.clear();
    for (unsigned w = 0; w < block.x / 32; ++w)
        warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block.x; ++t)
        threads.emplace_back([=, &barrier] {
            threadIdx = Dim3{t, 0, 0};
            for (unsigned by = 0; by < grid.y; ++by)
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    blockIdx = Dim3{bx, by, 0};
                    kernel();
                    barrier.arrive_and_wait();
                }
        });
    for (auto& thread : threads) thread.join();
}
"""

_LAUNCHERS = r"""
#define LAUNCHERS(T, SUFFIX)                                                                  \
extern "C" void softmax_colsum_##SUFFIX(const T* logits, T* z, T* partial, T lam, int N,     \
                                        int K, unsigned gx, unsigned gy, unsigned threads) { \
    launch(Dim3{gx, gy, 1}, Dim3{threads, 1, 1},                                             \
           [=] { ema_softmax_colsum<T>(logits, z, partial, lam, N, K); });                   \
}                                                                                            \
extern "C" void normalize_bases_##SUFFIX(const T* numer, const T* partial, T* mu, int K,     \
                                         int C, int P, T eps, unsigned rows,                 \
                                         unsigned threads) {                                 \
    launch(Dim3{rows, 1, 1}, Dim3{threads, 1, 1},                                            \
           [=] { ema_normalize_bases<T>(numer, partial, mu, K, C, P, eps); });               \
}
LAUNCHERS(float, f)
LAUNCHERS(double, d)
"""


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    # The one textual change: `extern __shared__` (dynamic shared memory) becomes a plain
    # extern declaration of the shim's buffer, since `__shared__` expands to `static`.
    assert CUDA_SOURCE.count("extern __shared__") == 1
    source = _SHIM + CUDA_SOURCE.replace("extern __shared__", "extern") + _LAUNCHERS
    folder = tmp_path_factory.mktemp("emulated_kernels")
    (folder / "kernels.cpp").write_text(source)
    result = subprocess.run(
        [CXX, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-o", "kernels.so",
         "kernels.cpp"],
        capture_output=True, text=True, cwd=folder, timeout=120,
    )
    if result.returncode != 0 and "barrier" in result.stderr:
        pytest.skip(f"g++ lacks C++20 <barrier>: {result.stderr[:200]}")
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(folder / "kernels.so"))


def _ptr(array):
    assert array.flags.c_contiguous
    return array.ctypes.data_as(ctypes.c_void_p)


def _scalar(dtype):
    return ctypes.c_float if dtype == np.float32 else ctypes.c_double


def _suffix(dtype):
    return "f" if dtype == np.float32 else "d"


def emulated_e_step(lib, x, mu, lam):
    """Z and the partial column sums, from the kernel run on the CPU (in place, as on the GPU)."""
    dtype = x.dtype.type
    batch, n_points, _ = x.shape
    n_bases = mu.shape[-2]
    z = np.ascontiguousarray(np.matmul(x, np.swapaxes(mu, -1, -2)))  # (B, N, K)
    blocks, threads, _ = softmax_launch_config(batch, n_points, n_bases, dtype)
    partial = np.full((batch, blocks, n_bases), np.nan, dtype=dtype)  # (B, P, K)
    getattr(lib, f"softmax_colsum_{_suffix(dtype)}")(
        _ptr(z), _ptr(z), _ptr(partial), _scalar(dtype)(lam), n_points, n_bases,
        blocks, batch, threads,
    )
    return z, partial


def emulated_m_step(lib, x, z, partial, eps=ema.EPS, threads=64):
    """New unit-norm bases from the kernel run on the CPU.

    ``threads`` per block: the GPU launches _THREADS_NORMALIZE; any multiple of 32 exercises
    the same code, and fewer host threads keep the emulation fast.
    """
    dtype = x.dtype.type
    batch, _, n_bases = z.shape
    n_channels = x.shape[-1]
    numer = np.ascontiguousarray(np.matmul(np.swapaxes(z, -1, -2), x))  # (B, K, C)
    mu = np.full_like(numer, np.nan)
    getattr(lib, f"normalize_bases_{_suffix(dtype)}")(
        _ptr(numer), _ptr(partial), _ptr(mu), n_bases, n_channels, partial.shape[1],
        _scalar(dtype)(eps), batch * n_bases, threads,
    )
    return mu


def _data(rng, batch, n, c, k, dtype):
    x = rng.standard_normal((batch, n, c))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    mu = rng.standard_normal((batch, k, c))
    mu /= np.linalg.norm(mu, axis=-1, keepdims=True)
    return x.astype(dtype), mu.astype(dtype)


TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=2e-5, atol=1e-6)}
# K below, above and not a multiple of a warp; N not a multiple of 8 warps; C not of 256.
SHAPES = [(1, 5, 3, 2), (2, 70, 20, 37), (1, 20, 300, 70)]


@pytest.mark.parametrize(
    "dtype,batch,n,c,k,lam",
    [(dtype, *shape, 1.0) for dtype in (np.float64, np.float32) for shape in SHAPES]
    + [(np.float64, *SHAPES[1], 0.0), (np.float32, *SHAPES[1], 30.0)],
)
def test_emulated_softmax_kernel_matches_the_plain_e_step(emulated, rng, dtype, batch, n, c, k,
                                                          lam):
    x, mu = _data(rng, batch, n, c, k, dtype)
    z, partial = emulated_e_step(emulated, x, mu, lam)
    np.testing.assert_allclose(z, ema.attention_e_step(x, mu, lam), **TOL[dtype])
    # every partial slot was written, and they add up to N_k = sum_n z_nk
    assert not np.isnan(partial).any()
    np.testing.assert_allclose(partial.sum(axis=1), z.sum(axis=1), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch,n,c,k", SHAPES)
def test_emulated_normalize_kernel_matches_the_plain_m_step(emulated, rng, dtype, batch, n, c,
                                                             k):
    x, mu = _data(rng, batch, n, c, k, dtype)
    z, partial = emulated_e_step(emulated, x, mu, 1.0)
    got = emulated_m_step(emulated, x, z, partial)
    expected = ema.l2_normalize(ema.attention_m_step(x, z))
    np.testing.assert_allclose(got, expected, **TOL[dtype])


def test_emulated_normalize_kernel_with_the_gpu_block_size(emulated, rng):
    x, mu = _data(rng, 1, 30, 600, 3, np.float64)  # C > 2 x 256: several columns per thread
    z, partial = emulated_e_step(emulated, x, mu, 1.0)
    got = emulated_m_step(emulated, x, z, partial, threads=_THREADS_NORMALIZE)
    np.testing.assert_allclose(got, ema.l2_normalize(ema.attention_m_step(x, z)),
                               **TOL[np.float64])


def test_emulated_normalize_kernel_handles_an_empty_basis_and_huge_values(emulated, rng):
    x, mu = _data(rng, 1, 40, 8, 3, np.float32)
    x = x * np.float32(1e20)  # squares overflow float32 unless the norm is scaled first
    z = np.zeros((1, 40, 3), dtype=np.float32)
    z[0, :, 0] = 1.0  # basis 2 gets no pixel: N_k = 0
    z[0, :20, 0], z[0, :20, 1] = 0.5, 0.5
    _, partial = emulated_e_step(emulated, x, mu, 1.0)
    partial[:] = 0
    partial[0, 0] = z[0].sum(axis=0)
    got = emulated_m_step(emulated, x, z, partial)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[0, 2], 0.0)
    np.testing.assert_allclose(got, ema.l2_normalize(ema.attention_m_step(x, z)), rtol=1e-5)


# --- em_attention_fused end to end on the CPU: its Python side with the emulated kernels --------


@pytest.fixture
def fused_on_cpu(emulated, monkeypatch):
    """em_tutorial.gpu.fused_ema with NumPy standing in for CuPy and the kernels emulated.

    Runs the module's own orchestration (shapes, the shared-bases branch, launch geometry,
    argument order and types) on the CPU. NumPy has every CuPy call the module makes.
    """
    from em_tutorial.backend import get_array_module
    from em_tutorial.gpu import fused_ema

    launchers = {"ema_softmax_colsum": "softmax_colsum", "ema_normalize_bases": "normalize_bases"}

    def get_kernel(name, dtype):
        function = getattr(emulated, f"{launchers[name]}_{_suffix(np.dtype(dtype).type)}")

        def launch(grid, block, args, shared_mem=0):
            assert shared_mem <= 64 * 1024  # the shim's dynamic shared-memory buffer
            converted = []
            for arg in args:
                if isinstance(arg, np.ndarray):
                    assert arg.dtype == np.dtype(dtype)
                    converted.append(_ptr(arg))
                elif isinstance(arg, np.int32):
                    converted.append(int(arg))
                else:  # the kernel's T scalar must arrive as exactly T
                    assert type(arg) is np.dtype(dtype).type, (name, type(arg))
                    converted.append(_scalar(type(arg))(arg))
            function(*converted, *grid, *block)

        return launch

    monkeypatch.setattr(fused_ema, "_cupy", lambda: np)
    monkeypatch.setattr(fused_ema, "_require_cupy", get_array_module)
    monkeypatch.setattr(fused_ema, "get_kernel", get_kernel)
    # fewer host threads per block (the GPU's 256 are emulated in their own test above)
    monkeypatch.setattr(fused_ema, "_THREADS_NORMALIZE", 64)
    return fused_ema.em_attention_fused


@pytest.mark.parametrize("x_shape,mu_shape", [((30, 6), (4, 6)), ((2, 30, 6), (4, 6)),
                                              ((2, 30, 6), (2, 4, 6))])
def test_emulated_em_attention_fused_matches_em_attention(fused_on_cpu, rng, x_shape, mu_shape):
    x, mu = rng.standard_normal(x_shape), rng.standard_normal(mu_shape)
    got = fused_on_cpu(x, mu, n_iter=3, lam=1.5, return_history=True)
    expected = ema.em_attention(x, mu, n_iter=3, lam=1.5, return_history=True)
    for g, e in zip(got[:3], expected[:3]):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, **TOL[np.float64])
    assert len(got[3]) == 3
    for g, e in zip(got[3], expected[3]):
        np.testing.assert_allclose(g.z, e.z, **TOL[np.float64])
        np.testing.assert_allclose(g.mu, e.mu, **TOL[np.float64])
