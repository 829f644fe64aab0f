"""The input rules of EM attention, one set for every stage.

:func:`em_tutorial.ema.em_attention` (NumPy, CuPy, any array-API library),
:func:`em_tutorial.ema_fast.em_attention_fast` (NumPy),
:func:`em_tutorial.nn.functional.em_attention` (PyTorch) and
:func:`em_tutorial.gpu.em_attention_fused` (CuPy kernels) all call
:func:`validate_em_attention_inputs`, so the same bad input gets the same error type and the
same message, naming the argument, on every stage. The rules:

=====================================================  ==========  ===========================
input                                                  error       why
=====================================================  ==========  ===========================
``x`` not (N, C) or (B, N, C); ``mu`` not (K, C) or    ValueError  the shapes of eqs. (5)-(8)
(B, K, C)
batched ``mu`` with unbatched ``x``, or another B      ValueError  one set of bases per image
``x`` and ``mu`` with different C                      ValueError  x_n^T mu_k needs one C
N, K or C equal to 0                                   ValueError  nothing to compute
``n_iter`` not an integer (2.5, True, "3")             TypeError   T counts iterations
``n_iter`` < 1                                         ValueError  z and mu need one A_E, A_M
``lam`` not a real number                              TypeError   lambda = 1/sigma^2
``lam`` negative, NaN or inf                           ValueError  sigma^2 > 0 or lambda = 0
dtype other than float32/float64 (float16 included)    TypeError   see :func:`check_float_dtype`
NaN or inf in ``x`` or ``mu``                          ValueError  they spread to every z_nk
``x`` or ``mu`` not an array (a list, None)            TypeError   the namespace comes from it
values so large that lambda x^T mu or the sums over N  ValueError  inf, then NaN in z
overflow the dtype
=====================================================  ==========  ===========================

The last rule bounds the intermediates by the largest magnitudes a = max|x|, b = max|mu|:
``lam * max(b, 1) * max(C a, 1)`` (the E-step logits) and ``N a`` (the sums of A_M) must stay
below the dtype's largest value (the norms are computed without squaring large numbers). It
refuses only inputs far outside any feature scale (|x| beyond about 1e34 in float32 for a
128 x 128 map with C = 512), and costs nothing extra: the pass that looks for NaN and inf
computes max|x|.

Mixed float32 and float64 inputs are **promoted** to float64 on every stage, never refused:
the array API standard (and so NumPy, CuPy and PyTorch's ``torch.result_type``) defines
float32 with float64 as float64, promotion loses no digits, and the common case it serves is
honest: features in float32 with bases drawn by NumPy's float64 default. The price, float64
arithmetic (slow on most GPUs), shows in the dtype of the results.

The rules are written once against the ``xp`` namespace of :mod:`em_tutorial.backend`;
PyTorch tensors get theirs from ``array_api_compat`` like any other array library. A stage
adds only what is its own (the fused kernels need CuPy; the PyTorch stage needs tensors).
"""

from __future__ import annotations

import math
import numbers

from .backend import get_array_module

__all__ = [
    "check_float_dtype",
    "check_finite",
    "check_shapes",
    "check_n_iter",
    "check_lam",
    "check_magnitudes",
    "array_namespace",
    "overflow_problem",
    "validate_em_attention_inputs",
]


def check_float_dtype(xp, name, array):
    """Raise TypeError unless ``array`` (argument ``name``) is float32 or float64.

    float16 is refused rather than computed badly: the official eps = 1e-6 is below its
    resolution (1 + 1e-6 == 1 in float16), and the N-long sums of A_M (N ~ 10^4 pixels) keep
    about 3 significant digits. Cast to float32 (the GPU stage's precision) instead.
    """
    float16 = getattr(xp, "float16", None)  # not part of the array API standard
    if float16 is not None and array.dtype == float16:
        raise TypeError(
            f"{name} must be float32 or float64, got float16: eps = 1e-6 is below float16's "
            "resolution and the sums over N pixels lose most digits; cast it to float32 first"
        )
    if array.dtype not in (xp.float32, xp.float64):
        kind = "an integer dtype" if xp.isdtype(array.dtype, "integral") else "not a real float"
        raise TypeError(f"{name} must be a float32 or float64 array; got dtype {array.dtype}, "
                        f"{kind}; convert it to float32 or float64 first")


def check_finite(xp, name, array):
    """Raise ValueError if ``array`` (argument ``name``) holds NaN or inf, saying how many."""
    if not bool(xp.all(xp.isfinite(array))):
        bad = int(xp.sum(xp.astype(~xp.isfinite(array), xp.int64)))
        raise ValueError(f"{name} contains NaN or inf ({bad} of its {math.prod(array.shape)} "
                         "values); clean or mask them first")


