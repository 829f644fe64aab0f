"""The non-local block (eq. 9), the O(N^2 C) baseline that EM attention replaces.

Embedded-Gaussian form (Wang et al., CVPR 2018), built the way the field builds it (the
settings of mmcv's ``NonLocal2d``):

    f_ij = theta(x_i)^T phi(x_j) / sqrt(C')        logits, scaled by 1/sqrt(C') (``use_scale``)
    y_i  = sum_j softmax_j(f_ij) g(x_j)            attention over all N = H*W positions j
    z_i  = x_i + BN(W_z y_i)                       1x1 convolution + BN back to C channels

Initialisation: theta, phi and g are drawn from N(0, 0.01) with zero biases, and the output
BatchNorm's scale gamma starts at 0, so that the block starts as the identity (z = x) and a
pretrained network is undisturbed until training gives the attention a use. The N x N
attention matrix is what makes the block expensive.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .functional import (
    check_batch,
    check_feature_map,
    check_input_dtype,
    check_non_finite_option,
)

__all__ = ["NonLocal2d"]

EMBEDDING_STD = 0.01
"""Standard deviation of the theta, phi and g weights at initialisation (mmcv's ``std``)."""


class NonLocal2d(nn.Module):
    """Non-local block: (B, C, H, W) -> (B, C, H, W).

    Parameters
    ----------
    channels : int
        C, channels of the input and output.
    inter_channels : int, optional
        C', channels of the embeddings theta, phi, g (default C // 2, at least 1).
    norm_layer : callable
        Normalisation after the output 1x1 convolution.
    use_scale : bool
        Divide the logits theta^T phi by sqrt(C') (the standard embedded Gaussian; mmcv's
        default). Without it, large embeddings push the softmax towards a one-hot.
    zero_init_output : bool
        Start the output BatchNorm's gamma (and beta) at 0, so the block is the identity at
        initialisation (the standard). ``False`` keeps PyTorch's gamma = 1: the block then adds
        a random perturbation to its input from the first step.
    non_finite : {"raise", "skip"}
        ``"raise"``: the input rules of :func:`~em_tutorial.nn.functional.check_batch` (NaN or
        inf, values that would overflow the output BatchNorm's statistics) in both modes, a
        ValueError before anything is computed. ``"skip"``: no such check; NaN flows on to the
        output. :class:`~em_tutorial.nn.EMANet` uses it: it checks its images itself, so NaN
        here means its weights diverged, which its loss shows. An empty batch in training mode
        is refused either way.
    """

    def __init__(self, channels: int, inter_channels: int | None = None,
                 norm_layer=nn.BatchNorm2d, use_scale: bool = True,
                 zero_init_output: bool = True, *, non_finite: str = "raise"):  # fmt: skip
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.non_finite = check_non_finite_option(non_finite)
        inter_channels = inter_channels or max(channels // 2, 1)
        self.channels = channels
        self.inter_channels = inter_channels
        self.use_scale = use_scale
        self.zero_init_output = zero_init_output
        self.theta = nn.Conv2d(channels, inter_channels, 1)
        self.phi = nn.Conv2d(channels, inter_channels, 1)
        self.g = nn.Conv2d(channels, inter_channels, 1)
        self.conv_out = nn.Conv2d(inter_channels, channels, 1, bias=False)
        self.bn_out = norm_layer(channels)
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=EMBEDDING_STD)
            nn.init.zeros_(conv.bias)
        if zero_init_output:
            nn.init.zeros_(self.bn_out.weight)
            nn.init.zeros_(self.bn_out.bias)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inter_channels={self.inter_channels}, "
                f"use_scale={self.use_scale}, zero_init_output={self.zero_init_output}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W).

        Raises
        ------
        ValueError
            A shape other than (B, C, H, W) with this block's C; an empty batch in training
            mode; with ``non_finite="raise"``, NaN or inf (naming the images) or values that
            would overflow the BatchNorm statistics. Refused inputs change no buffer.
        TypeError
            Not a tensor, or a dtype other than the parameters' outside autocast.
        """
        check_feature_map(x, self.channels, "NonLocal2d")
        check_input_dtype(x, self.theta.weight, "NonLocal2d")
        # the path to the output BatchNorm: g, a convex combination (no larger), W_z
        check_batch(x, "NonLocal2d", self.training, [(self.g, self.conv_out)],
                    values=self.non_finite == "raise")
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).mT  # (B, N, C')
        phi = self.phi(x).flatten(2)  # (B, C', N)
        g = self.g(x).flatten(2).mT  # (B, N, C')
        # f_ij = theta_i^T phi_j / sqrt(C')
        logits = theta @ phi  # (B, N, C') @ (B, C', N) -> (B, N, N)
        if self.use_scale:
            logits = logits / math.sqrt(self.inter_channels)
        attention = torch.softmax(logits, dim=-1)  # (B, N, N)
        # y_i = sum_j softmax_j(f_ij) g(x_j)
        y = (attention @ g).mT.reshape(b, self.inter_channels, h, w)  # (B, C', H, W)
        # z = x + BN(W_z y)
        return x + self.bn_out(self.conv_out(y))
