"""EM attention on PyTorch tensors: the same function as :func:`em_tutorial.ema.em_attention`.

Same arguments, same shapes, the same :data:`em_tutorial.ema.EPS` (``eps = 1e-6`` in the A_M
denominator and in the L2 normalisation), so the NumPy stage and this one can be compared
number for number. Autograd flows through every step; :class:`em_tutorial.nn.EMAU` runs the
same iterations (:func:`em_iterations`) under ``torch.no_grad()``, as the paper does.
"""

from __future__ import annotations

import torch

from ..backend import get_array_module
from ..ema import EPS
from ..ema_validation import validate_em_attention_inputs

__all__ = [
    "em_attention", "em_iterations", "safe_norm", "check_feature_map", "check_input_dtype", "EPS",
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


def check_feature_map(x: torch.Tensor, channels: int, owner: str) -> None:
    """Raise ValueError or TypeError naming ``owner`` unless ``x`` is a (B, C, H, W) tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} input x must be a torch tensor, got {type(x).__name__}")
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
