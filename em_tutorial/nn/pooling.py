"""Image-level pooling as a context block, in the form of DeepLabv3's pooling branch.

The cheapest way to let every pixel see the whole image, written with the same interface as
the EMAU and the non-local block:

    g = (1 / N) sum_n x_n                      global mean of the features, (B, C, 1, 1)
    c = ReLU(BN(W_g g))                        1x1 convolution + BN + ReLU on the pooled vector
    Y = ReLU(BN(W_f [X ; upsample(c)]))        the context broadcast to every pixel, concatenated
                                               with X and fused by a 1x1 convolution + BN + ReLU

(DeepLabv3 concatenates the pooled branch with its atrous branches and fuses them with one 1x1
convolution; PSPNet does the same with pyramid pooling.) It costs O(N C^2) per image for the
fusion, carries a single context vector (what the whole image holds, not which pixels belong
together), and is *not* the identity at initialisation: the fusion convolution re-mixes X
from the first step, as in DeepLabv3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .functional import (
    check_batch,
    check_feature_map,
    check_input_dtype,
    check_non_finite_option,
)

__all__ = ["ImagePooling2d"]


class ImagePooling2d(nn.Module):
    """Image-pooling context block (DeepLabv3 form): (B, C, H, W) -> (B, C, H, W).

    Parameters
    ----------
    channels : int
        C, channels of the input and output.
    norm_layer : callable
        Normalisation after both 1x1 convolutions (BatchNorm in DeepLabv3).
    non_finite : {"raise", "skip"}
        As in :class:`~em_tutorial.nn.NonLocal2d`: ``"raise"`` refuses NaN, inf and values
        that would overflow the BatchNorm statistics in both modes; ``"skip"`` (used inside
        :class:`~em_tutorial.nn.EMANet`, which checks its images) lets them through.

    Notes
    -----
    In training mode the BatchNorm of the pooled branch sees one value per image and channel,
    so it needs a batch of at least two images (DeepLabv3 has the same limit).
    """

    def __init__(self, channels: int, norm_layer=nn.BatchNorm2d, *, non_finite: str = "raise"):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.non_finite = check_non_finite_option(non_finite)
        self.channels = channels
        self.pooled = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False),
                                    norm_layer(channels), nn.ReLU(inplace=True))  # fmt: skip
        self.fuse = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False),
                                  norm_layer(channels), nn.ReLU(inplace=True))  # fmt: skip
        for conv in (self.pooled[0], self.fuse[0]):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W).

        Raises
        ------
        ValueError
            A shape other than (B, C, H, W) with this block's C; in training mode a batch of
            fewer than two images; with ``non_finite="raise"``, NaN or inf (naming the images)
            or values that would overflow the BatchNorm statistics. Refused inputs change no
            buffer.
        TypeError
            Not a tensor, or a dtype other than the parameters' outside autocast.
        """
        check_feature_map(x, self.channels, "ImagePooling2d")
        check_input_dtype(x, self.fuse[0].weight, "ImagePooling2d")
        # the convolutions that see x (pooled, or as it is) before their BatchNorm
        check_batch(x, "ImagePooling2d", self.training, [(self.pooled[0],), (self.fuse[0],)],
                    values=self.non_finite == "raise")
        if self.training and x.shape[0] == 1:
            raise ValueError(
                f"ImagePooling2d input x of shape {tuple(x.shape)}: in training mode the pooled "
                "branch's BatchNorm needs a batch of at least two images; use eval mode for one"
            )
        # g = (1 / N) sum_n x_n
        context = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        # c = ReLU(BN(W_g g)), then the same vector at every one of the H x W positions
        context = self.pooled(context)  # (B, C, 1, 1)
        context = F.interpolate(context, size=x.shape[-2:], mode="nearest")  # (B, C, H, W)
        # Y = ReLU(BN(W_f [X ; c]))
        return self.fuse(torch.cat([x, context], dim=1))  # (B, 2C, H, W) -> (B, C, H, W)
