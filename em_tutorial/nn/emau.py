"""The EM Attention Unit (EMAU) of EMANet as an ``nn.Module``.

Forward pass, on a feature map X of shape (B, C, H, W):

    X' = conv1x1(X)                              (with bias)
    z, mu, X~ = EM attention(X', mu^(0), T)      (iterations under no-grad, as in the paper)
    Y = ReLU(X + BN(conv1x1(ReLU(X~))))          (second conv without bias; residual)

The initial bases mu^(0) are a buffer, not a parameter: backpropagation never touches them.
In training mode they follow a moving average of the batch mean of the final bases, the way
BatchNorm tracks its running statistics.

Because z and mu come out of ``torch.no_grad()``, the reconstruction X~ = z mu carries no
gradient back to the first 1x1 convolution: in the official formulation that convolution is
moved only by weight decay. This module keeps that behaviour so that it computes what the
paper's model computes.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from .functional import EPS, check_feature_map, em_iterations

__all__ = ["EMAU"]


def _distributed_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


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
        L2-normalise each basis again after the moving-average update. The official code does
        not (an average of unit vectors is slightly shorter than one); mmsegmentation does.
    norm_layer : callable
        Normalisation after the second 1x1 convolution, e.g. ``nn.SyncBatchNorm``.

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
    ):
        super().__init__()
        if channels < 1 or num_bases < 1:
            raise ValueError(f"channels and num_bases must be >= 1, got {channels}, {num_bases}")
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f"num_stages (T) must be an integer >= 1, got {num_stages!r}")
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam (lambda = 1/sigma^2) must be finite and >= 0, got {lam}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        self.channels = channels
        self.num_bases = num_bases
        self.num_stages = num_stages
        self.momentum = momentum
        self.lam = lam
        self.renormalize_bases = renormalize_bases

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
        nn.init.zeros_(self.conv_in.bias)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_bases={self.num_bases}, num_stages={self.num_stages}, "
            f"momentum={self.momentum}, lam={self.lam}, renormalize_bases={self.renormalize_bases}"
        )

    @torch.no_grad()
    def _update_bases(self, bases: torch.Tensor) -> None:
        """mu <- (1 - momentum) mu + momentum * mean over the batch (and over all processes)."""
        batch_mean = bases.mean(dim=0).to(self.mu.dtype)  # (K, C)
        world_size = _distributed_world_size()
        if world_size > 1:
            # Every rank must hold the same bases, or the replicas drift apart.
            dist.all_reduce(batch_mean, op=dist.ReduceOp.SUM)
            batch_mean /= world_size
        # mu^(0) <- (1 - momentum) mu^(0) + momentum mean_b(mu_b^(T))
        self.mu.mul_(1.0 - self.momentum).add_(batch_mean, alpha=self.momentum)
        if self.renormalize_bases:
            self.mu /= EPS + torch.linalg.vector_norm(self.mu, dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); in training mode also updates the bases ``mu``.

        Sets :attr:`last_z` and :attr:`last_bases`. Under ``torch.distributed`` every rank
        must call it the same number of times in training mode (the bases are all-reduced).
        """
        check_feature_map(x, self.channels, "EMAU")
        identity = x
        b, c, h, w = x.shape
        features = self.conv_in(x).flatten(2)  # (B, C, H*W)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            # The iterations run in float32 (or float64) even under autocast: softmax of
            # low-precision dot products would blur the attention maps.
            compute_dtype = torch.promote_types(features.dtype, torch.float32)
            z, bases = em_iterations(
                features.mT.to(compute_dtype), self.mu.to(compute_dtype), self.num_stages, self.lam
            )  # (B, N, K), (B, K, C)
            # A_R, x_tilde = z mu, computed channels-first (x_tilde^T = mu^T z^T) so that it
            # is already in the layout of the feature map
            x_tilde = bases.mT @ z.mT  # (B, C, K) @ (B, K, N) -> (B, C, N)
        self.last_z, self.last_bases = z, bases
        if self.training:
            self._update_bases(bases)
        x_tilde = x_tilde.to(features.dtype).view(b, c, h, w)  # (B, C, H, W)
        # In-place ReLUs on tensors made here: autograd needs neither input.
        out = self.bn_out(self.conv_out(x_tilde.relu_()))
        return (out + identity).relu_()