def check_shapes(x, mu):
    """Raise ValueError unless x (N, C) or (B, N, C) and mu (K, C) or (B, K, C) fit together."""
    for name, array, letters in (("x", x, "N, C"), ("mu", mu, "K, C")):
        if array.ndim not in (2, 3):
            raise ValueError(
                f"{name} must have shape ({letters}) or (B, {letters}); got {array.ndim} "
                f"dimensions, shape {tuple(array.shape)}"
            )
    if mu.ndim == 3 and x.ndim == 2:
        raise ValueError(
            f"mu is batched, shape {tuple(mu.shape)} = (B, K, C), but x is not, shape "
            f"{tuple(x.shape)}; give x a batch axis (B, N, C) or mu the shape (K, C)"
        )
    if mu.ndim == 3 and mu.shape[0] != x.shape[0]:
        raise ValueError(
            f"batch mismatch: x has B={x.shape[0]} feature maps but mu has B={mu.shape[0]} sets "
            "of bases; use the same B or shared bases of shape (K, C)"
        )
    if x.shape[-1] != mu.shape[-1]:
        raise ValueError(
            f"channel mismatch: x has C={x.shape[-1]} channels (shape {tuple(x.shape)}) but mu "
            f"has C={mu.shape[-1]} (shape {tuple(mu.shape)})"
        )
    for size, what in ((x.shape[-2], "N = 0 pixels"), (mu.shape[-2], "K = 0 bases"),
                       (x.shape[-1], "C = 0 channels")):
        if size == 0:
            raise ValueError(f"nothing to compute: {what} (x shape {tuple(x.shape)}, "
                             f"mu shape {tuple(mu.shape)})")


def check_n_iter(n_iter, name="n_iter"):
    """T: TypeError unless an integer (bool is not one here), ValueError if below 1."""
    if isinstance(n_iter, bool) or not isinstance(n_iter, numbers.Integral):
        raise TypeError(f"{name} (T) must be an integer; got {n_iter!r}")
    if n_iter < 1:
        raise ValueError(f"{name} (T) must be at least 1; got {n_iter}")


def check_lam(lam):
    """lambda = 1/sigma^2: TypeError unless a real number, ValueError unless finite and >= 0."""
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"lam (lambda = 1/sigma^2) must be a real number; got {lam!r}")
    try:
        finite = math.isfinite(lam)
    except OverflowError:  # an int beyond float's range
        finite = False
    if not finite or lam < 0:
        raise ValueError(f"lam (lambda = 1/sigma^2) must be a finite number >= 0; got {lam!r}")


def array_namespace(x, mu):
    """The ``xp`` of ``x`` and ``mu``, after a TypeError naming an argument that is no array."""
    for name, array in (("x", x), ("mu", mu)):
        if not (hasattr(array, "shape") and hasattr(array, "dtype")):
            raise TypeError(f"{name} must be an array (NumPy, CuPy, torch or array-API); got "
                            f"{type(array).__name__}")
    return get_array_module(x, mu)


def overflow_problem(largest_x, largest_mu, n_pixels, n_channels, lam, dtype, float_max):
    """None if T iterations stay below ``float_max``, else a sentence saying what overflows.

    ``largest_x`` = max|x| = a, ``largest_mu`` = max|mu| = b; see the module docstring.
    """
    a, b = largest_x, largest_mu
    # |lambda x_n^T mu_k| <= lambda C a max(b, 1) (|mu_kc| <= 1 after an A_M); |sum_n z_nk x_n|
    # <= N a. The max(., 1) terms keep lambda mu^(0) itself finite when x is tiny.
    largest = max(lam * max(b, 1.0) * max(n_channels * a, 1.0), n_pixels * a)
    if largest < float_max:
        return None
    return (
        f"x, mu and lam are too large for {dtype}: lambda x^T mu or the sums over N = "
        f"{n_pixels} pixels reach {largest:.3g}, beyond its largest value {float_max:.3g} "
        f"(max |x| = {a:.3g}, max |mu| = {b:.3g}, lam = {lam:.3g}, C = {n_channels}); scale x "
        "down, or compute in float64"
    )


def _largest_magnitude(xp, name, array):
    """max|array| as a float, 0 when empty; ValueError (:func:`check_finite`) on NaN or inf."""
    if math.prod(array.shape) == 0:
        return 0.0
    largest = float(xp.max(xp.abs(array)))
    if not math.isfinite(largest):
        check_finite(xp, name, array)
    return largest


def check_magnitudes(xp, x, mu, lam):
    """ValueError on NaN or inf, or on values that :func:`overflow_problem` says overflow."""
    largest_x, largest_mu = _largest_magnitude(xp, "x", x), _largest_magnitude(xp, "mu", mu)
    dtype = xp.result_type(x.dtype, mu.dtype)
    problem = overflow_problem(largest_x, largest_mu, x.shape[-2], x.shape[-1], float(lam),
                               dtype, float(xp.finfo(dtype).max))
    if problem:
        raise ValueError(problem)


def validate_em_attention_inputs(xp, x, mu, n_iter, lam, *, finite=True):
    """Apply every rule of this module; return x and mu in their common (promoted) dtype.

    Parameters
    ----------
    xp : namespace
        ``em_tutorial.backend.get_array_module(x, mu)``.
    x : array, shape (N, C) or (B, N, C)
        Features x.
    mu : array, shape (K, C) or (B, K, C)
        Initial bases mu^(0).
    n_iter : int
        T, the number of iterations.
    lam : float
        lambda = 1/sigma^2.
    finite : bool
        Also refuse NaN, inf and values that would overflow. The check reads every value once
        (on a GPU it waits for the device); the PyTorch stage lets its caller skip it.

    Returns
    -------
    x, mu : arrays of dtype ``xp.result_type(x.dtype, mu.dtype)``
        Not copied when already of that dtype.
    """
    check_shapes(x, mu)
    check_n_iter(n_iter)
    check_lam(lam)
    check_float_dtype(xp, "x", x)
    check_float_dtype(xp, "mu", mu)
    if finite:
        check_magnitudes(xp, x, mu, lam)
    dtype = xp.result_type(x.dtype, mu.dtype)
    return xp.astype(x, dtype, copy=False), xp.astype(mu, dtype, copy=False)
