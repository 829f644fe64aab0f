"""EM attention on PyTorch tensors: the same function as :func:`em_tutorial.ema.em_attention`.

Same arguments, same shapes, the same :data:`em_tutorial.ema.EPS` (``eps = 1e-6`` in the A_M
denominator and in the L2 normalisation), so the NumPy stage and this one can be compared
number for number. Autograd flows through every step; :class:`em_tutorial.nn.EMAU` runs the
same iterations (:func:`em_iterations`) under ``torch.no_grad()``, as the paper does.

It also holds the input checks that every module of :mod:`em_tutorial.nn` shares
(:func:`check_tensor`, :func:`check_feature_map`, :func:`check_input_dtype`,
:func:`check_batch`), so that the same bad input gets the same words from each of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..backend import get_array_module
from ..ema import EPS
from ..ema_validation import validate_em_attention_inputs

__all__ = [
    "em_attention", "em_iterations", "safe_norm", "check_tensor", "check_feature_map",
    "check_input_dtype", "check_batch", "check_non_finite_option", "non_finite_message",
    "empty_batch_message", "EPS",
]


def _validated_tensors(x, mu, n_iter, lam, check_finite):
    """The shared rules of :mod:`em_tutorial.ema_validation`, after checking for tensors."""
    if not isinstance(x, torch.Tensor) or not isinstance(mu, torch.Tensor):
        raise TypeError(
            f"x and mu must be torch tensors, got {type(x).__name__} and {type(mu).__name__} "
            "(em_tutorial.ema.em_attention is the NumPy version)"
        )
    xp = get_array_module(x, mu)  # array_api_compat's view of torch
    # The checks read values back (max |x|): on detached views, so no graph is involved.
    checked, _ = validate_em_attention_inputs(xp, x.detach(), mu.detach(), n_iter, lam,
                                              finite=check_finite)
    return x.to(checked.dtype), mu.to(checked.dtype)  # promoted, the graph kept


def em_attention(
    x: torch.Tensor,
    mu: torch.Tensor,
    n_iter: int = 3,
    lam: float = 1.0,
    *,
    check_finite: bool = True,
):
    """Run ``T = n_iter`` EM iterations of EM attention, then reconstruct ``x``.

    Parameters
    ----------
    x : Tensor, shape (N, C) or (B, N, C)
        The N feature vectors x_n (one per pixel).
    mu : Tensor, shape (K, C) or (B, K, C)
        The initial bases mu^(0); a (K, C) tensor is shared by every batch element.
    n_iter : int
        T, the number of E/M iterations (>= 1).
    lam : float
        lambda = 1/sigma^2, the inverse temperature of the kernel exp(lambda x^T mu).
    check_finite : bool
        Refuse NaN or inf in ``x`` and ``mu``. The check reads every value (on a GPU it
        waits for the device); :class:`~em_tutorial.nn.EMAU` skips it.

    Returns
    -------
    z : Tensor, shape (N, K) or (B, N, K)
        Responsibilities of the last E-step (each row sums to 1).
    mu : Tensor, shape (K, C) or (B, K, C)
        Bases after the last M-step, each row of unit L2 norm (up to ``EPS``).
    x_tilde : Tensor, shape like ``x``
        The reconstruction A_R: x_tilde = z mu.

    Raises
    ------
    ValueError
        Wrong dimensions, channel or batch mismatch, an empty axis, ``n_iter < 1``, a negative
        or non-finite ``lam``, NaN or inf in the inputs, values so large that the iterations
        would overflow.
    TypeError
        Not tensors, a dtype other than float32/float64 (half precision included), ``n_iter``
        not an integer or ``lam`` not a real number. The rules and messages are those of
        every stage (:mod:`em_tutorial.ema_validation`); float32 mixed with float64 is
        promoted to float64.
    """
    x, mu = _validated_tensors(x, mu, n_iter, lam, check_finite)
    z, mu = em_iterations(x, mu, n_iter, lam)
    # A_R: x_tilde_n = sum_k z_nk mu_k
    x_tilde = z @ mu  # (B, N, K) @ (B, K, C) -> (B, N, C)
    return z, mu, x_tilde


def em_iterations(x: torch.Tensor, mu: torch.Tensor, n_iter: int = 3, lam: float = 1.0):
    """The T iterations of :func:`em_attention` without the reconstruction and the checks.

    Returns ``z`` (B, N, K) of the last E-step and the bases ``mu`` (B, K, C) of the last
    M-step. :class:`~em_tutorial.nn.EMAU` calls this and reconstructs in its own layout.
    """
    for _ in range(n_iter):
        # A_E: z_nk = softmax_k(lambda x_n^T mu_k); lambda scales the small (K, C) bases
        # rather than the (N, K) logits
        z = torch.softmax(x @ (lam * mu).mT, dim=-1)  # (B, N, C) @ (C, K) -> (B, N, K)
        # A_M: mu_k = sum_n z_nk x_n / (eps + sum_n z_nk); the division is applied to the
        # (K, C) product instead of the (N, K) weights: same numbers, N/C times less work
        counts = z.sum(dim=-2).unsqueeze(-1)  # (B, K, 1)
        mu = (z.mT @ x) / (EPS + counts)  # (B, K, N) @ (B, N, C) -> (B, K, C)
        # mu_k <- mu_k / (eps + ||mu_k||)
        mu = mu / (EPS + safe_norm(mu))  # (B, K, C)
    return z, mu


def safe_norm(mu: torch.Tensor) -> torch.Tensor:
    """||mu_k|| along the last axis, (..., K, 1), computed without squaring large numbers.

    ``||mu_k|| = s_k ||mu_k / s_k||`` with ``s_k = max_c |mu_kc|``: in float32 ``||mu_k||^2``
    overflows once ``||mu_k|| > 1.8e19``, and the bases would silently become zero.
    """
    scale = mu.abs().amax(dim=-1, keepdim=True)  # (..., K, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale * torch.linalg.vector_norm(mu / scale, dim=-1, keepdim=True)


def check_tensor(x, owner: str, layout: str = "(B, C, H, W)") -> None:
    """Raise a TypeError naming ``owner`` and what it expects unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        kind = type(x).__module__.split(".")[0] + "." + type(x).__qualname__
        convert = "torch.from_numpy(x)" if kind == "numpy.ndarray" else "torch.as_tensor(x)"
        raise TypeError(f"{owner} input x must be a torch.Tensor of shape {layout}, got "
                        f"{kind.removeprefix('builtins.')}; convert it first ({convert})")


