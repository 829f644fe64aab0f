"""EM attention on the GPU: the plain CuPy port beside a fused version.

The plain version is :func:`em_tutorial.ema.em_attention` itself, called with CuPy arrays: the
``xp`` idiom runs the same lines on the GPU. It is already fast where the work is two matrix
products per iteration (cuBLAS does those), but everything between them is a chain of small
element-wise kernels, and each one reads and writes the whole (B, N, K) responsibility matrix:

=========================================  ========================  ======================
step (equation)                            plain CuPy                fused
=========================================  ========================  ======================
``S = X mu^T``                             matmul                    matmul
``lam * S``, ``max_k``, ``- max``, exp,    8 kernels, ~8 reads and   1 kernel
row sum, ``/ sum``, column sum ``N_k``,    5 writes of N x K         (1 read, 1 write)
``Z / (eps + N_k)``
``U = Z_^T X``                             matmul                    matmul (on ``Z``)
``/ (eps + N_k)``, ``||.||``, ``/``        ~8 kernels on K x C       1 kernel on K x C
=========================================  ========================  ======================

In the fused kernels (CUDA source in :mod:`em_tutorial.gpu.kernels`) one warp owns one row
of K logits and computes its max, its sum, its softmax and its share of the column sums while
the row is still in the cache, so the N x K matrix crosses the memory bus twice per
iteration instead of about thirteen times, and 2 kernels are launched instead of about 16.
The matrix products are the same cuBLAS calls in both versions. The loop never waits for
the host: no ``.get()``, no Python ``float()`` of a device value, no data-dependent branch.
"""

from __future__ import annotations

import math

import numpy as np

from em_tutorial.backend import get_array_module, is_cupy_namespace
from em_tutorial.ema import EPS, EMIteration
from em_tutorial.ema_validation import array_namespace, validate_em_attention_inputs
from em_tutorial.gpu.kernels import WARPS_PER_BLOCK, cuda_type_name, get_kernel

__all__ = [
    "softmax_launch_config",
    "fused_attention_e_step",
    "fused_attention_m_step",
    "em_attention_fused",
]

# Enough blocks of ema_softmax_colsum in flight to fill a large GPU (~1000 blocks of 256
# threads); more would only lengthen the (B, P, K) partial sums that A_M adds up.
_TARGET_BLOCKS = 1024
_THREADS_NORMALIZE = 256
# ema_softmax_colsum keeps WARPS_PER_BLOCK column sums of length K in shared memory.
_SHARED_MEMORY_LIMIT = 48 * 1024
# gridDim.y, one per image, is limited to 65535 by CUDA.
_MAX_GRID_Y = 65535


def softmax_launch_config(batch, n_points, n_bases, dtype):
    """Grid and block of ``ema_softmax_colsum``: (P blocks per image, threads, shared bytes).

    One warp per row; a block of WARPS_PER_BLOCK warps walks rows ``n = p * W + w``,
    ``n + P * W``, ... so P blocks per image cover all N rows.
    """
    if batch > _MAX_GRID_Y:
        raise ValueError(
            f"a batch of {batch} images exceeds the CUDA grid limit of {_MAX_GRID_Y} "
            "(one grid row per image); split the batch"
        )
    shared_bytes = WARPS_PER_BLOCK * n_bases * np.dtype(dtype).itemsize
    if shared_bytes > _SHARED_MEMORY_LIMIT:
        raise ValueError(
            f"K={n_bases} bases need {shared_bytes} bytes of shared memory per block, more than "
            f"{_SHARED_MEMORY_LIMIT}; use the plain em_tutorial.ema.em_attention"
        )
    blocks = max(1, min(math.ceil(n_points / WARPS_PER_BLOCK), math.ceil(_TARGET_BLOCKS / batch)))
    return blocks, 32 * WARPS_PER_BLOCK, shared_bytes


def _cupy():
    """The cupy module, imported on first use so that this module imports without it."""
    import cupy

    return cupy


def _require_cupy(*arrays):
    """The namespace of ``arrays``; TypeError unless they are all CuPy arrays."""
    xp = get_array_module(*arrays)  # TypeError on mixed NumPy / CuPy
    if not is_cupy_namespace(xp):
        raise TypeError(
            "the fused kernels need CuPy arrays on the GPU, got "
            f"{sorted({type(a).__module__ + '.' + type(a).__name__ for a in arrays})}; move them "
            "with em_tutorial.gpu.to_gpu(...) or use em_tutorial.ema.em_attention on the CPU"
        )
    return xp


