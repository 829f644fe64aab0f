"""The EM Attention Unit (EMAU) of EMANet as an ``nn.Module``.

Forward pass, on a feature map X of shape (B, C, H, W):

    X' = conv1x1(X)                              (bias 0 under init='kaiming'; frozen, see below)
    z, mu, X~ = EM attention(X', mu^(0), T)      (iterations under no-grad, as in the paper)
    Y = ReLU(X + BN(conv1x1(ReLU(X~))))          (second conv without bias; residual)

The initial bases mu^(0) are a buffer, not a parameter: backpropagation never touches them.
In training mode they follow a moving average of the batch mean of the final bases, the way
BatchNorm tracks its running statistics. An empty batch or non-finite bases leave them as they
are (on every rank under ``torch.distributed``), and an input that would give non-finite
bases, or an empty batch in training mode, is refused before BatchNorm sees it.

The first 1x1 convolution is frozen. In the official code z and mu come out of
``torch.no_grad()``, so nothing the loss sees depends on that convolution: its gradient is None
and SGD skips it, weight decay and momentum included, so it keeps its random initial values for
the whole of training. The EM therefore runs on a fixed random projection of the input. This
module says so: the convolution's parameters have ``requires_grad=False`` (optimisers and
``DistributedDataParallel`` leave them out) and it runs under ``torch.no_grad()``, so no
autograd graph is built for it. mmsegmentation freezes the same convolution explicitly.

Two rules for the moving average of the bases (``bases_update``):

* ``"official"``: ``mu <- (1 - m) mu + m mean_b(mu_b^(T))``, as the authors' training script;
* ``"mmseg"``: ``mu <- (1 - m) mu + m l2normalize(mean_b(mu_b^(T)))``, as mmsegmentation's
  ``EMAModule``, whose EM iterations also normalise with a floor instead of an offset:
  ``v / max(|v|, 1e-12)`` (``F.normalize``) rather than ``v / (1e-6 + |v|)``.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ema_validation import check_lam, check_n_iter, overflow_problem
from ._collectives import all_reduce
from .functional import (
    EPS,
    check_feature_map,
    check_input_dtype,
    check_non_finite_option,
    em_iterations,
    empty_batch_message,
    non_finite_message,
    safe_norm,
)

__all__ = ["EMAU"]


_BASES_UPDATES = ("official", "mmseg")
_INITS = ("official", "kaiming")
MMSEG_EPS = 1e-12
"""The floor of ``F.normalize``: v / max(|v|, eps), mmsegmentation's normalisation."""


def _all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (itself without ``torch.distributed``)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    # Divided before the sum, as mmsegmentation does, so both rules add the same numbers.
    tensor = tensor / dist.get_world_size()
    all_reduce(tensor)
    return tensor


def _mmseg_iterations(x: torch.Tensor, mu: torch.Tensor, n_iter: int, lam: float):
    """:func:`em_iterations` with mmsegmentation's normalisations (floor 1e-12, not +1e-6).

    x (B, N, C), mu (K, C) -> z (B, N, K), mu (B, K, C).
    """
    for _ in range(n_iter):
        # A_E: z_nk = softmax_k(lambda x_n^T mu_k)
        z = torch.softmax(x @ (lam * mu).mT, dim=-1)  # (B, N, C) @ (C, K) -> (B, N, K)
        # A_M: mu_k = sum_n z_nk x_n / max(sum_n z_nk, 1e-12), then mu_k / max(|mu_k|, 1e-12)
        weights = F.normalize(z, p=1, dim=-2, eps=MMSEG_EPS)  # (B, N, K)
        mu = weights.mT @ x  # (B, K, N) @ (B, N, C) -> (B, K, C)
        mu = mu / safe_norm(mu).clamp_min(MMSEG_EPS)  # F.normalize, without squaring large mu
    return z, mu


