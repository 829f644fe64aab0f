"""Segmentation data: the embedded digit scenes, PASCAL VOC 2012, and their transforms.

* :class:`DigitScenes` -- built at run time from scikit-learn's handwritten digits; no download.
* :class:`ContextScenes` -- one digit class per scene, fragments cut by the border far from a
  full instance: the task that needs global context (the digit scenes are its control).
* :class:`VOCSegmentation` -- PASCAL VOC 2012 (optionally SBD "trainaug") from a local folder.
* :class:`TrainAugmentation` -- the official random scale / pad / crop / flip.
* :class:`ResumableSampler` -- distributed sampling that resumes mid-epoch, with per-sample seeds.
* :func:`check_label` -- every reader's check of label values; :func:`find_bad_samples` scans a split.

Every data set returns ``(image (3, H, W) float32, label (H, W) int64)`` pairs, normalised
(ImageNet's mean and std by default, see :data:`NORMALIZATIONS`) and with 255 as the ignore label, and has ``num_classes``, ``class_names`` and
``raw(i)`` (the uint8 image and label, for display).
"""

from .context import ContextConfig, ContextScenes
from .digits import DIGIT_CLASS_NAMES, DigitScenes, SceneConfig, render_scene, upscale_glyph
from .labels import LabelError, check_label, find_bad_samples
from .sampler import ResumableSampler, sample_seed
from .transforms import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    OFFICIAL_SCALES,
    TrainAugmentation,
    ValidationPadding,
    denormalize,
    pad_to_stride_plus_one,
    to_model_input,
)
from .voc import VOC_CLASS_NAMES, VOCSegmentation, default_train_split, find_voc_root

__all__ = [
    "DIGIT_CLASS_NAMES",
    "ContextConfig",
    "ContextScenes",
    "DigitScenes",
    "SceneConfig",
    "render_scene",
    "upscale_glyph",
    "LabelError",
    "check_label",
    "find_bad_samples",
    "ResumableSampler",
    "sample_seed",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "OFFICIAL_SCALES",
    "TrainAugmentation",
    "ValidationPadding",
    "denormalize",
    "pad_to_stride_plus_one",
    "to_model_input",
    "VOC_CLASS_NAMES",
    "VOCSegmentation",
    "default_train_split",
    "find_voc_root",
]
