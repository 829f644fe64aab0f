"""Image/label transforms for segmentation, in NumPy and PIL (no torchvision).

The official EMANet training augmentation, in order:

1. random scale by a factor in [0.5, 2.0] (bilinear for the image, nearest for the label);
   the official code draws it from :data:`OFFICIAL_SCALES` (``scales=``),
2. pad to at least the crop size -- the image with the mean colour (0 after normalisation),
   the label with the ignore index 255 so padding never counts in the loss,
3. random crop to ``crop_size x crop_size``,
4. random horizontal flip,
5. normalisation per channel and HWC -> CHW: ``(x - mean) / std`` with ImageNet's mean and
   std, or ``(x - mean) / mean`` as the official code does (``normalization="official"``).

For validation the official code pads each image at the bottom and right to a size of the form
8k + 1 (:func:`pad_to_stride_plus_one`, :class:`ValidationPadding`).

Every random choice comes from the ``rng`` (a ``numpy.random.Generator``) passed in, so a
sample's augmentation is fixed by its seed -- that is what makes resumed training identical to
uninterrupted training, and what keeps DataLoader worker processes from sharing random streams.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IGNORE_INDEX",
    "NORMALIZATIONS",
    "OFFICIAL_SCALES",
    "TrainAugmentation",
    "ValidationPadding",
    "pad_to_stride_plus_one",
    "to_model_input",
    "denormalize",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IGNORE_INDEX = 255
OFFICIAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
"""The discrete training scales of the official EMANet recipe."""
NORMALIZATIONS = {"imagenet": IMAGENET_STD, "official": IMAGENET_MEAN}
"""The divisor of each input normalisation: ImageNet's std, or its mean (the official code's)."""


def _divisor(normalization):
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}"
        )
    return NORMALIZATIONS[normalization]


def to_model_input(image, label, rng=None, normalization="imagenet"):
    """uint8 ``(H, W, 3)`` image and ``(H, W)`` label -> normalised ``(3, H, W)`` float32, int64.

    ``x = (image / 255 - mean) / d`` per channel, with ImageNet's mean and ``d`` its std
    (``normalization="imagenet"``) or its mean (``"official"``, as the authors' code, whose
    released weights expect it).
    """
    divisor = _divisor(normalization)
    x = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / divisor  # (H, W, 3)
    x = np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, H, W)
    return x, np.asarray(label, dtype=np.int64)


def denormalize(x, normalization="imagenet"):
    """Invert :func:`to_model_input` for display: ``(3, H, W)`` -> uint8 ``(H, W, 3)``."""
    divisor = _divisor(normalization)
    x = np.asarray(x, dtype=np.float32).transpose(1, 2, 0) * divisor + IMAGENET_MEAN  # (H, W, 3)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


class TrainAugmentation:
    """The official random scale / pad / crop / flip, then :func:`to_model_input`.

    The factor is rescaled with PIL (rounded sizes, antialiased when shrinking); the official
    code uses ``F.interpolate(scale_factor=s, align_corners=True)`` (floored sizes, no
    antialiasing).

    Parameters
    ----------
    crop_size : int
        Side of the square crop (513 in the official VOC recipe).
    scale_range : (float, float)
        Range of the random rescaling factor, drawn uniformly (when ``scales`` is None).
    flip : bool
        Flip horizontally with probability 1/2.
    scales : sequence of float, optional
        A discrete set to draw the factor from, each equally likely, instead of the range;
        the official recipe uses :data:`OFFICIAL_SCALES`.
    normalization : {"imagenet", "official"}
        See :func:`to_model_input`.
    """

    def __init__(self, crop_size=513, scale_range=(0.5, 2.0), flip=True, scales=None,
                 normalization="imagenet"):  # fmt: skip
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        self.crop_size = int(crop_size)
        self.scale_range = tuple(scale_range)
        self.flip = flip
        if scales is not None and (len(scales) == 0 or min(scales) <= 0):
            raise ValueError(f"scales must be a non-empty set of positive factors, got {scales}")
        self.scales = None if scales is None else tuple(float(s) for s in scales)
        _divisor(normalization)
        self.normalization = normalization

    def __call__(self, image, label, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        image = np.asarray(image, dtype=np.uint8)
        label = np.asarray(label, dtype=np.uint8)
        h, w = label.shape

        if self.scales is None:
            scale = rng.uniform(*self.scale_range)
        else:
            scale = self.scales[rng.integers(len(self.scales))]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL takes (W, H)
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))

        h, w = label.shape
        pad_h, pad_w = max(self.crop_size - h, 0), max(self.crop_size - w, 0)
        if pad_h or pad_w:
            mean_colour = np.round(IMAGENET_MEAN * 255).astype(np.uint8)
            padded = np.empty((h + pad_h, w + pad_w, 3), dtype=np.uint8)
            padded[:] = mean_colour
            padded[:h, :w] = image
            image = padded
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)

        h, w = label.shape
        top = rng.integers(0, h - self.crop_size + 1)
        left = rng.integers(0, w - self.crop_size + 1)
        image = image[top : top + self.crop_size, left : left + self.crop_size]
        label = label[top : top + self.crop_size, left : left + self.crop_size]

        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return to_model_input(image, label, normalization=self.normalization)


def pad_to_stride_plus_one(image, label, stride=8):
    """Pad at the bottom and right to H, W of the form ``stride * k + 1`` (official validation).

    With ``align_corners=True`` a side of ``8k + 1`` maps onto the ``k + 1`` positions of an
    output-stride-8 feature map corner to corner.

    Parameters
    ----------
    image : ndarray, shape (C, H, W)
        A normalised image (:func:`to_model_input`); padded with 0, the mean colour.
    label : ndarray, shape (H, W)
        Padded with :data:`IGNORE_INDEX`, so the padding never counts in the metrics.
    stride : int
        The network's output stride.

    Returns
    -------
    image (C, H', W'), label (H', W') with ``H' = H + ((1 - H) mod stride)``, likewise W'.
    """
    if image.ndim != 3 or label.shape != image.shape[1:]:
        raise ValueError(
            f"expected image (C, H, W) and label (H, W), got {image.shape} and {label.shape}"
        )
    h, w = label.shape
    pad_h, pad_w = (1 - h) % stride, (1 - w) % stride
    image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=0)
    label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image, label


class ValidationPadding:
    """:func:`to_model_input`, then :func:`pad_to_stride_plus_one`: the official validation
    transform, with the ``(image, label, rng)`` signature of the data sets' ``transform``.
    ``normalization`` as in :func:`to_model_input`."""

    def __init__(self, stride=8, normalization="imagenet"):
        if stride < 1:
            raise ValueError(f"stride must be positive, got {stride}")
        self.stride = int(stride)
        _divisor(normalization)
        self.normalization = normalization

    def __call__(self, image, label, rng=None):
        x, y = to_model_input(image, label, normalization=self.normalization)
        return pad_to_stride_plus_one(x, y, stride=self.stride)
