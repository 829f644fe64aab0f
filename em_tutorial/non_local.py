"""The non-local operation (eq. 9): the O(N^2 C) attention that EM attention replaces.

Embedded-Gaussian form (Wang et al., Non-local Neural Networks, 2018)::

    y_i = 1/C(x_i) sum_j exp(theta(x_i)^T phi(x_j)) g(x_j),
    C(x_i) = sum_j exp(theta(x_i)^T phi(x_j))

i.e. ``y = softmax_j(theta(x) phi(x)^T) g(x)``: every pixel attends to all N pixels, so the
attention matrix alone is N x N (354 MB in float32 for a 97 x 97 feature map).

The embeddings theta, phi, g are linear maps (1x1 convolutions in the network), given here as
matrices and identity by default. With identity embeddings the attention matrix is exactly
EM attention's first A_E when the bases are all N pixels (``mu = x``, K = N); see
:func:`non_local_attention`.
"""

from __future__ import annotations

import math

from .backend import get_array_module, is_numpy_namespace
from .ema import _positive_integers, softmax
from .ema_fast import softmax_last_axis_inplace
from .ema_validation import check_finite, check_float_dtype

__all__ = ["non_local_attention", "non_local", "non_local_flops"]


def _embed(xp, x, weight, name):
    """``x @ weight`` for a (C, C') embedding matrix, or x itself when ``weight`` is None."""
    if weight is None:
        return x
    check_float_dtype(xp, name, weight)
    check_finite(xp, name, weight)
    if weight.ndim != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"{name} must be a (C, C') matrix with C = {x.shape[-1]} rows (the channels of x); "
            f"got shape {tuple(weight.shape)}"
        )
    # (..., N, C) @ (C, C') -> (..., N, C')
    return xp.matmul(x, weight)


def _namespace(x, **weights):
    """The ``xp`` of ``x`` and the embedding matrices, after naming any that is no array."""
    for name, value in {"x": x, **weights}.items():
        if (value is not None or name == "x") and not hasattr(value, "dtype"):
            raise TypeError(f"{name} must be an array; got {type(value).__name__}")
    return get_array_module(x, *weights.values())


def _check_product_fits(xp, a, b, what):
    """ValueError unless the sums of products of ``what`` fit the dtype.

    Every entry of ``a @ b.mT`` (or ``a @ b``) is at most L max|a| max|b|, L = ``a.shape[-1]``.
    """
    if math.prod(a.shape) == 0 or math.prod(b.shape) == 0:
        return
    largest = a.shape[-1] * float(xp.max(xp.abs(a))) * float(xp.max(xp.abs(b)))
    if not largest < float(xp.finfo(a.dtype).max):
        raise ValueError(f"x is too large for {a.dtype}: {what} can reach {largest:.3g}; scale x "
                         "or the embedding matrices down, or compute in float64")


