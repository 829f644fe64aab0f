"""EM attention on NumPy, fast: the equations of :mod:`em_tutorial.ema`, fewer passes over memory.

:func:`em_tutorial.ema.em_attention` is the lesson: one function per step, each allocating
its result. At EMANet's size (B = 4 feature maps of N = 97 x 97 pixels, C = 512, K = 64,
T = 3, float32) the two (N, C, K) matrix products of each iteration are most of the work,
and what is left is element-wise passes over the (B, N, K) responsibilities. Four tricks
cut those passes without changing a single equation:

1. **A_M divides after the product.** ``mu_k = (sum_n z_nk x_n) / (eps + N_k)`` divides the
   (K, C) product instead of turning the (N, K) matrix z into weights first: one pass over
   z fewer, and N/C times fewer divisions.
2. **x^T z instead of z^T x.** The same product computed as ``mu^T = x^T z`` (C, K) and
   transposed back: the orientation in which OpenBLAS runs this tall, thin product faster.
3. **In-place softmax** (:func:`softmax_last_axis_inplace`): max, subtract, exp and
   normalise written into the logits themselves, without the three temporaries of z's
   size that :func:`em_tutorial.ema.softmax` allocates; ``fmax.reduce`` finds the row
   maxima faster than ``max`` along the short K axis.
4. **One buffer for z.** ``np.matmul(x, mu^T, out=z)`` writes every iteration's logits into
   the same (B, N, K) array instead of a fresh one.

Measured by ``python benchmarks/bench_ema.py --ladder`` (each trick added to the previous
ones; time of the version before / time with the trick, the median ratio of alternating
repeats in one run, on a shared 2-core machine that other jobs were loading, so only the
ratios are meaningful and they should be re-measured on a quiet machine):

=================================  ============
trick                              speed-up
=================================  ============
1. A_M divides after the product   MEASURE_1
2. x^T z orientation               MEASURE_2
3. in-place softmax                MEASURE_3
4. one buffer for z                MEASURE_4
all four against the plain path    MEASURE_ALL
=================================  ============

The tests (``tests/test_ema.py``) check that :func:`em_attention_fast` gives the numbers of
:func:`em_tutorial.ema.em_attention` to a few units of the dtype's rounding.
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, is_numpy_namespace
from .ema import EPS, EMIteration, em_attention, l2_normalize

__all__ = ["softmax_last_axis_inplace", "em_attention_fast", "em_iterations_fast"]


def softmax_last_axis_inplace(a):
    """:func:`em_tutorial.ema.softmax` along the last axis, written into ``a`` (NumPy only).

    Same operations as the plain softmax, without its three temporaries of ``a``'s size.
    ``fmax.reduce`` gives the same maximum as ``max`` for NaN-free input (the callers check
    for NaN) and is several times faster along a short last axis.

    Parameters
    ----------
    a : numpy.ndarray, shape (..., K)
        Logits; overwritten by the probabilities.

    Returns
    -------
    numpy.ndarray
        ``a`` itself, every row summing to 1.
    """
    a -= np.fmax.reduce(a, axis=-1, keepdims=True)
    np.exp(a, out=a)
    a /= np.sum(a, axis=-1, keepdims=True)
    return a


def em_attention_fast(x, mu, n_iter=3, lam=1.0, return_history=False):
    """:func:`em_tutorial.ema.em_attention` for NumPy arrays, with the four tricks above.

    Same arguments, results (up to rounding), shapes and errors as
    :func:`em_tutorial.ema.em_attention`; ``x`` (N, C) or (B, N, C), ``mu`` (K, C) or
    (B, K, C), and it returns ``z`` (..., N, K), ``mu`` (..., K, C), ``x_tilde`` (..., N, C)
    and, with ``return_history=True``, the list of every iteration's :class:`EMIteration`.

    Raises
    ------
    TypeError
        ``x`` or ``mu`` is not a NumPy array (use :func:`em_tutorial.ema.em_attention`, which
        takes any array library), and as :func:`em_tutorial.ema.em_attention`.
    ValueError
        As :func:`em_tutorial.ema.em_attention` (rules in :mod:`em_tutorial.ema_validation`).
    """
    if not is_numpy_namespace(get_array_module(x, mu)):
        raise TypeError(
            f"em_attention_fast takes NumPy arrays, got {type(x).__module__}.{type(x).__name__}; "
            "em_tutorial.ema.em_attention runs the same equations on any array library"
        )
    # the checks and A_R of the plain function, with the loop of this module
    return em_attention(x, mu, n_iter, lam, return_history, iterations=em_iterations_fast)


def em_iterations_fast(x, mu, n_iter=3, lam=1.0, keep_history=False):
    """The T iterations of :func:`em_attention_fast` on validated NumPy arrays.

    Same contract as :func:`em_tutorial.ema.em_iterations`: returns the last ``z``
    (..., N, K), the last ``mu`` (..., K, C) and the history (empty unless ``keep_history``).
    """
    z_shape = x.shape[:-1] + (mu.shape[-2],)  # (..., N, K)
    z = np.empty(z_shape, dtype=x.dtype)
    history = []
    for _ in range(n_iter):
        if keep_history and history:
            z = np.empty(z_shape, dtype=x.dtype)  # the previous z is kept, do not overwrite it
        # A_E: lambda x mu^T into the reused buffer:  (..., N, C) @ (..., C, K) -> (..., N, K)
        np.matmul(x, mu.mT, out=z)
        if lam != 1.0:
            z *= lam
        softmax_last_axis_inplace(z)
        # A_M: sum_n z_nk x_n / (eps + N_k), dividing the (C, K) product rather than the
        # (N, K) weights; computed as mu^T = x^T z, the faster orientation for OpenBLAS
        counts = np.sum(z, axis=-2, keepdims=True)  # (..., 1, K)
        mu_t = np.matmul(x.mT, z)  # (..., C, N) @ (..., N, K) -> (..., C, K)
        mu_t /= EPS + counts
        mu = l2_normalize(mu_t.mT)  # (..., K, C)
        if keep_history:
            history.append(EMIteration(z, mu))
    return z, mu, history
