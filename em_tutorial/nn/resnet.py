"""A dilated ResNet backbone for segmentation, written without torchvision.

* ResNet-50/101/152 (bottleneck blocks, v1.5: the stride sits on the 3x3 convolution) and,
  for small experiments, basic blocks and any depths and widths, chosen by arguments.
* Two stems: the plain one (7x7 convolution) whose parameter names match torchvision's
  ``resnet50/101/152`` exactly (``conv1``, ``bn1``, ``layer1.0.downsample.0`` ...), so an ImageNet
  ``state_dict`` from torchvision loads with ``load_state_dict``; and the deep stem of EMANet
  and PSPNet (three 3x3 convolutions, widths ``w, w, 2w``).
* Output stride 32, 16 or 8: the last stages trade their stride for dilation, with the official
  EMANet multi-grid: in a stage of dilation d the first block uses d/2 (at least 1) and block i
  uses ``d * multi_grid[i]``, with ``multi_grid = (1, 2, 4)`` on the last stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .functional import check_batch, check_input_dtype, check_non_finite_option, check_tensor

__all__ = [
    "BasicBlock", "Bottleneck", "ResNet", "resnet50", "resnet101", "resnet152", "RESNET_DEPTHS"
]

RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
"""Blocks per stage of the standard depths."""


def _conv3x3(in_channels, out_channels, stride=1, dilation=1):
    # padding = dilation keeps the spatial size at stride 1.
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, in_channels, planes, stride=1, dilation=1, downsample=None, norm_layer=nn.BatchNorm2d
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand by 4, residual (ResNet-50/101/152)."""

    expansion = 4

    def __init__(
        self, in_channels, planes, stride=1, dilation=1, downsample=None, norm_layer=nn.BatchNorm2d
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
# Stride and dilation of layer3 and layer4 for each output stride.
_STAGE_SETTINGS = {32: ((2, 1), (2, 1)), 16: ((2, 1), (1, 2)), 8: ((1, 2), (1, 4))}


class ResNet(nn.Module):
    """Dilated ResNet: image (B, 3, H, W) -> features (B, out_channels, ~H/os, ~W/os).

    Parameters
    ----------
    layers : sequence of 4 ints
        Blocks per stage, e.g. (3, 4, 23, 3) for ResNet-101.
    block : {"bottleneck", "basic"}
    base_width : int
        Planes of the first stage (64 in the standard nets); the stages use 1x, 2x, 4x, 8x.
    deep_stem : bool
        Three 3x3 convolutions (widths ``stem_width, stem_width, 2 * stem_width``) instead of
        one 7x7; the official EMANet backbone uses it.
    stem_width : int, optional
        Default ``base_width`` (plain stem: output channels; deep stem: first two convolutions).
    output_stride : {8, 16, 32}
        Ratio of input to feature-map size. 8 and 16 dilate the last stages instead of striding.
    multi_grid : sequence of ints
        Dilation multipliers for the blocks of layer4 when it is dilated (output stride 8 or
        16); official EMANet: (1, 2, 4).
    num_classes : int, optional
        If given, add ``avgpool`` and ``fc`` so the module is a full ImageNet classifier whose
        ``state_dict`` keys equal torchvision's (with the plain stem). ``forward`` then returns
        class scores instead of features.
    norm_layer : callable
        Normalisation layer (``nn.BatchNorm2d``, ``nn.SyncBatchNorm``, ...).
    in_channels : int
        Channels of the input image.
    non_finite : {"raise", "skip"}
        ``"raise"``: the input rules of :func:`~em_tutorial.nn.functional.check_batch` (NaN or
        inf, images so large that the first BatchNorm's statistics overflow) in both modes.
        ``"skip"``: no such check (:class:`~em_tutorial.nn.EMANet` checks its images itself
        and builds its backbone so). An empty batch in training mode is refused either way.

    Attributes
    ----------
    in_channels : int
        Channels of the input image.
    out_channels : int
        Channels of the feature map that ``forward`` returns.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 23, 3),
        block: str = "bottleneck",
        base_width: int = 64,
        deep_stem: bool = False,
        stem_width: int | None = None,
        output_stride: int = 8,
        multi_grid: Sequence[int] = (1, 2, 4),
        num_classes: int | None = None,
        norm_layer=nn.BatchNorm2d,
        in_channels: int = 3,
        *,
        non_finite: str = "raise",
    ):
        super().__init__()
        self.non_finite = check_non_finite_option(non_finite)
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {tuple(layers)}")
        if output_stride not in _STAGE_SETTINGS:
            raise ValueError(f"output_stride must be one of 8, 16, 32, got {output_stride}")
        if not multi_grid or any(g < 1 for g in multi_grid):
            raise ValueError(f"multi_grid must be positive integers, got {tuple(multi_grid)}")
        block_cls = _BLOCKS[block]
        stem_width = stem_width or base_width
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.norm_layer = norm_layer

        if deep_stem:
            self.conv1 = nn.Sequential(
                _conv3x3(in_channels, stem_width, stride=2),
                norm_layer(stem_width),
                nn.ReLU(inplace=True),
                _conv3x3(stem_width, stem_width),
                norm_layer(stem_width),
                nn.ReLU(inplace=True),
                _conv3x3(stem_width, 2 * stem_width),
            )
            self.in_planes = 2 * stem_width
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
            self.in_planes = stem_width
        self.bn1 = norm_layer(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        (stride3, dilation3), (stride4, dilation4) = _STAGE_SETTINGS[output_stride]
        self.layer1 = self._make_layer(block_cls, base_width, layers[0])
        self.layer2 = self._make_layer(block_cls, 2 * base_width, layers[1], stride=2)
        self.layer3 = self._make_layer(block_cls, 4 * base_width, layers[2], stride3, dilation3)
        self.layer4 = self._make_layer(
            block_cls, 8 * base_width, layers[3], stride4, dilation4,
            multi_grid if dilation4 > 1 else (1,),
        )
        self.out_channels = self.in_planes

        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.out_channels, num_classes)
        self._init_weights()

    def _make_layer(self, block_cls, planes, num_blocks, stride=1, dilation=1, multi_grid=(1,)):
        out_planes = planes * block_cls.expansion
        downsample = None
        if stride != 1 or self.in_planes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_planes, out_planes, 1, stride=stride, bias=False),
                self.norm_layer(out_planes),
            )
        # Official multi-grid: the first block of a dilated stage still sees the previous,
        # smaller dilation (d / 2); block i then uses d * multi_grid[i].
        dilations = [max(dilation // 2, 1)]
        dilations += [dilation * multi_grid[i % len(multi_grid)] for i in range(1, num_blocks)]
        first = block_cls(self.in_planes, planes, stride, dilations[0], downsample, self.norm_layer)
        blocks = [first]
        self.in_planes = out_planes
        blocks += [
            block_cls(out_planes, planes, 1, d, None, self.norm_layer) for d in dilations[1:]
        ]
        return nn.Sequential(*blocks)

    def _init_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.modules.batchnorm._NormBase):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def stem_conv(self) -> nn.Conv2d:
        """The convolution that sees the images, before the first normalisation layer."""
        return self.conv1[0] if isinstance(self.conv1, nn.Sequential) else self.conv1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) images -> features (or class scores with ``num_classes``).

        Raises
        ------
        ValueError
            A shape other than (B, in_channels, H, W); an empty batch in training mode; with
            ``non_finite="raise"``, NaN or inf (naming the images) or images so large that
            the first BatchNorm's statistics overflow. Refused inputs change no buffer.
        TypeError
            Not a tensor, or a dtype other than the parameters' outside autocast.
        """
        check_tensor(x, "ResNet", f"(B, {self.in_channels}, H, W)")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResNet expects images of shape (B, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        check_input_dtype(x, self.stem_conv.weight, "ResNet")
        check_batch(x, "ResNet", self.training, [(self.stem_conv,)],
                    values=self.non_finite == "raise")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, stem, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, out, H/os, W/os)
        if hasattr(self, "fc"):
            return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, num_classes)
        return x


def _resnet(depth: int, **kwargs) -> ResNet:
    block, layers = RESNET_DEPTHS[depth]
    return ResNet(layers, block, **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50; keyword arguments as in :class:`ResNet`."""
    return _resnet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101; keyword arguments as in :class:`ResNet`."""
    return _resnet(101, **kwargs)


def resnet152(**kwargs) -> ResNet:
    """ResNet-152; keyword arguments as in :class:`ResNet`."""
    return _resnet(152, **kwargs)
