"""EM attention (EMA): the few EM iterations that EMANet runs on a feature map.

From the Gaussian mixture to EM attention
-----------------------------------------
Take the mixture's E-step (5), ``z_nk = N(x_n | mu_k, Sigma_k) / sum_j N(x_n | mu_j, Sigma_j)``,
and fix three things: one spherical covariance ``Sigma_k = sigma^2 I`` for all k, uniform
mixing weights, and unit-norm bases ``mu_k`` (any common length would do). Then

    log N(x_n | mu_k, sigma^2 I) = -(|x_n|^2 - 2 x_n^T mu_k + |mu_k|^2) / (2 sigma^2) + const
                                 = x_n^T mu_k / sigma^2 + (terms equal for every k),

and the terms equal for every k (|x_n|^2 always, |mu_k|^2 because all bases share one length)
cancel in the softmax over k, so

    z_nk = softmax_k(lambda x_n^T mu_k),   lambda = 1 / sigma^2.

:func:`spherical_gmm_parameters` writes down the mixture this E-step belongs to. EMANet keeps
the kernel fixed (lambda = 1 in the official code) and iterates T times:

- A_E  ``z = softmax_k(lambda x mu^T)``                         (N, K)
- A_M  ``mu_k = sum_n z_nk x_n / (eps + sum_n z_nk)``, then ``mu_k <- mu_k / (eps + |mu_k|)``
- after the last iteration, A_R ``x_tilde = z mu``               (N, C)

``eps = 1e-6`` in both places, as in the official EMANet code, so that the PyTorch stage
matches these numbers. The L2 normalisation keeps every ``|mu_k|`` at (almost) 1, so the
logits ``lambda x_n^T mu_k`` stay on the scale of ``lambda |x_n|``; without it the bases take
the scale of the features, the logits grow with it and the softmax saturates.

Every function takes NumPy, CuPy or any array-API arrays (the ``xp`` idiom of
:mod:`em_tutorial.backend`). This module is the lesson: each step is one function and
:func:`em_attention` runs them in a loop. The same numbers faster on NumPy are in
:mod:`em_tutorial.ema_fast`; the input rules every stage shares are in
:mod:`em_tutorial.ema_validation`.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from .backend import get_array_module
from .ema_validation import array_namespace, validate_em_attention_inputs

__all__ = [
    "EPS",
    "EMIteration",
    "softmax",
    "attention_e_step",
    "attention_m_step",
    "l2_normalize",
    "attention_reconstruct",
    "em_attention",
    "em_iterations",
    "em_attention_flops",
    "spherical_gmm_parameters",
]

EPS = 1e-6
"""Added to the A_M denominator (``eps + sum_n z_nk``) and to the L2 norm (``eps + |mu_k|``),
the value used by the official EMANet code."""


class EMIteration(NamedTuple):
    """What one EM-attention iteration t produced (an entry of ``em_attention``'s history).

    Attributes
    ----------
    z : array, shape (N, K) or (B, N, K)
        Responsibilities of the A_E step of iteration t, computed from the bases of iteration
        t - 1 (the initial bases for t = 1). Rows sum to 1.
    mu : array, shape (K, C) or (B, K, C)
        Bases after the A_M step and the L2 normalisation of iteration t.
    """

    z: object
    mu: object


def softmax(logits, axis=-1):
    """Numerically safe softmax: ``exp(a - max a) / sum exp(a - max a)`` along ``axis``.

    Subtracting the maximum changes nothing mathematically (it cancels between numerator and
    denominator) but makes every exponent <= 0, so ``exp`` cannot overflow, and the largest
    entry becomes exp(0) = 1, so the sum cannot underflow to 0.
    """
    xp = get_array_module(logits)
    shifted = logits - xp.max(logits, axis=axis, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=axis, keepdims=True)


def attention_e_step(x, mu, lam=1.0):
    """A_E: responsibilities ``z_nk = softmax_k(lambda x_n^T mu_k)``.

    Parameters
    ----------
    x : array, shape (N, C) or (B, N, C)
        Features x, one row per pixel n.
    mu : array, shape (K, C) or (B, K, C)
        Bases mu, one row per basis k (shared by the batch when 2-D).
    lam : float
        lambda = 1/sigma^2, the inverse temperature of the kernel exp(lambda x^T mu).

    Returns
    -------
    z : array, shape (N, K) or (B, N, K)
        Responsibilities; every row sums to 1.
    """
    xp = get_array_module(x, mu)
    # lambda x_n^T mu_k for every pixel n and basis k:  (..., N, C) @ (..., C, K) -> (..., N, K)
    logits = lam * xp.matmul(x, mu.mT)
    # z_nk = exp(logit_nk) / sum_j exp(logit_nj)
    return softmax(logits, axis=-1)


def attention_m_step(x, z, eps=EPS):
    """A_M: bases as responsibility-weighted means, ``mu_k = sum_n z_nk x_n / (eps + sum_n z_nk)``.

    This is the mixture's mean update (7); ``z`` is normalised along the pixels n here (its
    columns), whereas the softmax of A_E normalised it along the bases k (its rows).

    Parameters
    ----------
    x : array, shape (N, C) or (B, N, C)
        Features x.
    z : array, shape (N, K) or (B, N, K)
        Responsibilities from :func:`attention_e_step`.
    eps : float
        Added to the soft counts ``N_k = sum_n z_nk`` (official EMANet value 1e-6), so that a
        basis no pixel chose gives ``mu_k = 0`` instead of 0/0.

    Returns
    -------
    mu : array, shape (K, C) or (B, K, C)
        New bases, not yet L2-normalised.
    """
    xp = get_array_module(x, z)
    # N_k = sum_n z_nk, the soft number of pixels of basis k       (..., 1, K)
    counts = xp.sum(z, axis=-2, keepdims=True)
    # z_nk / (eps + N_k): each column of z becomes averaging weights  (..., N, K)
    weights = z / (eps + counts)
    # mu_k = sum_n weights_nk x_n:  (..., K, N) @ (..., N, C) -> (..., K, C)
    return xp.matmul(weights.mT, x)


def l2_normalize(mu, eps=EPS):
    """Scale every basis to unit length along C: ``mu_k / (eps + |mu_k|)``.

    With the official ``eps = 1e-6`` the result has length ``r / (eps + r)`` where
    ``r = |mu_k|``: 1 up to about ``1e-6 / r``, and exactly 0 for a basis that is all zeros.

    Parameters
    ----------
    mu : array, shape (K, C) or (B, K, C)
        Bases mu.
    eps : float
        Added to the norm (official EMANet value 1e-6).

    Returns
    -------
    array, shape of ``mu``
    """
    xp = get_array_module(mu)
    # |mu_k| computed as s_k |mu_k / s_k| with s_k = max_c |mu_kc|, so that squaring large
    # features cannot overflow (in float32 |mu_k|^2 overflows once |mu_k| > 1.8e19)
    scale = xp.max(xp.abs(mu), axis=-1, keepdims=True)  # (..., K, 1)
    scale = xp.where(scale > 0, scale, xp.ones_like(scale))
    norm = scale * xp.linalg.vector_norm(mu / scale, axis=-1, keepdims=True)  # (..., K, 1)
    # mu_k <- mu_k / (eps + |mu_k|)
    return mu / (eps + norm)


def attention_reconstruct(z, mu):
    """A_R: every pixel re-expressed by the bases, ``x_tilde_n = sum_k z_nk mu_k`` (eq. 8).

    Parameters
    ----------
    z : array, shape (N, K) or (B, N, K)
        Responsibilities z.
    mu : array, shape (K, C) or (B, K, C)
        Bases mu.

    Returns
    -------
    x_tilde : array, shape (N, C) or (B, N, C)
    """
    xp = get_array_module(z, mu)
    # (..., N, K) @ (..., K, C) -> (..., N, C)
    return xp.matmul(z, mu)


def em_iterations(x, mu, n_iter=3, lam=1.0, keep_history=False):
    """The T iterations of :func:`em_attention`, without its checks and the reconstruction.

    The step functions one after the other, on any array library. Returns the last ``z``
    (..., N, K), the last ``mu`` (..., K, C) and the list of every iteration's
    :class:`EMIteration` (empty unless ``keep_history``). Nothing in the loop reads a value
    back to the host, so on CuPy the iterations queue on the GPU without waiting for it.
    """
    history = []
    for _ in range(n_iter):
        z = attention_e_step(x, mu, lam)
        mu = l2_normalize(attention_m_step(x, z))
        if keep_history:
            history.append(EMIteration(z, mu))
    return z, mu, history


def em_attention(x, mu, n_iter=3, lam=1.0, return_history=False, *, iterations=em_iterations):
    """EM attention: T iterations of A_E and A_M, then the reconstruction A_R.

    Per iteration t = 1..T::

        z     = softmax_k(lambda x mu^T)                         # A_E
        mu_k  = sum_n z_nk x_n / (eps + sum_n z_nk)              # A_M
        mu_k  = mu_k / (eps + |mu_k|)                            # L2 normalisation along C

    and after the last iteration ``x_tilde = z mu`` (A_R), with the ``z`` of the last A_E and
    the ``mu`` of the last A_M, as in the official EMANet code.

    Parameters
    ----------
    x : array, shape (N, C) or (B, N, C)
        Features x: N pixels with C channels (a batch of B feature maps when 3-D).
        float32 or float64.
    mu : array, shape (K, C) or (B, K, C)
        Initial bases mu^(0): K bases, shared by the whole batch when 2-D. Need not be
        normalised (EMANet passes L2-normalised ones).
    n_iter : int
        T, the number of iterations (>= 1; EMANet uses 3).
    lam : float
        lambda = 1/sigma^2 >= 0, the inverse temperature of the kernel exp(lambda x^T mu).
        lambda -> 0 makes z uniform; large lambda makes z one-hot (k-means-like hard
        assignments). EMANet uses 1.
    return_history : bool
        Also return the list of every iteration's ``(z, mu)``.
    iterations : callable
        The loop that runs the T iterations (:func:`em_iterations`, the step functions).
        :func:`em_tutorial.ema_fast.em_attention_fast` passes its faster loop here: the
        checks and A_R stay the same.

    Returns
    -------
    z : array, shape (N, K) or (B, N, K)
        Responsibilities of the last A_E; rows sum to 1.
    mu : array, shape (K, C) or (B, K, C)
        Bases after the last A_M and L2 normalisation. Batched whenever ``x`` is, even when
        the initial bases were shared.
    x_tilde : array, shape (N, C) or (B, N, C)
        Reconstruction ``z mu``.
    history : list of EMIteration, length T
        Only with ``return_history=True``. ``history[t - 1] = EMIteration(z, mu)`` holds
        the responsibilities of the A_E of iteration t (computed from the bases of iteration
        t - 1, the initial ones for t = 1) and the bases after the A_M and normalisation of
        iteration t. So ``history[-1]`` is ``(z, mu)`` above; the initial bases are not in it.

    Raises
    ------
    ValueError
        Wrong number of dimensions, channel or batch mismatch between ``x`` and ``mu``,
        N, K or C equal to 0, NaN or inf in ``x`` or ``mu``, values so large that
        ``lambda x^T mu`` or the sums over N would overflow the dtype, ``n_iter < 1``,
        ``lam`` negative or not finite.
    TypeError
        ``x`` or ``mu`` not an array, or not float32/float64 (float16 included), ``n_iter`` not an
        integer or ``lam`` not a real number. The rules, shared with every other stage, are
        in :mod:`em_tutorial.ema_validation`; mixed float32/float64 inputs are promoted.

    Notes
    -----
    Cost per iteration O(NKC), against the O(N^2 C) of the non-local block
    (:func:`em_tutorial.non_local.non_local`); :func:`em_attention_flops` and
    :func:`em_tutorial.non_local.non_local_flops` count both exactly. The overflow rule
    makes every accepted input give a finite result.
    """
    xp = array_namespace(x, mu)
    x, mu = validate_em_attention_inputs(xp, x, mu, n_iter, lam)
    z, mu, history = iterations(x, mu, n_iter, float(lam), return_history)
    # A_R: x_tilde = z mu
    x_tilde = attention_reconstruct(z, mu)
    if return_history:
        return z, mu, x_tilde, history
    return z, mu, x_tilde


def _positive_integers(counts):
    """The values of ``counts`` ({name: value}) as Python ints, checked to be integers >= 1.

    Python ints, so that products of large counts cannot overflow as NumPy's int64 would.
    """
    checked = []
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be a positive integer; got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value}")
        checked.append(int(value))
    return checked


def em_attention_flops(n_pixels, n_bases, n_channels, n_iter):
    """FLOPs of the matrix products of :func:`em_attention` on one feature map: (4T + 2) N K C.

    Each of the T iterations runs two products of N K C multiply-adds: A_E's ``x mu^T``,
    (N, C) @ (C, K), and A_M's ``z^T x``, (K, N) @ (N, C). A_R's ``z mu``, (N, K) @ (K, C),
    adds a third after the last iteration.

    Units: FLOPs, a multiply-add counting as 2, the convention of PyTorch's
    :class:`torch.utils.flop_counter.FlopCounterMode`; half the result is the number of
    multiply-accumulates (MACs). The softmax, the sums over the pixels and the L2
    normalisation (O(NK) and O(KC) per iteration) are not counted, as FlopCounterMode does
    not count them either.

    Parameters
    ----------
    n_pixels : int
        N = HW, the pixels of the feature map (the rows of ``x``).
    n_bases : int
        K, the number of bases (the rows of ``mu``).
    n_channels : int
        C, the channels of ``x`` and of the bases.
    n_iter : int
        T, the number of EM iterations (``n_iter`` of :func:`em_attention`).

    Returns
    -------
    int
        FLOPs for one feature map; a batch of B feature maps costs B times as many.

    Raises
    ------
    TypeError
        An argument that is not an integer (a float, a bool or a string).
    ValueError
        An argument below 1.

    See Also
    --------
    em_tutorial.non_local.non_local_flops : the same count for the non-local block.
    """
    n, k, c, t = _positive_integers({"n_pixels (N)": n_pixels, "n_bases (K)": n_bases,
                                     "n_channels (C)": n_channels, "n_iter (T)": n_iter})
    # (4T + 2) N K C: 2 N K C for A_E and for A_M in each iteration, 2 N K C for A_R once
    return (4 * t + 2) * n * k * c


def spherical_gmm_parameters(mu, lam=1.0):
    """The Gaussian mixture whose E-step is EM attention's A_E.

    With one spherical covariance ``sigma^2 I``, ``sigma^2 = 1/lambda``, uniform mixing
    weights and bases of one common length (unit norm in EM attention), the mixture E-step (5)
    equals ``softmax_k(lambda x_n^T mu_k)`` for any pixels x (the module docstring derives
    it). Bases of different lengths add ``-lambda |mu_k|^2 / 2`` to the logits, non-uniform
    weights ``ln pi_k``; then the two differ.

    Parameters
    ----------
    mu : array, shape (K, C)
        Bases mu, used as the component means.
    lam : float
        lambda > 0.

    Returns
    -------
    dict
        Keyword arguments for ``em_tutorial.gmm.e_step(x, **params)``: ``means`` = mu,
        ``precisions_cholesky`` = sqrt(lambda) = 1/sigma for every component (shape (K,)),
        ``covariance_type="spherical"``, ``weights=None`` (uniform).
    """
    xp = get_array_module(mu)
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam = 1/sigma^2 must be positive and finite for a Gaussian; got {lam}")
    precision_cholesky = xp.full((mu.shape[-2],), math.sqrt(lam), dtype=mu.dtype)
    return {
        "means": mu,
        "precisions_cholesky": precision_cholesky,
        "covariance_type": "spherical",
        "weights": None,
    }
