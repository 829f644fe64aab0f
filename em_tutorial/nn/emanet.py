"""EMANet: a dilated ResNet, then the EMA Unit between two 3x3 convolutions, then a classifier.

    image (B, 3, H, W)
      -> backbone                       (B, 2048, H/8, W/8)   ResNet-101, output stride 8
      -> 3x3 conv + BN + ReLU           (B, 512, ...)         ``fc0``
      -> EMAU(512, K=64, T=3)           (B, 512, ...)         ``attention`` (or NonLocal2d / none)
      -> 3x3 conv + BN + ReLU, Dropout  (B, 256, ...)         ``fc1``
      -> 1x1 conv                       (B, num_classes, ...) ``fc2``
      -> bilinear upsample              (B, num_classes, H, W)

Also here: :func:`param_groups`, the optimiser groups of the official training recipe.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .emau import EMAU
from .non_local import NonLocal2d
from .pooling import GlobalPooling2d
from .resnet import RESNET_DEPTHS, ResNet

__all__ = [
    "EMANet",
    "emanet_resnet50",
    "emanet_resnet101",
    "emanet_resnet152",
    "emanet_tiny",
    "param_groups",
    "TINY_BACKBONE",
]

#: The backbone of :func:`emanet_tiny`: one bottleneck per stage, widths 8-64 (256 out).
TINY_BACKBONE = {"layers": (1, 1, 1, 1), "block": "bottleneck", "base_width": 8, "stem_width": 8}
_BACKBONES = {
    "tiny": TINY_BACKBONE,
    **{f"resnet{depth}": {"block": b, "layers": n} for depth, (b, n) in RESNET_DEPTHS.items()},
}
_HEADS = ("emau", "nonlocal", "pooling", "none")
_BACKBONE_KEYS = ("layers", "block", "base_width", "stem_width", "deep_stem", "multi_grid")


def _conv_bn_relu(in_channels, out_channels, norm_layer):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        norm_layer(out_channels),
        nn.ReLU(inplace=True),
    )


def _build_backbone(backbone, output_stride, norm_layer, backbone_kwargs) -> nn.Module:
    if isinstance(backbone, nn.Module):
        if not hasattr(backbone, "out_channels"):
            raise TypeError("a backbone module must expose `out_channels` (its feature channels)")
        return backbone
    if backbone not in _BACKBONES:
        raise ValueError(
            f"unknown backbone {backbone!r}; use one of {sorted(_BACKBONES)} or an nn.Module"
        )
    kwargs = {"deep_stem": True, "output_stride": output_stride, "norm_layer": norm_layer}
    return ResNet(**{**kwargs, **_BACKBONES[backbone], **(backbone_kwargs or {})})


def _load_backbone_weights(backbone: nn.Module, weights) -> None:
    if isinstance(weights, (str, os.PathLike)):
        weights = torch.load(weights, map_location="cpu", weights_only=True)
    # An ImageNet classifier's head (fc.*) has no place in a segmentation backbone.
    weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    try:
        backbone.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(
            "pretrained backbone weights do not fit this backbone (torchvision weights need "
            f"backbone_kwargs={{'deep_stem': False}} and the same depth): {error}"
        ) from error


class EMANet(nn.Module):
    """EMANet for semantic segmentation: (B, 3, H, W) -> logits (B, num_classes, H, W).

    Parameters
    ----------
    num_classes : int
        Output classes (21 for PASCAL VOC).
    backbone : str or nn.Module
        ``"resnet50"``, ``"resnet101"`` (official), ``"resnet152"``, ``"resnet18"``,
        ``"resnet34"``, ``"tiny"`` (see :data:`TINY_BACKBONE`), or a module with an
        ``out_channels`` attribute.
    output_stride : {8, 16, 32}
        Backbone output stride (official: 8).
    ema_channels : int
        Channels C of the attention block (official: 512).
    num_bases, num_stages, momentum, lam, renormalize_bases
        K, T, the bases' moving-average momentum, lambda and the re-normalisation option of
        :class:`~em_tutorial.nn.EMAU`.
    head : {"emau", "nonlocal", "pooling", "none", None}
        The attention block between the two 3x3 convolutions; the others are ablations
        (``"pooling"``: :class:`~em_tutorial.nn.pooling.GlobalPooling2d`, global context
        without attention).
    head_channels : int
        Channels after the second 3x3 convolution (official: 256).
    dropout : float
        Dropout2d probability before the classifier (official: 0.1).
    pretrained_backbone : str, path or dict, optional
        A backbone ``state_dict`` (or a file holding one) to load, e.g. torchvision ImageNet
        weights with ``backbone_kwargs={"deep_stem": False}``. ``fc.*`` keys are ignored.
    backbone_kwargs : dict, optional
        Overrides for :class:`~em_tutorial.nn.resnet.ResNet` (``layers``, ``base_width``,
        ``stem_width``, ``deep_stem``, ``multi_grid``, ``block``).
    norm_layer : callable
        Normalisation everywhere (``nn.BatchNorm2d``; the paper trains with synchronised BN,
        see ``nn.SyncBatchNorm.convert_sync_batchnorm``).
    align_corners : bool
        Of the final bilinear upsampling. The official code uses True, which maps a 513 input
        and its 65-wide feature map corner to corner.

    Attributes
    ----------
    emau : EMAU or None
        The EMA Unit when ``head == "emau"``; read ``model.emau.last_z`` (B, h*w, K) for the
        attention maps of the latest forward pass.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | nn.Module = "resnet101",
        output_stride: int = 8,
        ema_channels: int = 512,
        num_bases: int = 64,
        num_stages: int = 3,
        head: str | None = "emau",
        head_channels: int = 256,
        momentum: float = 0.1,
        lam: float = 1.0,
        renormalize_bases: bool = False,
        dropout: float = 0.1,
        pretrained_backbone=None,
        backbone_kwargs: dict | None = None,
        norm_layer=nn.BatchNorm2d,
        align_corners: bool = True,
    ):
        super().__init__()
        head = "none" if head is None else head
        if head not in _HEADS:
            raise ValueError(f"head must be one of {_HEADS} or None, got {head!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.head_type = head
        self.align_corners = align_corners
        self.backbone = _build_backbone(backbone, output_stride, norm_layer, backbone_kwargs)
        if pretrained_backbone is not None:
            _load_backbone_weights(self.backbone, pretrained_backbone)

        self.fc0 = _conv_bn_relu(self.backbone.out_channels, ema_channels, norm_layer)
        if head == "emau":
            self.attention = EMAU(
                ema_channels, num_bases, num_stages, momentum, lam, renormalize_bases, norm_layer
            )
        elif head == "nonlocal":
            self.attention = NonLocal2d(ema_channels, norm_layer=norm_layer)
        elif head == "pooling":
            self.attention = GlobalPooling2d(ema_channels)
        else:
            self.attention = nn.Identity()
        self.fc1 = _conv_bn_relu(ema_channels, head_channels, norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.fc2 = nn.Conv2d(head_channels, num_classes, 1)
        for module in (self.fc0, self.fc1, self.fc2):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def emau(self) -> EMAU | None:
        return self.attention if isinstance(self.attention, EMAU) else None

    def head_modules(self) -> list[nn.Module]:
        """The modules that EMANet adds on top of the backbone (for counting its cost)."""
        return [self.fc0, self.attention, self.fc1, self.fc2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"EMANet expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        expected = getattr(self.backbone, "in_channels", None)
        if expected is not None and x.shape[1] != expected:
            raise ValueError(
                f"EMANet expects {expected}-channel images, got shape {tuple(x.shape)}"
            )
        size = x.shape[-2:]
        features = self.backbone(x)  # (B, C_backbone, h, w)
        out = self.fc1(self.attention(self.fc0(features)))  # (B, head_channels, h, w)
        logits = self.fc2(self.dropout(out))  # (B, num_classes, h, w)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)


def _emanet(backbone: str, num_classes: int, kwargs: dict) -> EMANet:
    # Backbone knobs may be given directly: emanet_tiny(4, base_width=16, layers=(2, 2, 2, 2)).
    backbone_kwargs = dict(kwargs.pop("backbone_kwargs", None) or {})
    backbone_kwargs.update({k: kwargs.pop(k) for k in _BACKBONE_KEYS if k in kwargs})
    return EMANet(num_classes, backbone=backbone, backbone_kwargs=backbone_kwargs, **kwargs)


def emanet_resnet50(num_classes: int = 21, **kwargs) -> EMANet:
    """EMANet on a deep-stem ResNet-50 (keyword arguments as in :class:`EMANet`)."""
    return _emanet("resnet50", num_classes, kwargs)


def emanet_resnet101(num_classes: int = 21, **kwargs) -> EMANet:
    """The official EMANet: deep-stem ResNet-101, output stride 8, EMAU(512, K=64, T=3)."""
    return _emanet("resnet101", num_classes, kwargs)


def emanet_resnet152(num_classes: int = 21, **kwargs) -> EMANet:
    """EMANet on a deep-stem ResNet-152 (keyword arguments as in :class:`EMANet`)."""
    return _emanet("resnet152", num_classes, kwargs)


def emanet_tiny(num_classes: int, **kwargs) -> EMANet:
    """A CPU-sized EMANet for ~64x64 images (about 0.3 M parameters).

    Defaults: the :data:`TINY_BACKBONE` (deep stem, one bottleneck per stage, base width 8),
    output stride 8, ``ema_channels=64``, ``num_bases=16``, ``head_channels=32``. Every
    :class:`EMANet` argument and every backbone knob (``layers``, ``block``, ``base_width``,
    ``stem_width``, ``deep_stem``, ``multi_grid``) can be overridden by keyword.
    """
    defaults = {"ema_channels": 64, "num_bases": 16, "head_channels": 32}
    return _emanet("tiny", num_classes, {**defaults, **kwargs})


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Optimiser parameter groups of the official EMANet recipe.

    * ``"weights"``: convolution and linear weights, learning rate ``lr``, ``weight_decay``;
    * ``"norm_weights"``: normalisation-layer scales, ``lr``, no weight decay;
    * ``"biases"``: every bias (convolutions and normalisation layers), ``2 * lr``, no decay.

    Each trainable parameter appears in exactly one group; empty groups are left out. Pass the
    result to ``torch.optim.SGD(groups, momentum=0.9)``; a schedule that scales each group's
    initial ``lr`` (``LambdaLR``) keeps the biases at twice the rate.
    """
    weights, norm_weights, biases = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "bias":
                biases.append(param)
            elif isinstance(module, _NORM_TYPES):
                norm_weights.append(param)
            else:
                weights.append(param)
    groups = [
        {"name": "weights", "params": weights, "lr": lr, "weight_decay": weight_decay},
        {"name": "norm_weights", "params": norm_weights, "lr": lr, "weight_decay": 0.0},
        {"name": "biases", "params": biases, "lr": 2 * lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