def _check_cupy(*arrays):
    """The common dtype of ``arrays``; TypeError unless all CuPy and all float32 or float64."""
    _require_cupy(*arrays)
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) > 1:
        raise TypeError(f"all arrays must share one dtype, got {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    cuda_type_name(dtype)  # TypeError unless float32 or float64
    return dtype


def fused_attention_e_step(x, mu, lam=1.0):
    """A_E, fused: ``Z = softmax_k(lam X mu^T)`` plus the column sums A_M needs.

    Parameters
    ----------
    x : cupy.ndarray, shape (B, N, C)
        The N feature vectors ``x_n`` of each of B images.
    mu : cupy.ndarray, shape (K, C) or (B, K, C)
        The K bases ``mu_k`` (shared by the batch, or one set per image).
    lam : float
        ``lambda = 1 / sigma^2``, the inverse temperature of the softmax.

    Returns
    -------
    z : cupy.ndarray, shape (B, N, K)
        Responsibilities ``z_nk``, each row summing to one.
    partial_counts : cupy.ndarray, shape (B, P, K)
        Per-block partial sums of ``z_nk`` over n; summed in :func:`fused_attention_m_step`
        into ``N_k = sum_n z_nk`` without another pass over Z.
    """
    dtype = _check_cupy(x, mu)
    cupy = _cupy()

    if (x.ndim != 3 or mu.ndim not in (2, 3) or x.shape[-1] != mu.shape[-1]
            or (mu.ndim == 3 and mu.shape[0] not in (1, x.shape[0]))):
        raise ValueError(
            f"expected x (B, N, C) and mu (K, C), (1, K, C) or (B, K, C), got {x.shape} and "
            f"{mu.shape}"
        )
    batch, n_points, _ = x.shape
    n_bases = mu.shape[-2]
    blocks, threads, shared_bytes = softmax_launch_config(batch, n_points, n_bases, dtype)
    if mu.ndim == 2 or mu.shape[0] == 1:
        # Bases shared by the batch (the first iteration): one tall product instead of B
        # small ones.  S = X mu^T                      # (B N, C) @ (C, K) -> (B N, K)
        shared = mu.reshape(n_bases, -1)
        z = cupy.matmul(x.reshape(batch * n_points, -1), shared.T).reshape(batch, n_points, -1)
    else:
        # S = X mu^T                                   # (B, N, C) @ (B, C, K) -> (B, N, K)
        z = cupy.matmul(x, cupy.swapaxes(mu, -1, -2))
    z = cupy.ascontiguousarray(z)
    partial_counts = cupy.empty((batch, blocks, n_bases), dtype=dtype)  # (B, P, K)
    # z_nk = exp(lam s_nk - max_j lam s_nj) / sum_j exp(lam s_nj - max_j lam s_nj), in place.
    get_kernel("ema_softmax_colsum", dtype)(
        (blocks, batch),
        (threads,),
        (z, z, partial_counts, dtype.type(lam), np.int32(n_points), np.int32(n_bases)),
        shared_mem=shared_bytes,
    )
    return z, partial_counts


def fused_attention_m_step(x, z, partial_counts, eps=EPS):
    """A_M and the L2 normalisation, fused after one matmul.

    ``mu_k = m_k / (eps + ||m_k||)`` with ``m_k = sum_n z_nk x_n / (eps + N_k)``.

    Parameters
    ----------
    x : cupy.ndarray, shape (B, N, C)
    z : cupy.ndarray, shape (B, N, K)
        Responsibilities from :func:`fused_attention_e_step`.
    partial_counts : cupy.ndarray, shape (B, P, K)
        Its partial column sums.
    eps : float
        Keeps both divisions finite (an empty base, a zero vector).

    Returns
    -------
    mu : cupy.ndarray, shape (B, K, C)
        Unit-norm bases.
    """
    dtype = _check_cupy(x, z, partial_counts)
    cupy = _cupy()

    # The kernel indexes partial_counts by z's batch and K: a mismatch would read out of bounds.
    if (x.ndim != 3 or z.ndim != 3 or partial_counts.ndim != 3 or x.shape[:2] != z.shape[:2]
            or (partial_counts.shape[0], partial_counts.shape[2]) != (z.shape[0], z.shape[2])):
        raise ValueError(
            "expected x (B, N, C), z (B, N, K) and partial_counts (B, P, K), got "
            f"{x.shape}, {z.shape} and {partial_counts.shape}"
        )
    batch, _, n_bases = z.shape
    n_channels = x.shape[-1]
    # U = Z^T X: sum_n z_nk x_n                        # (B, K, N) @ (B, N, C) -> (B, K, C)
    numer = cupy.ascontiguousarray(cupy.matmul(cupy.swapaxes(z, -1, -2), x))
    mu = cupy.empty_like(numer)  # (B, K, C)
    get_kernel("ema_normalize_bases", dtype)(
        (batch * n_bases,),
        (_THREADS_NORMALIZE,),
        (
            numer,
            cupy.ascontiguousarray(partial_counts),
            mu,
            np.int32(n_bases),
            np.int32(n_channels),
            np.int32(partial_counts.shape[1]),
            dtype.type(eps),
        ),
    )
    return mu


def em_attention_fused(x, mu, n_iter=3, lam=1.0, return_history=False):
    """EM attention with the fused kernels; same arguments and results as ``em_attention``.

    Parameters
    ----------
    x : cupy.ndarray, shape (N, C) or (B, N, C)
        Features x (float32 is the GPU default; float64 works too).
    mu : cupy.ndarray, shape (K, C) or (B, K, C)
        Initial bases mu^(0), shared by the batch when 2-D.
    n_iter : int
        T, the number of A_E/A_M iterations (3 in EMANet).
    lam : float
        lambda in ``softmax(lambda X mu^T)``.
    return_history : bool
        Also return every iteration's ``EMIteration(z, mu)``, as ``em_attention`` does.

    Returns
    -------
    z : cupy.ndarray, shape (N, K) or (B, N, K)
        Responsibilities of the last A_E step.
    mu : cupy.ndarray, shape (K, C) or (B, K, C)
        Bases after the last A_M step (batched whenever ``x`` is).
    x_tilde : cupy.ndarray, shape (N, C) or (B, N, C)
        A_R, the reconstruction ``Z mu``.
    history : list of EMIteration
        Only with ``return_history=True``.

    Raises
    ------
    TypeError
        Arrays that are not CuPy, or mixed NumPy and CuPy; and as ``em_attention``.
    ValueError
        As ``em_attention``. Both follow :mod:`em_tutorial.ema_validation`: the same bad
        input gives the same error on every stage, float32 with float64 is promoted.
    """
    # The rules of every stage (em_tutorial.ema_validation), checked before the arrays must
    # be CuPy ones, so that they hold, and are tested, for any array library. The NaN/inf
    # check reads one boolean back to the host: once, before the loop, never inside it.
    x, mu = validate_em_attention_inputs(array_namespace(x, mu), x, mu, n_iter, lam)
    _require_cupy(x, mu)
    cupy = _cupy()
    n_bases, n_channels = mu.shape[-2:]
    x3 = cupy.ascontiguousarray(x.reshape(-1, *x.shape[-2:]))  # (B, N, C)
    mu3 = cupy.ascontiguousarray(mu.reshape(-1, n_bases, n_channels))  # (B or 1, K, C)
    z, mu3, history3 = _fused_iterations(x3, mu3, n_iter, lam, return_history)
    # A_R: x~_n = sum_k z_nk mu_k                      # (B, N, K) @ (B, K, C) -> (B, N, C)
    x_tilde = cupy.matmul(z, mu3)
    z = z.reshape(*x.shape[:-1], n_bases)  # (..., N, K)
    mu = mu3.reshape(*x.shape[:-2], n_bases, n_channels)  # (..., K, C)
    x_tilde = x_tilde.reshape(x.shape)  # (..., N, C)
    if return_history:
        history = [
            EMIteration(z_t.reshape(z.shape), mu_t.reshape(mu.shape)) for z_t, mu_t in history3
        ]
        return z, mu, x_tilde, history
    return z, mu, x_tilde


def _fused_iterations(x3, mu3, n_iter, lam, keep_history):
    """The T iterations on validated (B, N, C) and (B or 1, K, C) arrays. Never syncs the host."""
    history = []
    for _ in range(n_iter):
        z, partial_counts = fused_attention_e_step(x3, mu3, lam)  # (B, N, K), (B, P, K)
        mu3 = fused_attention_m_step(x3, z, partial_counts)  # (B, K, C)
        if keep_history:
            history.append(EMIteration(z, mu3))
    return z, mu3, history
