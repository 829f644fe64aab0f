"""Global average pooling as a context block: the cheapest way to let every pixel see the image.

The image-level pooling branch of ParseNet and DeepLabv3, written as a residual block with
the same interface as the EMAU and the non-local block:

    g = (1 / N) sum_n x_n                      global mean of the features, (B, C, 1, 1)
    Y = ReLU(X + conv1x1(g))                   the same context vector added at every pixel

It costs O(N C + C^2) per image, against O(N K C T) for the EMAU and O(N^2 C) for the
non-local block, and carries a single vector of context: what the whole image holds, not
which pixels belong together. It is the baseline that an attention module has to beat.
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import check_feature_map

__all__ = ["GlobalPooling2d"]


class GlobalPooling2d(nn.Module):
    """Global-context block: (B, C, H, W) -> (B, C, H, W).

    Parameters
    ----------
    channels : int
        C, channels of the input and output.

    Notes
    -----
    No normalisation layer after the 1x1 convolution: its input has one value per image and
    channel, which BatchNorm cannot normalise in a batch of one. The convolution has a bias.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, "GlobalPooling2d")
        # g = (1 / N) sum_n x_n
        context = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        # Y = ReLU(X + conv1x1(g)), broadcast over the H x W positions
        return (x + self.conv(context)).relu()