def _check_features(xp, x):
    if x.ndim not in (2, 3):
        raise ValueError(f"x must have shape (N, C) or (B, N, C); got shape {tuple(x.shape)}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"x has no pixels or no channels: shape {tuple(x.shape)}")
    check_float_dtype(xp, "x", x)
    check_finite(xp, "x", x)


def non_local_attention(x, w_theta=None, w_phi=None):
    """The non-local attention matrix ``a_ij = f(x_i, x_j) / C(x_i) = softmax_j(theta_i^T phi_j)``.

    With identity embeddings this is ``softmax_j(x_i^T x_j)``, which is EM attention's A_E
    ``z = softmax_k(lambda x mu^T)`` for lambda = 1 and the bases set to all N pixels
    (``mu = x``, K = N). ``w_theta = lambda * I`` gives any other lambda.

    Parameters
    ----------
    x : array, shape (N, C) or (B, N, C)
        Features x.
    w_theta, w_phi : array, shape (C, C'), optional
        Embedding matrices of theta and phi (identity when None; C' = C then).

    Returns
    -------
    a : array, shape (N, N) or (B, N, N)
        Rows sum to 1.
    """
    xp = _namespace(x, w_theta=w_theta, w_phi=w_phi)
    _check_features(xp, x)
    theta = _embed(xp, x, w_theta, "w_theta")  # (..., N, C')
    phi = _embed(xp, x, w_phi, "w_phi")  # (..., N, C')
    if theta.shape[-1] != phi.shape[-1]:
        raise ValueError(
            f"theta and phi must embed into the same C'; got {theta.shape[-1]} and {phi.shape[-1]}"
        )
    _check_product_fits(xp, theta, phi, "theta(x_i)^T phi(x_j)")
    # theta(x_i)^T phi(x_j) for all pixel pairs:  (..., N, C') @ (..., C', N) -> (..., N, N)
    logits = xp.matmul(theta, phi.mT)
    # a_ij = exp(logit_ij) / sum_j' exp(logit_ij'); on NumPy in place, because the N x N
    # matrix is the memory bill of this operation
    if is_numpy_namespace(xp):
        return softmax_last_axis_inplace(logits)
    return softmax(logits, axis=-1)


def non_local(x, w_theta=None, w_phi=None, w_g=None):
    """The embedded-Gaussian non-local operation, ``y_i = 1/C(x_i) sum_j f(x_i, x_j) g(x_j)``.

    Parameters
    ----------
    x : array, shape (N, C) or (B, N, C)
        Features x, one row per pixel.
    w_theta, w_phi : array, shape (C, C'), optional
        Embedding matrices of theta and phi (identity when None).
    w_g : array, shape (C, C_g), optional
        Embedding matrix of g (identity when None; C_g = C then).

    Returns
    -------
    y : array, shape (N, C_g) or (B, N, C_g)

    Notes
    -----
    Time O(N^2 C') (:func:`non_local_flops` counts it) and memory O(N^2) per feature map.
    EM attention reduces to it as follows (all with identity embeddings, lambda = 1, one
    iteration, initial bases ``mu = x``): its first A_E is :func:`non_local_attention`, and
    the reconstruction with those *initial* bases, ``z @ mu = z @ x``, is ``non_local(x)``.
    EM attention's own output ``x_tilde`` differs: A_M first replaces each basis by a mean of
    the pixels weighted by a column of z (normalised over n, not k) and the L2 normalisation
    then sets its length to 1, whereas the non-local block averages the unnormalised g(x_j).
    """
    xp = _namespace(x, w_theta=w_theta, w_phi=w_phi, w_g=w_g)
    attention = non_local_attention(x, w_theta, w_phi)  # (..., N, N)
    if w_g is not None:
        _check_product_fits(xp, x, w_g, "g(x) = x w_g")
    g = _embed(xp, x, w_g, "w_g")  # (..., N, C_g)
    # y_i = sum_j a_ij g(x_j):  (..., N, N) @ (..., N, C_g) -> (..., N, C_g)
    return xp.matmul(attention, g)


def non_local_flops(n_pixels, inter_channels):
    """FLOPs of the attention products of the non-local block on one feature map: 4 N^2 C'.

    Two products of N^2 C' multiply-adds: ``theta phi^T``, (N, C') @ (C', N), and the
    attention times g, (N, N) @ (N, C'), with theta, phi and g all embedding into C' channels
    (as in :class:`em_tutorial.nn.NonLocal2d`; :func:`non_local` with identity embeddings has
    C' = C).

    Units: FLOPs, a multiply-add counting as 2, the convention of PyTorch's
    :class:`torch.utils.flop_counter.FlopCounterMode`; half the result is the number of
    multiply-accumulates (MACs). The softmax (O(N^2)) is not counted, nor are the embeddings
    themselves (1x1 convolutions, O(N C C'), linear in N).

    Parameters
    ----------
    n_pixels : int
        N = HW, the pixels of the feature map.
    inter_channels : int
        C', the channels of the embeddings theta, phi and g (C/2 in the usual block).

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
    em_tutorial.ema.em_attention_flops : the same count for EM attention, (4T + 2) N K C.
    """
    n, c_inner = _positive_integers({"n_pixels (N)": n_pixels,
                                     "inter_channels (C')": inter_channels})
    # 4 N^2 C': 2 N^2 C' for theta phi^T and 2 N^2 C' for the attention times g
    return 4 * n * n * c_inner
