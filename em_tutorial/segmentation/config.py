"""What a training run depends on: :class:`TrainConfig`, the recipes that fill its defaults,
and the model and data sets a config describes.

Official PASCAL VOC recipe (:data:`RECIPES` ``["voc"]``): ResNet-101 EMANet, 30k iterations,
batch 16, crop 513, lr 9e-3, BatchNorm momentum 3e-4, the authors' initialisation, the loss
averaged over all pixels of the crop, discrete training scales, the input divided by the mean
colour, validation images padded to 8k + 1. The embedded digit scenes get a small recipe that
trains the tiny EMANet on two CPU cores in a few minutes (``RECIPES["digits"]``); it keeps
PyTorch's BatchNorm momentum, Kaiming initialisation, ImageNet normalisation and the loss
averaged over labelled pixels, which suit a short run from scratch. The context scenes
(``RECIPES["context"]``) pose the task where a fragment's class is decided far away;
the digit scenes are its control.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import numbers
from dataclasses import dataclass

import torch

from .. import nn as em_nn
from ..backend import usable_cpus
from .data import (
    NORMALIZATIONS,
    OFFICIAL_SCALES,
    ContextConfig,
    ContextScenes,
    DigitScenes,
    SceneConfig,
    TrainAugmentation,
    ValidationPadding,
    VOCSegmentation,
    default_train_split,
    to_model_input,
)
from .data.digits import DIGIT_SPLITS
from .loss import LOSS_NORMALIZATIONS

__all__ = [
    "CONTEXT_MODEL",
    "RECIPES",
    "TOUR_MODEL",
    "TrainConfig",
    "build_datasets",
    "build_model",
    "build_val_set",
]

TOUR_MODEL = {
    "block": "basic",
    "base_width": 8,
    "stem_width": 8,
    "ema_channels": 64,
    "num_bases": 16,
    "head_channels": 64,
    "align_corners": False,
}
"""Settings of the tiny EMANet for the 96x96 digit scenes (keyword arguments of
:func:`em_tutorial.nn.emanet_tiny`); the tour trains it, and the same net without the EMAU."""

CONTEXT_MODEL = {**TOUR_MODEL, "num_bases": 8}
"""The tiny EMANet for the 192x192 context scenes: the tour's network with K=8 bases. On the
24x24 feature map the standard non-local block costs about 4 times the EMAU's
multiply-adds and 6 times its memory (``em-tutorial ablate``'s cost columns)."""

RECIPES = {
    # The official EMANet recipe for PASCAL VOC 2012.
    "voc": {
        "model": "resnet101",
        "model_kwargs": {"bn_momentum": em_nn.OFFICIAL_BN_MOMENTUM, "init": "official"},
        "loss_normalization": "all",
        "train_scales": OFFICIAL_SCALES,
        "normalization": "official",
        "val_padding": True,
        "iterations": 30_000,
        "warmup_iterations": 0,
        "batch_size": 16,
        "crop_size": 513,
        "lr": 9e-3,
        "checkpoint_every": 1000,
        "num_workers": 4,
    },
    # A few CPU minutes on the embedded digit scenes.
    "digits": {
        "model": "tiny",
        "model_kwargs": TOUR_MODEL,
        "loss_normalization": "labelled",
        "train_scales": "uniform",  # not used: the scenes are not augmented
        "normalization": "imagenet",
        "val_padding": False,
        "iterations": 3000,
        "warmup_iterations": 0,
        "batch_size": 16,
        "crop_size": None,
        "lr": 0.05,
        "checkpoint_every": 500,
        "num_workers": 0,
        "num_scenes": 3000,
        "val_scenes": 300,
        "image_size": 96,
    },
    # From random weights the tiny network barely tells the digits apart at this budget;
    # `em-tutorial ablate` starts it from a backbone trained on the digit scenes
    # (--pretrained-backbone). The schedule was chosen on held-out seeds (results/ablation/PLAN.md).
    "context": {
        "model": "tiny",
        "model_kwargs": CONTEXT_MODEL,
        "loss_normalization": "labelled",
        "train_scales": "uniform",  # not used: the scenes are not augmented
        "normalization": "imagenet",
        "val_padding": False,
        "iterations": 600,
        "warmup_iterations": 50,
        "batch_size": 8,
        "crop_size": None,
        "lr": 0.025,  # the digit recipe's rate per image (0.05 at batch 16)
        "checkpoint_every": 200,
        "num_workers": 0,
        "num_scenes": 1000,
        "val_scenes": 300,
        "image_size": 192,
    },
}
"""Defaults per data set; any :class:`TrainConfig` field given explicitly overrides them."""

MIN_INPUT_SIDE = 32
"""The smallest scene side (``image_size``) and VOC crop (``crop_size``) a run accepts."""


_MODELS = {
    "tiny": em_nn.emanet_tiny,
    "resnet50": em_nn.emanet_resnet50,
    "resnet101": em_nn.emanet_resnet101,
    "resnet152": em_nn.emanet_resnet152,
}


_WHOLE_NUMBERS = ("num_scenes", "val_scenes", "image_size", "iterations", "batch_size",
                  "crop_size", "warmup_iterations", "seed", "checkpoint_every", "log_every",
                  "num_workers", "threads", "stop_at")
"""The fields that count something (scenes, pixels, iterations, processes): whole numbers only."""


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` fields take the data set's recipe value.

    Attributes
    ----------
    dataset : {"digits", "context", "voc"}
    data_root : str, optional
        PASCAL VOC folder (``dataset="voc"``).
    train_split, val_split : str
        VOC: ``train_split=None`` picks ``"trainaug"`` when its list exists, else ``"train"``.
        Digit scenes: ``"train"`` and ``"val"`` are the only splits (``val_split`` may name
        either: it is the split evaluated).
    num_scenes, val_scenes, image_size : int
        Digit and context scenes: sizes of the two splits and the side of a scene.
    model : {"tiny", "resnet50", "resnet101", "resnet152"}
    head : {"emau", "nonlocal", "pooling", "none"}
        The attention block of EMANet ("none" is the ablation without it).
    model_kwargs : dict
        Extra keyword arguments of the model constructor (``bn_momentum``, ``init``,
        ``bases_update`` ...).
    pretrained_backbone : str, optional
        Backbone ``state_dict`` file (ImageNet weights) to start from.
    iterations, batch_size, crop_size, lr, momentum, weight_decay, poly_power
        The optimisation recipe; ``batch_size`` is the total over all processes.
    warmup_iterations : int
        Iterations of linear learning-rate warm-up at the start of the poly schedule (0: none,
        as in the official and digit recipes; the context recipe warms up for 50).
    loss_normalization : {"all", "labelled", "classes"}
        The loss averaged over all pixels of the crops (official), over the labelled ones, or
        class by class (see :func:`~em_tutorial.segmentation.loss.segmentation_loss`).
    train_scales : tuple of float or "uniform"
        VOC: the random rescaling factor drawn from this set (official: ``OFFICIAL_SCALES``),
        or uniformly from [0.5, 2.0].
    normalization : {"imagenet", "official"}
        Input normalisation, ``(x - mean) / std`` or the official ``(x - mean) / mean``.
    val_padding : bool
        Pad validation images at the bottom and right to 8k + 1 (official); the padding is
        labelled 255 and never counts.
    seed : int
    out_dir : str
        Receives ``checkpoint.pt``, ``log.jsonl`` and ``summary.json``.
    checkpoint_every : int
        Iterations between checkpoints (one is always written at the end).
    log_every : int
        Iterations between lines in ``log.jsonl``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt``.
    stop_at : int, optional
        Stop after this many iterations (with a checkpoint, without evaluation) although the
        schedule runs to ``iterations``; a later ``resume=True`` run finishes the job. For
        machines rented by the hour, and for testing resumption.
    eval_scales, eval_flip
        Inference for the final evaluation (see :func:`em_tutorial.segmentation.evaluate`).
    num_workers, threads, device, progress
        Data-loader processes (default: the recipe's, at most the CPUs this process may use),
        CPU threads (``torch.set_num_threads``), ``"auto"``/``"cpu"``/
        ``"cuda"``, and whether to draw the tqdm bar.
    scene_cache : str, optional
        Digit and context scenes: a folder that keeps rendered scenes, so that runs of the same
        seed render them once (the ablation shares one across its runs).
    """

    dataset: str = "digits"
    data_root: str | None = None
    train_split: str | None = None
    val_split: str = "val"
    num_scenes: int | None = None
    val_scenes: int | None = None
    image_size: int | None = None
    model: str | None = None
    head: str = "emau"
    model_kwargs: dict | None = None
    pretrained_backbone: str | None = None
    iterations: int | None = None
    batch_size: int | None = None
    crop_size: int | None = None
    lr: float | None = None
    loss_normalization: str | None = None
    train_scales: tuple | str | None = None
    normalization: str | None = None
    val_padding: bool | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_iterations: int | None = None
    seed: int = 0
    out_dir: str = "runs/emanet"
    checkpoint_every: int | None = None
    log_every: int = 10
    resume: bool = False
    eval_scales: tuple = (1.0,)
    eval_flip: bool = False
    num_workers: int | None = None
    threads: int | None = None
    device: str = "auto"
    progress: bool = True
    stop_at: int | None = None
    scene_cache: str | None = None

    def __post_init__(self):
        if self.dataset not in RECIPES:
            raise ValueError(f"dataset must be one of {sorted(RECIPES)}, got {self.dataset!r}")
        if self.num_workers is None:  # the recipe's, but no more processes than CPUs
            self.num_workers = min(RECIPES[self.dataset]["num_workers"], usable_cpus())
        for name, value in RECIPES[self.dataset].items():
            if getattr(self, name) is None:
                # a copy: editing this config's model_kwargs must not edit the recipe
                setattr(self, name, copy.deepcopy(value))
        for name in _WHOLE_NUMBERS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, numbers.Integral)):
                raise TypeError(f"{name} must be a whole number, got {value!r}")
        if self.model not in _MODELS:
            raise ValueError(f"model must be one of {sorted(_MODELS)}, got {self.model!r}")
        if self.dataset == "voc" and not self.data_root:
            raise ValueError("dataset 'voc' needs data_root, the PASCAL VOC 2012 folder")
        if self.dataset in ("digits", "context"):
            self._check_digit_splits()
        for name in ("iterations", "batch_size", "checkpoint_every", "log_every", "stop_at",
                     "threads"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be at least 0, got {self.num_workers}")
        if self.stop_at is not None and self.stop_at > self.iterations:
            raise ValueError(f"stop_at {self.stop_at} lies beyond the end of the schedule, "
                             f"iteration {self.iterations}: the run would simply finish")  # fmt: skip
        side = "image_size" if self.dataset in _SCENES else "crop_size"
        if getattr(self, side) < MIN_INPUT_SIDE:
            raise ValueError(f"{side} must be at least {MIN_INPUT_SIDE}, got "
                             f"{getattr(self, side)}: the network downsamples by 8, so a smaller "
                             "input leaves it fewer than 4x4 feature cells to segment")  # fmt: skip
        if not 0 <= self.warmup_iterations < self.iterations:
            raise ValueError(f"warmup_iterations ({self.warmup_iterations}) must lie in [0, "
                             f"iterations={self.iterations}): set a shorter warm-up with more "
                             "iterations")  # fmt: skip
        for name, allowed in (("loss_normalization", LOSS_NORMALIZATIONS),
                              ("normalization", tuple(NORMALIZATIONS))):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        self.eval_scales = tuple(float(s) for s in self.eval_scales)
        if isinstance(self.train_scales, str) and self.train_scales != "uniform":
            raise ValueError(f"train_scales must be 'uniform' or factors: {self.train_scales!r}")
        if self.train_scales != "uniform":
            self.train_scales = tuple(float(s) for s in self.train_scales)

    def _check_digit_splits(self):
        for name, allowed in (("train_split", (None, "train")), ("val_split", DIGIT_SPLITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"the digit scenes have two splits, 'train' ({self.num_scenes} scenes) and "
                    f"'val' ({self.val_scenes} scenes); {name} {getattr(self, name)!r} is not one"
                )

    def to_dict(self) -> dict:
        """Plain-Python form (lists for tuples), for checkpoints and logs."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def build_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The EMANet that ``config`` describes (``config.model``, ``config.head``, ``model_kwargs``)."""
    kwargs = dict(config.model_kwargs or {})
    if config.pretrained_backbone:
        kwargs["pretrained_backbone"] = config.pretrained_backbone
    return _MODELS[config.model](num_classes, head=config.head, **kwargs)


def _input_transform(config: TrainConfig, validation: bool):
    """Normalisation as ``config`` says, and for validation the 8k + 1 padding if asked."""
    if validation and config.val_padding:
        stride = config.model_kwargs.get("output_stride", 8)
        return ValidationPadding(stride, normalization=config.normalization)
    return functools.partial(to_model_input, normalization=config.normalization)


_SCENES = {"digits": (DigitScenes, SceneConfig), "context": (ContextScenes, ContextConfig)}


def _scenes(config: TrainConfig, split: str, count: int, validation: bool, **options):
    scenes, scene_config = _SCENES[config.dataset]
    return scenes(split, count, config.seed, scene_config(image_size=config.image_size),
                  transform=_input_transform(config, validation), cache_dir=config.scene_cache,
                  **options)  # fmt: skip


def build_val_set(config: TrainConfig, far_digits: str | None = None,
                  num_scenes: int | None = None):  # fmt: skip
    """The split ``config.val_split`` evaluates: embedded scenes (``val_scenes`` of them, or the
    ``num_scenes`` training scenes for ``"train"``), or the VOC list of that name.

    ``far_digits`` (context scenes only): ``"keep"``, ``"swap"`` or ``"remove"`` the full
    instances (see :class:`~em_tutorial.segmentation.data.ContextScenes`); ``num_scenes``: the
    first that many scenes of the split instead.
    """
    if config.dataset in _SCENES:
        count = config.num_scenes if config.val_split == "train" else config.val_scenes
        options = {} if far_digits is None else {"far_digits": far_digits}
        return _scenes(config, config.val_split, num_scenes or count, validation=True, **options)
    val_set = VOCSegmentation(config.data_root, config.val_split,
                              transform=_input_transform(config, validation=True))  # fmt: skip
    val_set.check_labels()  # now, rather than after hours of training
    return val_set


def build_datasets(config: TrainConfig):
    """Training and validation sets for ``config`` (training one augmented for VOC)."""
    if config.dataset in _SCENES:
        train_set = _scenes(config, "train", config.num_scenes, validation=False)
        return train_set, build_val_set(config)
    split = config.train_split or default_train_split(config.data_root)
    scales = None if config.train_scales == "uniform" else config.train_scales
    augmentation = TrainAugmentation(
        crop_size=config.crop_size, scales=scales, normalization=config.normalization
    )
    train_set = VOCSegmentation(config.data_root, split, transform=augmentation)
    return train_set, build_val_set(config)