def check_feature_map(x: torch.Tensor, channels: int, owner: str) -> None:
    """Raise ValueError or TypeError naming ``owner`` unless ``x`` is a (B, C, H, W) tensor."""
    check_tensor(x, owner)
    if x.ndim != 4:
        raise ValueError(f"{owner} input x must be a (B, C, H, W) feature map, got shape "
                         f"{tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(
            f"{owner} was built for C={channels} channels, but its input x has shape "
            f"{tuple(x.shape)} with {x.shape[1]}"
        )
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"nothing to compute: {owner} input x of shape {tuple(x.shape)} has "
                         "H * W = 0 pixels")


def check_input_dtype(x: torch.Tensor, parameter: torch.Tensor, owner: str) -> None:
    """Raise a TypeError naming ``owner`` unless ``x`` has the dtype of its ``parameter``.

    Under ``torch.autocast`` any floating dtype passes: autocast casts it for each layer, and
    it is the way to compute a module in half precision.
    """
    if not x.is_floating_point():
        raise TypeError(
            f"{owner} input x has dtype {x.dtype}, an integer or boolean dtype; convert it to "
            f"the module's {parameter.dtype} first (x.to({parameter.dtype}))"
        )
    if x.dtype != parameter.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{owner} input x has dtype {x.dtype} but the module's parameters are "
            f"{parameter.dtype}; convert one to the other (x.to({parameter.dtype}) or "
            f"module.to({x.dtype})), or run under torch.autocast for half precision"
        )


def non_finite_message(x: torch.Tensor, owner: str) -> str:
    """Where ``x`` (B, ...) holds NaN or inf, in words: the images of the batch and the count.

    Called only once a check has failed: it reads ``x`` again to find the images.
    """
    bad = ~torch.isfinite(x.detach())  # (B, ...)
    per_image = bad.flatten(1).sum(dim=1)  # (B,)
    images = per_image.nonzero().flatten().tolist()
    shown = ", ".join(map(str, images[:5])) + (", ..." if len(images) > 5 else "")
    where = f"image {shown}" if len(images) == 1 else f"images {shown}"
    return (f"{owner} input x contains NaN or inf in {where} of the batch of {x.shape[0]} "
            f"({int(per_image.sum())} of its {x.numel()} values)")


def check_non_finite_option(non_finite: str) -> str:
    """``non_finite`` as given, if it is ``"raise"`` or ``"skip"`` (the modules' option for
    :func:`check_batch`'s value rules); a ValueError otherwise."""
    if non_finite not in ("raise", "skip"):
        raise ValueError(f"non_finite must be 'raise' or 'skip', got {non_finite!r}")
    return non_finite


def empty_batch_message(x: torch.Tensor, owner: str) -> str:
    """Why an empty batch (B = 0) is refused in training mode, in words."""
    return (f"{owner} input x of shape {tuple(x.shape)} is an empty batch (B = 0): in training "
            "mode BatchNorm would count it as a step (num_batches_tracked) without data; skip "
            "empty batches, or use eval mode")


