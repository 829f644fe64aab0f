"""The non-local block (eq. 9), the O(N^2 C) baseline that EM attention replaces.

Embedded-Gaussian form (Wang et al., CVPR 2018):

    y_i = (1 / C(x_i)) sum_j exp(theta(x_i)^T phi(x_j)) g(x_j),   C(x_i) = sum_j exp(...)

i.e. a softmax over all N = H*W positions j, followed by a 1x1 convolution + BN back to C
channels and a residual connection. The N x N attention matrix is what makes it expensive.
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import check_feature_map, check_input_dtype

__all__ = ["NonLocal2d"]


class NonLocal2d(nn.Module):
    """Non-local block: (B, C, H, W) -> (B, C, H, W).

    Parameters
    ----------
    channels : int
        C, channels of the input and output.
    inter_channels : int, optional
        Channels of the embeddings theta, phi, g (default C // 2, at least 1).
    norm_layer : callable
        Normalisation after the output 1x1 convolution.
    """

    def __init__(self, channels: int, inter_channels: int | None = None, norm_layer=nn.BatchNorm2d):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        inter_channels = inter_channels or max(channels // 2, 1)
        self.channels = channels
        self.inter_channels = inter_channels
        self.theta = nn.Conv2d(channels, inter_channels, 1)
        self.phi = nn.Conv2d(channels, inter_channels, 1)
        self.g = nn.Conv2d(channels, inter_channels, 1)
        self.conv_out = nn.Conv2d(inter_channels, channels, 1, bias=False)
        self.bn_out = norm_layer(channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inter_channels={self.inter_channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, "NonLocal2d")
        check_input_dtype(x, self.theta.weight, "NonLocal2d")
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).mT  # (B, N, C')
        phi = self.phi(x).flatten(2)  # (B, C', N)
        g = self.g(x).flatten(2).mT  # (B, N, C')
        # f(x_i, x_j) / C(x_i) = softmax_j(theta_i^T phi_j)
        attention = torch.softmax(theta @ phi, dim=-1)  # (B, N, N)
        # y_i = sum_j f_ij g(x_j)
        y = (attention @ g).mT.reshape(b, self.inter_channels, h, w)  # (B, C', H, W)
        return x + self.bn_out(self.conv_out(y))
