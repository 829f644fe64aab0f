"""CUDA source of the fused EM-attention kernels, and their compilation with CuPy.

The source is plain CUDA C++ with no ``#include``: CuPy compiles it at run time with NVRTC
(:class:`cupy.RawModule`), and the test suite compiles the very same string with ``nvcc`` on
machines without a GPU, so a typo is caught before anyone reaches a GPU.

Two kernels, each templated on the element type ``T`` (``float`` or ``double``):

``ema_softmax_colsum<T>``
    A_E and half of A_M in one pass over the (B, N, K) logits ``S = X mu^T``. One warp owns one
    row n: it finds ``max_k lam * s_nk``, the sum of ``exp(lam * s_nk - max)``, and writes
    ``z_nk``. While each ``z_nk`` is still in a register it is added to per-warp column sums
    in shared memory, and each block writes one (K,) partial of ``N_k = sum_n z_nk``. The plain
    CuPy code needs a separate pass over the N x K matrix for each of: the scaling by lambda,
    the max, the subtraction, the exp, the row sum, the division, the column sum and the
    division by ``eps + N_k``.
``ema_normalize_bases<T>``
    The other half of A_M and the L2 normalisation, on the small (B, K, C) matrix
    ``U = Z^T X``: one block per base k sums the partials into ``N_k``, forms
    ``m_k = U_k / (eps + N_k)`` and writes ``m_k / (eps + ||m_k||)``, the norm taken as
    ``s ||m_k / s||`` with ``s = max_c |m_kc|`` like ``em_tutorial.ema.l2_normalize`` does.
    Dividing ``U`` by ``eps + N_k`` instead of dividing ``Z`` before the matmul is the same
    number up to rounding and moves that division from the N x K matrix onto the K x C one.

Both kernels are deterministic: no atomics, every sum is taken in a fixed order.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["CUDA_SOURCE", "KERNEL_NAMES", "cuda_type_name", "get_kernel", "instantiation_source"]

KERNEL_NAMES = ("ema_softmax_colsum", "ema_normalize_bases")

# Number of warps (rows processed at once) per block of ``ema_softmax_colsum``.
WARPS_PER_BLOCK = 8

CUDA_SOURCE = r"""
// Type-dispatched maths helpers: NVRTC has no <cmath>, so pick the float/double
// built-ins explicitly instead of relying on overloads.
__device__ __forceinline__ float ema_exp(float v) { return expf(v); }
__device__ __forceinline__ double ema_exp(double v) { return exp(v); }
__device__ __forceinline__ float ema_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double ema_sqrt(double v) { return sqrt(v); }
__device__ __forceinline__ float ema_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double ema_max(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float ema_abs(float v) { return fabsf(v); }
__device__ __forceinline__ double ema_abs(double v) { return fabs(v); }
__device__ __forceinline__ void ema_neg_inf(float* v) { *v = __int_as_float(0xff800000); }
__device__ __forceinline__ void ema_neg_inf(double* v) {
    *v = __longlong_as_double(0xfff0000000000000LL);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = ema_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// logits, z: (B, N, K) row-major; z may be the same buffer as logits (in place).
// partial:   (B, gridDim.x, K), one column sum of z per block.
// Grid (blocks_per_batch, B); block (32 * warps); dynamic shared memory warps * K * sizeof(T).
// Lane l of a warp owns columns l, l + 32, l + 64, ... so no two threads of a block ever
// touch the same shared-memory slot and no atomics are needed.
template <typename T>
__global__ void ema_softmax_colsum(const T* logits, T* z, T* partial, const T lam,
                                   const int N, const int K) {
    extern __shared__ __align__(16) unsigned char shared_raw[];
    T* colsum = reinterpret_cast<T*>(shared_raw);
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    const long long batch = blockIdx.y;
    T* my_colsum = colsum + warp * K;
    for (int k = lane; k < K; k += 32) my_colsum[k] = T(0);

    for (int n = blockIdx.x * warps + warp; n < N; n += gridDim.x * warps) {
        const long long row = (batch * N + n) * (long long)K;
        // max_k lam * s_nk, subtracted before exp so that exp never overflows.
        T row_max;
        ema_neg_inf(&row_max);
        for (int k = lane; k < K; k += 32) row_max = ema_max(row_max, lam * logits[row + k]);
        row_max = warp_max(row_max);
        // sum_k exp(lam * s_nk - max): the softmax denominator.
        T row_sum = T(0);
        for (int k = lane; k < K; k += 32) row_sum += ema_exp(lam * logits[row + k] - row_max);
        row_sum = warp_sum(row_sum);
        // z_nk = exp(lam * s_nk - max) / sum, and its contribution to N_k = sum_n z_nk.
        // Each lane reads logits[row + k] before writing z[row + k], so in place is safe.
        for (int k = lane; k < K; k += 32) {
            const T z_nk = ema_exp(lam * logits[row + k] - row_max) / row_sum;
            z[row + k] = z_nk;
            my_colsum[k] += z_nk;
        }
    }
    __syncthreads();
    // Sum the per-warp column sums in a fixed order: one (K,) partial per block.
    T* out = partial + (batch * gridDim.x + blockIdx.x) * (long long)K;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        T total = T(0);
        for (int w = 0; w < warps; ++w) total += colsum[w * K + k];
        out[k] = total;
    }
}

// Reduce v over the whole block (sum, or max of non-negative values); every thread gets the
// result. scratch: 32 slots of shared memory, free again when this returns.
template <typename T, bool IS_MAX>
__device__ __forceinline__ T block_reduce(T v, T* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = IS_MAX ? warp_max(v) : warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : T(0);
        v = IS_MAX ? warp_max(v) : warp_sum(v);
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    const T result = scratch[0];
    __syncthreads();
    return result;
}

// numer: (R, C) with R = B * K rows, numer_r = sum_n z_nk x_n (the matmul Z^T X).
// partial: (B, P, K) from ema_softmax_colsum; mu: (R, C) output.
// Grid (R); block of a multiple of 32 threads, at most 1024; no dynamic shared memory.
template <typename T>
__global__ void ema_normalize_bases(const T* numer, const T* partial, T* mu, const int K,
                                    const int C, const int P, const T eps) {
    __shared__ T scratch[32];
    const long long r = blockIdx.x;
    const long long batch = r / K;
    const int k = (int)(r % K);
    const T* numer_r = numer + r * C;
    // N_k = sum over the P block partials (a fixed order, hence deterministic).
    T n_k = T(0);
    for (int p = 0; p < P; ++p) n_k += partial[(batch * P + p) * K + k];
    // m_k = sum_n z_nk x_n / (eps + N_k)
    const T denom = eps + n_k;
    // |m_k| = s |m_k / s| with s = max_c |m_kc|, as em_tutorial.ema.l2_normalize does, so
    // that squaring cannot overflow in float32.
    T s = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) s = ema_max(s, ema_abs(numer_r[c] / denom));
    s = block_reduce<T, true>(s, scratch);
    if (!(s > T(0))) s = T(1);
    T sq = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T scaled = numer_r[c] / denom / s;
        sq += scaled * scaled;
    }
    sq = block_reduce<T, false>(sq, scratch);
    // mu_k = m_k / (eps + |m_k|)
    const T scale = eps + s * ema_sqrt(sq);
    for (int c = threadIdx.x; c < C; c += blockDim.x) mu[r * C + c] = numer_r[c] / denom / scale;
}
"""

# The element types the kernels are instantiated for, by NumPy dtype.
_CUDA_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_TYPES = tuple(_CUDA_TYPES.values())


def _name_expressions():
    return tuple(f"{name}<{t}>" for name in KERNEL_NAMES for t in _TYPES)


def instantiation_source() -> str:
    """``CUDA_SOURCE`` plus explicit instantiations, for compiling it offline with ``nvcc``.

    CuPy instantiates the templates itself (``name_expressions``); a plain compiler needs them
    spelled out, otherwise it emits no code and checks nothing beyond the template bodies.
    """
    lines = [CUDA_SOURCE]
    signatures = {
        "ema_softmax_colsum": "(const {t}*, {t}*, {t}*, const {t}, const int, const int)",
        "ema_normalize_bases": (
            "(const {t}*, const {t}*, {t}*, const int, const int, const int, const {t})"
        ),
    }
    for name in KERNEL_NAMES:
        for t in _TYPES:
            args = signatures[name].format(t=t)
            lines.append(f"template __global__ void {name}<{t}>{args};")
    return "\n".join(lines) + "\n"


@functools.cache
def _module(device_id):
    """The kernels compiled for one GPU (a module is tied to the device it was loaded on)."""
    import cupy

    return cupy.RawModule(
        code=CUDA_SOURCE, options=("--std=c++14",), name_expressions=_name_expressions()
    )


def cuda_type_name(dtype) -> str:
    """The kernels' element type for ``dtype``: ``"float"`` or ``"double"``.

    Raises
    ------
    TypeError
        For any dtype other than float32 and float64.
    """
    type_name = _CUDA_TYPES.get(np.dtype(dtype))
    if type_name is None:
        raise TypeError(f"fused kernels support float32 and float64, got {np.dtype(dtype)}")
    return type_name


def get_kernel(name: str, dtype):
    """The compiled kernel ``name`` for ``dtype`` (float32 or float64); compiled once a process."""
    type_name = cuda_type_name(dtype)
    if name not in KERNEL_NAMES:
        raise ValueError(f"unknown kernel {name!r}; known: {KERNEL_NAMES}")
    import cupy

    return _module(cupy.cuda.Device().id).get_function(f"{name}<{type_name}>")
