"""What a training run depends on: :class:`TrainConfig`, the recipes that fill its defaults,
and the model and data sets a config describes.

Official PASCAL VOC recipe (:data:`RECIPES` ``["voc"]``): ResNet-101 EMANet, 30k iterations,
batch 16, crop 513, lr 9e-3. The embedded scenes get small recipes that train the tiny EMANet
on a CPU core in a few minutes: ``RECIPES["digits"]`` (the digit scenes, the control task) and
``RECIPES["context"]`` (the context scenes, where a fragment's class is decided far away).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass

import torch

from .. import nn as em_nn
from .data import (
    ContextConfig,
    ContextScenes,
    DigitScenes,
    SceneConfig,
    TrainAugmentation,
    VOCSegmentation,
    find_voc_root,
)

__all__ = [
    "CONTEXT_MODEL",
    "RECIPES",
    "TOUR_MODEL",
    "TrainConfig",
    "build_datasets",
    "build_model",
    "build_val_set",
]

#: Settings of the tiny EMANet for the 96x96 digit scenes (keyword arguments of
#: :func:`em_tutorial.nn.emanet_tiny`); the tour trains it, and the same net without the EMAU.
TOUR_MODEL = {
    "block": "basic",
    "base_width": 8,
    "stem_width": 8,
    "ema_channels": 64,
    "num_bases": 16,
    "head_channels": 64,
    "align_corners": False,
}

#: The tiny EMANet for the 256x256 context scenes: the tour's network with K=8 bases, so that on
#: the 32x32 feature map the non-local block costs over 5 times the EMAU (75 M against 12 M
#: multiply-adds per image, from ``em-tutorial ablate``'s cost columns).
CONTEXT_MODEL = {**TOUR_MODEL, "num_bases": 8}

#: Defaults per data set; any :class:`TrainConfig` field given explicitly overrides them.
RECIPES = {
    # The official EMANet recipe for PASCAL VOC 2012.
    "voc": {
        "model": "resnet101",
        "model_kwargs": {},
        "iterations": 30_000,
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
        "iterations": 3000,
        "batch_size": 16,
        "crop_size": None,
        "lr": 0.05,
        "checkpoint_every": 500,
        "num_workers": 0,
        "num_scenes": 3000,
        "val_scenes": 300,
        "image_size": 96,
    },
    # About five minutes on one idle CPU core: 256x256 scenes cost 7 times the digit scenes.
    "context": {
        "model": "tiny",
        "model_kwargs": CONTEXT_MODEL,
        "iterations": 1200,
        "batch_size": 8,
        "crop_size": None,
        "lr": 0.1,
        "checkpoint_every": 300,
        "num_workers": 0,
        "num_scenes": 1000,
        "val_scenes": 100,
        "image_size": 256,
    },
}

_MODELS = {
    "tiny": em_nn.emanet_tiny,
    "resnet50": em_nn.emanet_resnet50,
    "resnet101": em_nn.emanet_resnet101,
    "resnet152": em_nn.emanet_resnet152,
}


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
    num_scenes, val_scenes, image_size : int
        Digit and context scenes: sizes of the two splits and the side of a scene.
    model : {"tiny", "resnet50", "resnet101", "resnet152"}
    head : {"emau", "nonlocal", "pooling", "none"}
        The attention block of EMANet ("none" is the ablation without it).
    model_kwargs : dict
        Extra keyword arguments of the model constructor.
    pretrained_backbone : str, optional
        Backbone ``state_dict`` file (ImageNet weights) to start from.
    iterations, batch_size, crop_size, lr, momentum, weight_decay, poly_power
        The optimisation recipe; ``batch_size`` is the total over all processes.
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
        Data-loader processes, CPU threads (``torch.set_num_threads``), ``"auto"``/``"cpu"``/
        ``"cuda"``, and whether to draw the tqdm bar.
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
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
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

    def __post_init__(self):
        if self.dataset not in RECIPES:
            raise ValueError(f"dataset must be one of {sorted(RECIPES)}, got {self.dataset!r}")
        for name, value in RECIPES[self.dataset].items():
            if getattr(self, name) is None:
                # a copy: editing this config's model_kwargs must not edit the recipe
                setattr(self, name, copy.deepcopy(value))
        if self.model not in _MODELS:
            raise ValueError(f"model must be one of {sorted(_MODELS)}, got {self.model!r}")
        if self.dataset == "voc" and not self.data_root:
            raise ValueError("dataset 'voc' needs data_root, the PASCAL VOC 2012 folder")
        for name in ("iterations", "batch_size", "checkpoint_every", "log_every", "stop_at"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.eval_scales = tuple(float(s) for s in self.eval_scales)

    def to_dict(self) -> dict:
        """Plain-Python form (lists for tuples), for checkpoints and logs."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def build_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The EMANet that ``config`` describes (``config.model``, ``config.head``, ``model_kwargs``)."""
    kwargs = dict(config.model_kwargs or {})
    if config.pretrained_backbone:
        kwargs["pretrained_backbone"] = config.pretrained_backbone
    return _MODELS[config.model](num_classes, head=config.head, **kwargs)


_SCENES = {"digits": (DigitScenes, SceneConfig), "context": (ContextScenes, ContextConfig)}


def _scenes(config: TrainConfig, split: str, count: int):
    scenes, scene_config = _SCENES[config.dataset]
    return scenes(split, count, config.seed, scene_config(image_size=config.image_size))


def build_val_set(config: TrainConfig):
    """The validation set of ``config`` (``val_scenes`` embedded scenes, or VOC ``val_split``)."""
    if config.dataset in _SCENES:
        return _scenes(config, "val", config.val_scenes)
    return VOCSegmentation(config.data_root, config.val_split)


def build_datasets(config: TrainConfig):
    """Training and validation sets for ``config`` (training one augmented for VOC)."""
    if config.dataset in _SCENES:
        return _scenes(config, "train", config.num_scenes), build_val_set(config)
    split = config.train_split
    if split is None:
        lists = find_voc_root(config.data_root) / "ImageSets" / "Segmentation"
        split = "trainaug" if (lists / "trainaug.txt").is_file() else "train"
    augmentation = TrainAugmentation(crop_size=config.crop_size)
    train_set = VOCSegmentation(config.data_root, split, transform=augmentation)
    return train_set, build_val_set(config)

