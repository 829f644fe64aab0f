"""EMANet: a dilated ResNet, then the EMA Unit between two 3x3 convolutions, then a classifier.

    image (B, 3, H, W)
      -> backbone                       (B, 2048, H/8, W/8)   ResNet-101, output stride 8
      -> 3x3 conv + BN + ReLU           (B, 512, ...)         ``fc0``
      -> EMAU(512, K=64, T=3)           (B, 512, ...)         ``attention`` (or NonLocal2d / none)
      -> 3x3 conv + BN + ReLU, Dropout  (B, 256, ...)         ``fc1``
      -> 1x1 conv                       (B, num_classes, ...) ``fc2``
      -> bilinear upsample              (B, num_classes, H, W)

The optimiser groups and BatchNorm momentum of the official recipe are in :mod:`.recipe`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ._weights import (
    backbone_structure,
    emanet_difference,
    key_differences,
    read_weights,
    same_keys_and_shapes,
    unwrap_state_dict,
)
from .emau import EMAU
from .functional import check_batch, check_input_dtype, check_tensor
from .non_local import NonLocal2d
from .pooling import ImagePooling2d
from .recipe import set_bn_momentum
from .resnet import RESNET_DEPTHS, ResNet

__all__ = [
    "EMANet",
    "emanet_resnet50",
    "emanet_resnet101",
    "emanet_resnet152",
    "emanet_tiny",
    "TINY_BACKBONE",
]

TINY_BACKBONE = {"layers": (1, 1, 1, 1), "block": "bottleneck", "base_width": 8, "stem_width": 8}
"""The backbone of :func:`emanet_tiny`: one bottleneck per stage, widths 8-64 (256 out)."""
_BACKBONES = {
    "tiny": TINY_BACKBONE,
    **{f"resnet{depth}": {"block": b, "layers": n} for depth, (b, n) in RESNET_DEPTHS.items()},
}
_HEADS = ("emau", "emau_gamma0", "nonlocal", "nonlocal_gamma1", "pooling", "none")
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
    # EMANet checks its images itself (EMANet._check_images): no second pass over them
    kwargs = {"deep_stem": True, "output_stride": output_stride, "norm_layer": norm_layer,
              "non_finite": "skip"}
    return ResNet(**{**kwargs, **_BACKBONES[backbone], **(backbone_kwargs or {})})


def _load_backbone_weights(backbone: nn.Module, weights) -> None:
    source = weights if isinstance(weights, (str, os.PathLike)) else "pretrained_backbone"
    if isinstance(weights, (str, os.PathLike)):
        weights = read_weights(weights)
    weights = unwrap_state_dict(weights, source)
    # An ImageNet classifier's head (fc.*) has no place in a segmentation backbone.
    weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    expected = backbone.state_dict()
    if same_keys_and_shapes(weights, expected):
        backbone.load_state_dict(weights)
        return
    found, wanted = backbone_structure(weights), backbone_structure(expected)
    if found and wanted and found != wanted:
        difference = f"the weights are a {found}, this backbone is a {wanted}"
    else:
        difference = key_differences(weights, expected)
    raise ValueError(
        f"{source}: pretrained backbone weights do not fit this backbone: {difference} "
        "(torchvision weights need backbone_kwargs={'deep_stem': False} and the same depth)"
    )


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
    num_bases, num_stages, momentum, lam, renormalize_bases, bases_update
        K, T, the bases' moving-average momentum, lambda, the re-normalisation option and the
        update rule (``"official"`` or ``"mmseg"``) of :class:`~em_tutorial.nn.EMAU`.
    head : {"emau", "emau_gamma0", "nonlocal", "nonlocal_gamma1", "pooling", "none", None}
        The attention block between the two 3x3 convolutions; the others are ablations:
        ``"emau_gamma0"``, the EMAU with its output BatchNorm's gamma started at 0 (identity at
        initialisation, the footing of the standard non-local block); ``"nonlocal"``,
        :class:`~em_tutorial.nn.NonLocal2d` as the field builds it (``"nonlocal_gamma1"``: the
        same with its output gamma started at 1, the footing of the authors' EMAU); ``"pooling"``,
        :class:`~em_tutorial.nn.ImagePooling2d`, DeepLabv3's image pooling (global context
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
    bn_momentum : float, optional
        Momentum of the running statistics of every BatchNorm, backbone included. ``None``
        keeps PyTorch's 0.1. The official recipe uses :data:`OFFICIAL_BN_MOMENTUM` (3e-4),
        which suits 30k iterations from ImageNet statistics; on a short run from scratch the
        running statistics would stay near their initial values and evaluation would fail.
    init : {"kaiming", "official"}
        ``"official"``: the head convolutions ``fc0``, ``fc1``, ``fc2`` keep PyTorch's default
        initialisation and only the EMAU's convolutions are drawn from N(0, sqrt(2/n)),
        n = k * k * out_channels, its first convolution keeping PyTorch's default bias, as in
        the authors' code. ``"kaiming"``: every head convolution is drawn from N(0, sqrt(2/n))
        and the EMAU's first bias is zero. The backbone is initialised the same way by both.

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
        bn_momentum: float | None = None,
        init: str = "kaiming",
        bases_update: str = "official",
    ):
        super().__init__()
        head = "none" if head is None else head
        if head not in _HEADS:
            raise ValueError(f"head must be one of {_HEADS} or None, got {head!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if init not in ("kaiming", "official"):
            raise ValueError(f"init must be 'kaiming' or 'official', got {init!r}")
        self.num_classes = num_classes
        self.head_type = head
        self.align_corners = align_corners
        self.backbone = _build_backbone(backbone, output_stride, norm_layer, backbone_kwargs)
        if pretrained_backbone is not None:
            _load_backbone_weights(self.backbone, pretrained_backbone)

        self.fc0 = _conv_bn_relu(self.backbone.out_channels, ema_channels, norm_layer)
        if head in ("emau", "emau_gamma0"):
            self.attention = EMAU(
                ema_channels, num_bases, num_stages, momentum, lam, renormalize_bases, norm_layer,
                bases_update=bases_update, init=init, non_finite="skip",
                zero_init_output=head == "emau_gamma0",
            )
        elif head in ("nonlocal", "nonlocal_gamma1"):
            self.attention = NonLocal2d(ema_channels, norm_layer=norm_layer,
                                        zero_init_output=head == "nonlocal",
                                        non_finite="skip")  # fmt: skip
        elif head == "pooling":
            self.attention = ImagePooling2d(ema_channels, norm_layer=norm_layer,
                                            non_finite="skip")
        else:
            self.attention = nn.Identity()
        self.fc1 = _conv_bn_relu(ema_channels, head_channels, norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.fc2 = nn.Conv2d(head_channels, num_classes, 1)
        if init == "kaiming":
            for module in (self.fc0, self.fc1, self.fc2):
                for m in module.modules():
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if bn_momentum is not None:
            set_bn_momentum(self, bn_momentum)

    @property
    def emau(self) -> EMAU | None:
        return self.attention if isinstance(self.attention, EMAU) else None

    def head_modules(self) -> list[nn.Module]:
        """The modules that EMANet adds on top of the backbone (for counting its cost)."""
        return [self.fc0, self.attention, self.fc1, self.fc2]

    def _check_images(self, x: torch.Tensor) -> None:
        """The rules of :func:`~em_tutorial.nn.functional.check_batch`, in both modes.

        NaN would make its whole image background in eval mode and reach every BatchNorm's
        running statistics in training; images so large that the stem's BatchNorm statistics
        overflow would leave them infinite. Both are refused here, before the backbone. NaN
        that appears later comes from diverged weights: the head blocks (built with
        ``non_finite="skip"``) let it through to the loss, where the training loop sees it.
        """
        expected = getattr(self.backbone, "in_channels", None)
        check_tensor(x, "EMANet", f"(B, {expected or 3}, H, W)")
        if x.ndim != 4:
            raise ValueError(f"EMANet expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if expected is not None and x.shape[1] != expected:
            raise ValueError(
                f"EMANet expects {expected}-channel images, got shape {tuple(x.shape)}"
            )
        check_input_dtype(x, self.fc2.weight, "EMANet")
        # A backbone of another kind: NaN and inf only (its first layers are unknown here).
        stem = getattr(self.backbone, "stem_conv", None)
        check_batch(x, "EMANet", self.training, [(stem,)] if stem is not None else [])
        stride = getattr(self.backbone, "output_stride", None)
        if self.training and stride and x.shape[0] == 1 and max(x.shape[-2:]) <= stride:
            raise ValueError(
                f"EMANet input x of shape {tuple(x.shape)} gives 1x1 feature maps (output stride "
                f"{stride}): BatchNorm needs more than one value per channel in training; use "
                f"B > 1, images larger than {stride} pixels, or eval mode"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, num_classes, H, W) logits.

        Raises
        ------
        ValueError
            A shape that is not (B, 3, H, W); in eval and training mode NaN or inf in ``x``
            (the message names the images), or images so large that the first BatchNorm's
            statistics would overflow; in training mode also an empty batch (B = 0; in eval
            mode it gives an empty output) or a single image so small that BatchNorm would
            see one value per channel. Refused inputs leave every buffer unchanged.
        TypeError
            Not a tensor (a NumPy array, a list), an integer input, or a float dtype other
            than the parameters' outside autocast.
        """
        self._check_images(x)
        size = x.shape[-2:]
        features = self.backbone(x)  # (B, C_backbone, h, w)
        out = self.fc1(self.attention(self.fc0(features)))  # (B, head_channels, h, w)
        logits = self.fc2(self.dropout(out))  # (B, num_classes, h, w)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)