def _input_problem(x: torch.Tensor, points: torch.Tensor, mu: torch.Tensor, lam: float):
    """None if the EM iterations on ``points`` (B, N, C) stay finite, else why not, in words.

    The rule of every stage (:func:`em_tutorial.ema_validation.overflow_problem`) on the
    projected features: NaN or inf in ``x``, an overflow in the first convolution or in the
    iterations. The largest magnitudes come back to the host together: one read per forward.
    """
    if points.numel() == 0:
        return None
    largest_x, largest_mu = torch.stack([points.abs().amax(), mu.abs().amax()]).tolist()
    if not math.isfinite(largest_x):
        if not bool(torch.isfinite(x).all()):
            return non_finite_message(x, "EMAU")
        return (f"EMAU input x (max |x| = {x.abs().amax().item():.3g}) overflowed "
                f"{points.dtype} in the first convolution; scale it down")
    problem = overflow_problem(largest_x, largest_mu, points.shape[-2], points.shape[-1],
                               lam, points.dtype, torch.finfo(points.dtype).max)
    return problem and f"EMAU input x, after the first convolution: {problem}"


class EMAU(nn.Module):
    """EM Attention Unit: (B, C, H, W) -> (B, C, H, W).

    Parameters
    ----------
    channels : int
        C, the channels of the input and output feature maps.
    num_bases : int
        K, the number of bases mu_k.
    num_stages : int
        T, the number of EM iterations per forward pass (>= 1).
    momentum : float
        Weight of the new batch mean in the moving average of the bases:
        ``mu <- (1 - momentum) * mu + momentum * mean_b(mu_b^(T))``. The official 0.9 decay
        ("alpha") is ``momentum = 0.1``.
    lam : float
        lambda, inverse temperature of the kernel exp(lambda x^T mu) (official: 1).
    renormalize_bases : bool
        With ``bases_update="official"``: L2-normalise each basis again after the moving
        average (an average of unit vectors is slightly shorter than one). Neither the official
        code nor mmsegmentation does this; it is this package's option.
    norm_layer : callable
        Normalisation after the second 1x1 convolution, e.g. ``nn.SyncBatchNorm``.
    bases_update : {"official", "mmseg"}
        The moving-average rule and EM normalisation (see the module docstring). ``"mmseg"``
        normalises the batch mean *before* the average and never after, so the bases stay
        slightly shorter than one there too; it cannot be combined with ``renormalize_bases``.
    init : {"official", "kaiming"}
        Both draw the convolution weights from N(0, sqrt(2/n)), n = 1 * 1 * C (Kaiming normal,
        fan-out). ``"official"`` keeps PyTorch's default (uniform) bias of the first convolution
        as the authors' code does; ``"kaiming"`` sets it to zero.
    zero_init_output : bool
        Start the output BatchNorm's gamma (and beta) at 0, so that the unit is the identity
        at initialisation on a non-negative input (ReLU(X + 0) = X), as the standard non-local
        block starts. The authors' code keeps PyTorch's gamma = 1 (the default here).
    non_finite : {"raise", "skip"}
        What an input with NaN or inf, or one that would overflow, does. ``"raise"``: a
        ValueError before any buffer changes. ``"skip"``: the bases keep their values and the
        NaN flows on to the output; :class:`~em_tutorial.nn.EMANet` uses it, since it checks its
        images itself, so that NaN here means its own weights diverged, which the loss shows.

    Attributes
    ----------
    mu : Tensor, shape (K, C)
        Buffer of initial bases mu^(0), saved in the ``state_dict``. Drawn from
        N(0, sqrt(2/K)) and L2-normalised at construction.
    last_z : Tensor or None, shape (B, H*W, K)
        Detached responsibilities of the last E-step of the latest forward pass; row
        ``h * W + w`` is the attention of pixel (h, w) over the K bases. For visualisation.
    last_bases : Tensor or None, shape (B, K, C)
        Detached final bases mu^(T) of the latest forward pass.
    """

    def __init__(
        self,
        channels: int,
        num_bases: int = 64,
        num_stages: int = 3,
        momentum: float = 0.1,
        lam: float = 1.0,
        renormalize_bases: bool = False,
        norm_layer=nn.BatchNorm2d,
        *,
        bases_update: str = "official",
        init: str = "kaiming",
        zero_init_output: bool = False,
        non_finite: str = "raise",
    ):
        super().__init__()
        for name, size in (("channels", channels), ("num_bases", num_bases)):
            if isinstance(size, bool) or not isinstance(size, numbers.Integral):
                raise TypeError(f"{name} must be an integer; got {size!r}")
            if size < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
        check_n_iter(num_stages, "num_stages")
        check_lam(lam)
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
            raise TypeError(f"momentum must be a real number; got {momentum!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if bases_update not in _BASES_UPDATES:
            raise ValueError(f"bases_update must be one of {_BASES_UPDATES}, got {bases_update!r}")
        if bases_update == "mmseg" and renormalize_bases:
            raise ValueError("renormalize_bases applies to bases_update='official' only")
        check_non_finite_option(non_finite)
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.channels = channels
        self.num_bases = num_bases
        self.num_stages = num_stages
        self.momentum = momentum
        self.lam = lam
        self.renormalize_bases = renormalize_bases
        self.bases_update = bases_update
        self.non_finite = non_finite

        # mu^(0) ~ N(0, sqrt(2/K)), then each basis scaled to unit length.
        mu = torch.randn(num_bases, channels) * math.sqrt(2.0 / num_bases)  # (K, C)
        self.register_buffer("mu", mu / (EPS + torch.linalg.vector_norm(mu, dim=1, keepdim=True)))

        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.conv_out = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn_out = norm_layer(channels)
        self.last_z: torch.Tensor | None = None
        self.last_bases: torch.Tensor | None = None
        for conv in (self.conv_in, self.conv_out):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if init == "kaiming":
            nn.init.zeros_(self.conv_in.bias)
        self.zero_init_output = zero_init_output
        if zero_init_output:
            nn.init.zeros_(self.bn_out.weight)
            nn.init.zeros_(self.bn_out.bias)
        # Frozen: the loss never depends on it (see the module docstring).
        self.conv_in.requires_grad_(False)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_bases={self.num_bases}, num_stages={self.num_stages}, "
            f"momentum={self.momentum}, lam={self.lam}, bases_update={self.bases_update!r}, "
            f"renormalize_bases={self.renormalize_bases}"
        )

    @torch.no_grad()
    def _update_bases(self, bases: torch.Tensor, refused: bool = False) -> None:
        """mu <- (1 - momentum) mu + momentum * mean over the batch (and over all processes).

        Skipped when the batch is empty (B = 0), its bases are not finite or its input is
        ``refused``; under ``torch.distributed`` a skip on one rank is a skip on every rank, so
        that the replicas keep identical bases. The choice is a tensor, never read back.
        """
        # The mean of an empty batch is NaN too, so one test covers both cases.
        batch_mean = bases.mean(dim=0).to(self.mu.dtype)  # (K, C)
        invalid = ~torch.isfinite(batch_mean).all() | refused
        # Every rank must hold the same bases, or the replicas drift apart: the rank means
        # and a count of ranks with nothing valid to give travel in one all-reduce.
        packed = torch.cat([torch.where(invalid, 0.0, batch_mean).flatten(),  # (K*C + 1,)
                            invalid.to(batch_mean.dtype).view(1)])
        packed = _all_reduce_mean(packed)
        skip, batch_mean = packed[-1] > 0, packed[:-1].view_as(self.mu)  # (), (K, C)
        if self.bases_update == "mmseg":
            # mmseg: the mean is L2-normalised before the average, never after
            batch_mean = F.normalize(batch_mean, p=2, dim=1, eps=MMSEG_EPS)  # (K, C)
        # mu^(0) <- (1 - momentum) mu^(0) + momentum mean_b(mu_b^(T))
        updated = (1.0 - self.momentum) * self.mu + self.momentum * batch_mean  # (K, C)
        if self.renormalize_bases:
            updated = updated / (EPS + torch.linalg.vector_norm(updated, dim=1, keepdim=True))
        self.mu.copy_(torch.where(skip, self.mu, updated))

    def _check_input(self, x: torch.Tensor) -> None:
        """Shape, dtype, and BatchNorm's need for two values per channel in training."""
        check_feature_map(x, self.channels, "EMAU")
        check_input_dtype(x, self.conv_in.weight, "EMAU")
        b, _, h, w = x.shape
        if self.training and b * h * w == 1 and isinstance(self.bn_out, _BatchNorm):
            raise ValueError(
                f"EMAU input x of shape {tuple(x.shape)} has one value per channel: BatchNorm "
                "needs more than one value per channel in training; use B * H * W > 1 or "
                "eval mode"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); in training mode also updates the bases ``mu``.

        Sets :attr:`last_z` and :attr:`last_bases`. Under ``torch.distributed`` every rank
        must call it the same number of times in training mode (the bases are all-reduced).

        Raises
        ------
        ValueError
            A shape other than (B, C, H, W) with this unit's C; in training mode, B * H * W = 1
            (BatchNorm's limit) or an empty batch, B = 0 (BatchNorm would count it as a step;
            in eval mode it gives an empty output); NaN or inf in ``x`` (the message names the
            images of the batch that hold them), or values so large that the first
            convolution or the EM iterations overflow (the rule of
            :mod:`em_tutorial.ema_validation`), unless ``non_finite="skip"``. The check is one
            pass over the projected features and one read back from the device per forward;
            ``mu`` and the BatchNorm running statistics are left untouched.
        TypeError
            Not a tensor (a NumPy array, a list), an integer input, or a float dtype other than
            the parameters' outside autocast.
        """
        self._check_input(x)
        identity = x
        b, c, h, w = x.shape
        iterations = _mmseg_iterations if self.bases_update == "mmseg" else em_iterations
        with torch.no_grad():
            # The frozen projection: no graph for it, and none for what is computed from it.
            features = self.conv_in(x).flatten(2)  # (B, C, N)
            with torch.autocast(x.device.type, enabled=False):
                # The iterations run in float32 (or float64) even under autocast: softmax of
                # low-precision dot products would blur the attention maps.
                compute_dtype = torch.promote_types(features.dtype, torch.float32)
                points = features.mT.to(compute_dtype)  # (B, N, C): the x_n of the EM
                problem = _input_problem(x, points, self.mu, self.lam)
                z, bases = iterations(points, self.mu.to(compute_dtype), self.num_stages,
                                      self.lam)  # (B, N, K), (B, K, C)
                # A_R, x_tilde = z mu, computed channels-first (x_tilde^T = mu^T z^T) so that
                # it is already in the layout of the feature map
                x_tilde = bases.mT @ z.mT  # (B, C, K) @ (B, K, N) -> (B, C, N)
        if self.training:
            # An empty batch gives NaN bases (a mean over B = 0): the update skips it too.
            self._update_bases(bases, refused=problem is not None)
            if b == 0:  # refused in both modes of non_finite, after the all-reduce
                raise ValueError(f"{empty_batch_message(x, 'EMAU')}; nothing was changed")
        if problem and self.non_finite == "raise":  # after the update's all-reduce, as a skip
            raise ValueError(f"{problem}; the bases and BatchNorm statistics were left unchanged")
        self.last_z, self.last_bases = z, bases
        x_tilde = x_tilde.to(features.dtype).view(b, c, h, w)  # (B, C, H, W)
        # In-place ReLUs on tensors made here: autograd needs neither input.
        out = self.bn_out(self.conv_out(x_tilde.relu_()))
        return (out + identity).relu_()