def _gain(path: Sequence[nn.Conv2d]):
    """(g, o) with |path(x)| <= g max|x| + o: each convolution maps max|x| to at most
    max_o sum_{c,i,j} |W_ocij| max|x| + max|b| (its largest kernel L1 norm, plus its bias)."""
    gain, offset = 1.0, 0.0
    for conv in path:
        kernel_l1 = conv.weight.detach().abs().flatten(1).sum(dim=1).amax()  # max over outputs
        bias = 0.0 if conv.bias is None else conv.bias.detach().abs().amax()
        gain, offset = gain * kernel_l1, offset * kernel_l1 + bias
    return gain, offset


def check_batch(x: torch.Tensor, owner: str, training: bool,
                paths: Sequence[Sequence[nn.Conv2d]] = (), values: bool = True) -> None:
    """The value rules of every module of :mod:`em_tutorial.nn`, in eval and training mode alike.

    Raises a ValueError, before anything is computed (so no buffer moves), for

    * NaN or inf anywhere in ``x``: it would turn its whole image into NaN (attention, pooling
      and the EM mix every pixel of an image), and in training every BatchNorm's running
      statistics; the message names the images at fault;
    * values so large that the first normalisation layer's statistics overflow: along each of
      ``paths`` (the convolutions between ``x`` and a normalisation layer, in order) the
      features are bounded by h = g max|x| + o (see :func:`_gain`), and BatchNorm sums up to
      B * H * W squares of them, so ``B H W h^2`` must stay below the largest value of the
      parameters' dtype (and h below that of the dtype the convolutions compute in) -- the
      bound-by-largest-magnitudes rule of :func:`em_tutorial.ema_validation.overflow_problem`.
      It refuses only inputs far outside any image or feature scale (max|x| beyond about
      1e15 for float32 images of a few hundred pixels a side). Weights that would overflow
      even on an input of unit scale have diverged: that is left to the loss, where the
      training loop sees it, and not blamed on ``x``;
    * an empty batch (B = 0) in training mode (:func:`empty_batch_message`), also with
      ``values=False``, which skips the two rules above (a module built with
      ``non_finite="skip"``, whose caller has checked the values).

    Cost: one reduction over ``x`` (max|x|, which is NaN or inf exactly when ``x`` holds one)
    and a few over the small kernels, read back together: one device synchronisation per
    forward. The images at fault are located only after a failure. Meta tensors (shapes only)
    are not checked.
    """
    if x.shape[0] == 0:
        if training:
            raise ValueError(empty_batch_message(x, owner))
        return
    if not values or x.device.type == "meta":
        return
    # float64 where x is: float32 would read a finite max|x| above 3.4e38 as inf
    read_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        # max|x| = max(-min x, max x): NaN if x holds NaN, inf if it holds inf, so one pass
        # (without a temporary |x|) finds both
        low, high = torch.aminmax(x.detach())
        largest = torch.maximum(-low, high)
        bounds = [v for path in paths for v in _gain(path)]  # g_1, o_1, g_2, o_2, ...
        largest, *bounds = torch.stack([torch.as_tensor(v, dtype=read_dtype, device=x.device)
                                        for v in (largest, *bounds)]).tolist()
    if not math.isfinite(largest):
        raise ValueError(non_finite_message(x, owner))
    if not paths:
        return
    parameter_dtype = paths[0][0].weight.dtype
    compute_dtype = (torch.get_autocast_dtype(x.device.type)
                     if torch.is_autocast_enabled(x.device.type) else parameter_dtype)
    values_per_channel = x.shape[0] * x.shape[2] * x.shape[3]

    def overflow(scale):
        """(features, sum of squares) for inputs up to ``scale``, or None if both fit."""
        features = max(g * scale + o for g, o in zip(bounds[::2], bounds[1::2]))
        # sum over the B H W values of one channel of h^2 <= B H W max|h|^2
        squares = values_per_channel * features * features
        fits = features < torch.finfo(compute_dtype).max and \
            squares < torch.finfo(parameter_dtype).max
        return None if fits else (features, squares)

    found = overflow(largest)
    # Weights that overflow on images of unit scale have diverged: that shows in the loss
    # (the training loop's signal); only an input that the weights cannot take is blamed.
    if found is None or overflow(min(largest, 1.0)) is not None:
        return
    features, squares = found
    raise ValueError(
        f"{owner} input x is too large (max |x| = {largest:.3g}): the convolutions before its "
        f"first normalisation give features up to {features:.3g}, whose squares summed over "
        f"{values_per_channel} values per channel reach {squares:.3g}, beyond "
        f"{parameter_dtype}'s largest value {torch.finfo(parameter_dtype).max:.3g}; scale x "
        "down (normalised images lie within a few units of 0)"
    )