def _emanet(backbone: str, num_classes: int, kwargs: dict) -> EMANet:
    # Backbone knobs may be given directly: emanet_tiny(4, base_width=16, layers=(2, 2, 2, 2)).
    backbone_kwargs = dict(kwargs.pop("backbone_kwargs", None) or {})
    backbone_kwargs.update({k: kwargs.pop(k) for k in _BACKBONE_KEYS if k in kwargs})
    weights = kwargs.pop("weights", None)
    model = EMANet(num_classes, backbone=backbone, backbone_kwargs=backbone_kwargs, **kwargs)
    if weights is not None:
        # Imported here: the converter builds reference EMANets from this module.
        from .official import load_official_checkpoint

        state_dict = load_official_checkpoint(weights)
        difference = emanet_difference(state_dict, model.state_dict())
        if difference is not None:
            raise ValueError(f"{weights} does not fit this EMANet: {difference}")
        model.load_state_dict(state_dict)
    return model


def emanet_resnet50(num_classes: int = 21, **kwargs) -> EMANet:
    """EMANet on a deep-stem ResNet-50 (keyword arguments as in :class:`EMANet`)."""
    return _emanet("resnet50", num_classes, kwargs)


def emanet_resnet101(num_classes: int = 21, **kwargs) -> EMANet:
    """The official EMANet: deep-stem ResNet-101, output stride 8, EMAU(512, K=64, T=3).

    ``weights=PATH`` loads a checkpoint of the authors' code (the file their training script
    saves, or a bare ``state_dict``; see :func:`~em_tutorial.nn.load_official_checkpoint`);
    ``emanet_resnet50``, ``emanet_resnet152`` and ``emanet_tiny`` take it too. Other keyword
    arguments as in :class:`EMANet`.
    """
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
