"""EM attention on NumPy, fast: the equations of :mod:`em_tutorial.ema`, fewer memory passes.

:func:`em_tutorial.ema.em_attention` is the lesson: one function per step, each allocating
its result. At EMANet's size (B = 4 feature maps of N = 97 x 97 pixels, C = 512, K = 64,
T = 3, float32) the two (N, C, K) matrix products of each iteration are most of the work,
and what is left is element-wise passes over the (B, N, K) responsibilities. Four tricks
cut those passes without changing a single equation:

1. **A_M divides after the product.** ``mu_k = (sum_n z_nk x_n) / (eps + N_k)`` divides the
   (K, C) product instead of turning the (N, K) matrix z into weights first: one pass over
   z fewer, and N/C times fewer divisions.
2. **x^T z instead of z^T x.** The same product computed as ``mu^T = x^T z`` (C, K) and
   transposed back: the orientation OpenBLAS ran faster here, for this tall, thin product.
3. **In-place softmax** (:func:`softmax_last_axis_inplace`): max, subtract, exp and
   normalise written into the logits themselves, without the three temporaries of z's
   size that :func:`em_tutorial.ema.softmax` allocates; ``fmax.reduce`` finds the row
   maxima faster than ``max`` along the short K axis.
4. **One buffer for z.** ``np.matmul(x, mu^T, out=z)`` writes every iteration's logits into
   the same (B, N, K) array instead of a fresh one.

Measured by ``python benchmarks/bench_ema.py --ladder``, which adds the tricks one after the
other in this order and runs the rungs alternately in each repeat. Peak memory of the T
iterations (``tracemalloc``) does not depend on the machine's load; the times do, and the
project's 2-core machine was shared with other jobs during these runs, so the speed-ups
below are the spread of the per-run medians of (time before / time with the trick) over six
runs (five of them also timed the reconstruction, the same for every rung), to be
re-measured on a quiet machine before they are quoted:

=================================  ===========  ============================
trick                              peak memory  speed-up, six loaded runs
=================================  ===========  ============================
none (``ema.em_iterations``)       37.4 MiB     --
1. A_M divides after the product   37.4 MiB     0.77x - 1.37x
2. x^T z orientation               37.4 MiB     0.96x - 3.15x
3. in-place softmax                18.9 MiB     0.98x - 1.12x
4. one buffer for z                10.7 MiB     0.94x - 1.04x
all four                           10.7 MiB     1.05x - 3.14x (1.21x with one BLAS thread)
=================================  ===========  ============================

z itself is 9.2 MiB here: the fast loop holds little more than z, the plain one four times
as much. The time of one trick is within the noise of a loaded machine except the
orientation, which bought most when both cores were busiest. On a quiet run of the same
machine (``benchmarks/RESULTS.md``) the whole fast path took 134 ms against 166 ms for the
plain ``em_attention`` (1.23x).

The tests (``tests/test_ema.py``) check that :func:`em_attention_fast` gives the numbers of
:func:`em_tutorial.ema.em_attention` to a few units of the dtype's rounding.
"""

from __future__ import annotations

import numpy as np

from .backend import is_numpy_namespace
from .ema import EPS, EMIteration, em_attention, l2_normalize
from .ema_validation import array_namespace

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
    if not is_numpy_namespace(array_namespace(x, mu)):
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
