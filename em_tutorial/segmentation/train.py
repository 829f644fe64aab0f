"""Training EMANet: the official recipe, checkpoints that survive interruption, and torchrun.

The loop, one iteration at a time (training is counted in iterations, not epochs):

    lr_i  = lr_0 * (1 - i / iterations) ** 0.9          poly schedule (biases: 2 * lr_i)
    loss  = cross_entropy(model(images), labels, ignore_index=255)
    SGD step with momentum 0.9, weight decay 1e-4 on convolution weights only

Official PASCAL VOC recipe (:data:`RECIPES` ``["voc"]``): ResNet-101 EMANet, 30k iterations,
batch 16, crop 513, lr 9e-3. The embedded digit scenes get a small recipe that trains the tiny
EMANet on two CPU cores in a few minutes (``RECIPES["digits"]``).

Reproducibility and safety
--------------------------
* Checkpoints are written to a temporary file and renamed over the old one (``os.replace``),
  so a crash mid-write never destroys the last good checkpoint. They hold only tensors and
  plain Python containers, so ``torch.load(path, weights_only=True)`` reads them.
* ``resume=True`` restores weights, optimiser momentum, the torch/NumPy/Python random states
  and the position in the data, so an interrupted and resumed run ends with the same weights as
  an uninterrupted one (CPU, same seed).
* A non-finite loss stops the run with :class:`TrainingDiverged` before the weights are touched
  and before anything is saved; the last good checkpoint stays as it was.

Several processes
-----------------
Launched by ``torchrun --nproc_per_node N`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), :func:`train` joins the process group (gloo on CPU, NCCL on GPU), wraps the
model in ``DistributedDataParallel`` (SyncBatchNorm on GPU), gives each rank its shard of every
epoch, and checks at the end that every rank holds the same weights and EMAU bases.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import nn as em_nn
from .data import DigitScenes, ResumableSampler, SceneConfig, TrainAugmentation, VOCSegmentation
from .data.voc import find_voc_root
from .evaluate import evaluate

__all__ = [
    "RECIPES",
    "TOUR_MODEL",
    "TrainConfig",
    "TrainingDiverged",
    "CorruptCheckpoint",
    "build_datasets",
    "build_model",
    "build_val_set",
    "load_checkpoint",
    "poly_factor",
    "resolve_device",
    "save_checkpoint",
    "train",
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
    },
}

_MODELS = {
    "tiny": em_nn.emanet_tiny,
    "resnet50": em_nn.emanet_resnet50,
    "resnet101": em_nn.emanet_resnet101,
    "resnet152": em_nn.emanet_resnet152,
}
# Settings that may change between an interrupted run and its resumption (they do not change
# the weights): where things are, how often to log and save, how to evaluate at the end.
_RESUMABLE_CHANGES = {
    "resume", "stop_at", "progress", "num_workers", "checkpoint_every", "log_every", "threads",
    "device", "out_dir", "data_root", "eval_scales", "eval_flip",
}  # fmt: skip


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` fields take the data set's recipe value.

    Attributes
    ----------
    dataset : {"digits", "voc"}
    data_root : str, optional
        PASCAL VOC folder (``dataset="voc"``).
    train_split, val_split : str
        VOC: ``train_split=None`` picks ``"trainaug"`` when its list exists, else ``"train"``.
    num_scenes, val_scenes, image_size : int
        Digit scenes: sizes of the two splits and the side of a scene.
    model : {"tiny", "resnet50", "resnet101", "resnet152"}
    head : {"emau", "nonlocal", "none"}
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
        Inference for the final evaluation (see :func:`em_tutorial.evaluate.evaluate`).
    num_workers, threads, device, progress
        Data-loader processes, CPU threads (``torch.set_num_threads``), ``"auto"``/``"cpu"``/
        ``"cuda"``, and whether to draw the tqdm bar.
    """

    dataset: str = "digits"
    data_root: str | None = None
    train_split: str | None = None
    val_split: str = "val"
    num_scenes: int = 3000
    val_scenes: int = 300
    image_size: int = 96
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


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, or not a checkpoint)."""


def poly_factor(iteration: int, iterations: int, power: float = 0.9) -> float:
    """The poly schedule's multiplier of the base learning rate: ``(1 - i / iterations) ** power``."""
    return (1.0 - iteration / iterations) ** power


# --------------------------------------------------------------------------- building blocks


def build_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The EMANet that ``config`` describes (``config.model``, ``config.head``, ``model_kwargs``)."""
    kwargs = dict(config.model_kwargs or {})
    if config.pretrained_backbone:
        kwargs["pretrained_backbone"] = config.pretrained_backbone
    return _MODELS[config.model](num_classes, head=config.head, **kwargs)


def build_val_set(config: TrainConfig):
    """The validation set of ``config`` (``val_scenes`` digit scenes, or VOC ``val_split``)."""
    if config.dataset == "digits":
        return DigitScenes("val", config.val_scenes, config.seed, SceneConfig(config.image_size))
    return VOCSegmentation(config.data_root, config.val_split)


def build_datasets(config: TrainConfig):
    """Training and validation sets for ``config`` (training one augmented for VOC)."""
    if config.dataset == "digits":
        scenes = SceneConfig(config.image_size)
        return DigitScenes("train", config.num_scenes, config.seed, scenes), build_val_set(config)
    split = config.train_split
    if split is None:
        lists = find_voc_root(config.data_root) / "ImageSets" / "Segmentation"
        split = "trainaug" if (lists / "trainaug.txt").is_file() else "train"
    augmentation = TrainAugmentation(crop_size=config.crop_size)
    train_set = VOCSegmentation(config.data_root, split, transform=augmentation)
    return train_set, build_val_set(config)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# ------------------------------------------------------------------------------ checkpoints


def _rng_state() -> dict:
    """torch, CUDA, NumPy and Python random states as tensors and plain numbers."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    pyst = state["python"]
    random.setstate((pyst["version"], tuple(int(v) for v in pyst["state"]), pyst["gauss_next"]))


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` with ``torch.save`` atomically: temporary file, fsync, then rename.

    A reader (or a crash) sees either the old complete file or the new complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``; clear errors when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch reports truncation and bad pickles with many types
        raise CorruptCheckpoint(f"cannot read checkpoint {path} (corrupt or not a checkpoint): {error}") from error


# ------------------------------------------------------------------------------ distributed


@dataclass
class _Process:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (the GPU when torch sees one, else the CPU), ``"cpu"`` or ``"cuda[:i]"``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:index]', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but torch sees no CUDA GPU")
    return device


def _setup_process(device: str) -> _Process:
    """Join the torchrun process group if there is one, and pick this process's device."""
    chosen = resolve_device(device)
    use_cuda = chosen.type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return _Process(device=chosen)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Process(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        device=torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"),
        owns_group=owns_group,
    )


def _average_norm_statistics(model, world_size: int) -> None:
    """Average BatchNorm running statistics over ranks (each rank saw only its own batches).

    DistributedDataParallel copies rank 0's buffers to every rank before each forward pass, so
    after the last pass each rank holds statistics updated by its own shard only.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for statistic in (module.running_mean, module.running_var):
                dist.all_reduce(statistic)
                statistic /= world_size


def _replica_max_difference(model, process: _Process) -> float:
    """Largest difference between ranks of a fingerprint of every weight and buffer (0: agree)."""
    if process.world_size == 1:
        return 0.0
    tensors = [t for t in _unwrap(model).state_dict().values() if t.is_floating_point()]
    # Per tensor: sum and sum of squares, in float64 -- equal tensors give equal numbers.
    fingerprint = torch.stack(
        [s for t in tensors for s in (t.double().sum(), t.double().square().sum())]
    )  # (2 * n_tensors,)
    gathered = [torch.empty_like(fingerprint) for _ in range(process.world_size)]
    dist.all_gather(gathered, fingerprint)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


# ---------------------------------------------------------------------------- the main loop


def _batches(loader, sampler, start_iteration: int, per_rank_batch: int):
    """Endless batches, starting where iteration ``start_iteration`` of a fresh run would be."""
    batches_per_epoch = sampler.num_samples // per_rank_batch
    if batches_per_epoch == 0:
        raise ValueError(
            f"the training set is too small for a batch of {per_rank_batch} per process "
            f"({sampler.num_samples} samples per process)"
        )
    epoch, batch = divmod(start_iteration, batches_per_epoch)
    while True:
        sampler.set_position(epoch, batch * per_rank_batch)
        yield from loader
        epoch, batch = epoch + 1, 0


class _JsonLog:
    """Appends one JSON object per line; only the main process writes."""

    def __init__(self, path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, **record):
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def forget_after(self, iteration: int) -> None:
        """Drop the records past ``iteration``: a resumed run logs those iterations again."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = []
        for line in self.path.read_text().splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # half-written when the run was killed: stale too
                continue
            if record.get("iteration", 0) <= iteration:
                kept.append(line if line.endswith("\n") else line + "\n")
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text("".join(kept))
        os.replace(temporary, self.path)  # atomic: the old log stays whole until this point


def _check_resumable(saved: dict, config: TrainConfig) -> None:
    now = config.to_dict()
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"cannot resume: the checkpoint was trained with other settings ({details})")


def train(config: TrainConfig) -> dict:
    """Train EMANet as ``config`` says, evaluate it on the validation split, return a summary.

    Returns
    -------
    dict
        ``iterations``, ``final_loss``, ``train_seconds``, ``images_per_s``, ``metrics``
        (``miou``, ``pixel_accuracy``, per-class ``iou``; None after ``stop_at``),
        ``checkpoint``, ``log``, ``world_size`` and ``replica_max_difference`` (0.0 when all
        ranks agree) -- the main process also writes these to ``out_dir/summary.json`` --
        and ``model``, the trained network (unwrapped from DistributedDataParallel).

    Raises
    ------
    TrainingDiverged
        If the loss becomes NaN or infinite.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    process = _setup_process(config.device)
    try:
        return _train(config, process)
    finally:
        if process.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, process: _Process) -> dict:
    from tqdm.auto import tqdm

    out_dir = Path(config.out_dir)
    checkpoint_path = out_dir / "checkpoint.pt"
    if process.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if config.batch_size % process.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} must divide evenly over {process.world_size} processes"
        )
    per_rank_batch = config.batch_size // process.world_size
    if not config.resume and checkpoint_path.exists():
        raise FileExistsError(
            f"{checkpoint_path} already exists: continue that run with resume=True (--resume), "
            "or choose another output folder; it is not overwritten"
        )

    # Same seed on every rank: identical initial weights and EMAU bases everywhere.
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)

    train_set, val_set = build_datasets(config)
    model = build_model(config, train_set.num_classes).to(process.device)
    groups = em_nn.param_groups(model, config.lr, config.weight_decay)
    for group in groups:
        group["initial_lr"] = group["lr"]  # the poly schedule scales each group's own rate
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)

    start = 0
    if config.resume:
        # On the CPU: random states must be CPU tensors; load_state_dict moves the rest.
        state = load_checkpoint(checkpoint_path)
        _check_resumable(state["config"], config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        start = state["iteration"]

    if process.world_size > 1:
        if process.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # find_unused_parameters: the EMAU's input 1x1 convolution gets no gradient, because
        # the EM iterations (and so everything computed from that convolution) run under
        # no_grad, as in the official code; DDP must not wait for its gradient.
        model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[process.device.index] if process.device.type == "cuda" else None,
            find_unused_parameters=config.head == "emau",
        )

    sampler = ResumableSampler(train_set, process.world_size, process.rank, seed=config.seed)
    loader = DataLoader(
        train_set,
        batch_size=per_rank_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=config.num_workers,
        pin_memory=process.device.type == "cuda",
        # Its own generator: creating an iterator must not draw from the global torch RNG, or a
        # resumed run's dropout masks would differ from an uninterrupted run's.
        generator=torch.Generator().manual_seed(config.seed),
    )
    batches = _batches(loader, sampler, start, per_rank_batch)

    log = _JsonLog(out_dir / "log.jsonl", process.is_main)
    log.forget_after(start)
    log.write(event="start", iteration=start, world_size=process.world_size, config=config.to_dict())
    bar = tqdm(
        total=config.iterations,
        initial=start,
        desc=f"train {config.model}/{config.head}",
        unit="it",
        disable=not (config.progress and process.is_main),
        dynamic_ncols=True,
    )

    def checkpoint(iteration):
        if process.is_main:
            state = {
                "iteration": iteration,
                "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(),
                "config": config.to_dict(),
            }
            save_checkpoint(state, checkpoint_path)

    model.train()
    loss_value = math.nan
    started = time.perf_counter()
    window_start, window_images = started, 0
    end = config.iterations if config.stop_at is None else min(config.stop_at, config.iterations)
    for iteration in range(start, end):
        images, labels = next(batches)
        images = images.to(process.device, non_blocking=True)
        labels = labels.to(process.device, non_blocking=True)
        # lr_i = lr_0 * (1 - i / iterations) ** power, per group (biases keep their 2x)
        factor = poly_factor(iteration, config.iterations, config.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

        logits = model(images)  # (B, classes, H, W)
        loss = F.cross_entropy(logits, labels, ignore_index=train_set.ignore_index)
        mean_loss = loss.detach().clone()
        if process.world_size > 1:
            dist.all_reduce(mean_loss)  # every rank sees the same value and stops together
            mean_loss /= process.world_size
        loss_value = float(mean_loss)
        if not math.isfinite(loss_value):
            bar.close()
            kept = f"the last good checkpoint is {checkpoint_path}" if checkpoint_path.exists() \
                else "no checkpoint had been written yet"
            raise TrainingDiverged(
                f"loss became {loss_value} at iteration {iteration}; training stopped before the "
                f"weights were updated and {kept}. Try a lower learning rate (now {config.lr})."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        done = iteration + 1
        window_images += config.batch_size
        if done % config.log_every == 0 or done == config.iterations:
            now = time.perf_counter()
            speed = window_images / max(now - window_start, 1e-9)
            window_start, window_images = now, 0
            lr_now = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr_now:.2e}", img_s=f"{speed:.0f}")
            log.write(event="train", iteration=done, loss=loss_value, lr=lr_now,
                      images_per_s=speed, elapsed_s=now - started)  # fmt: skip
        bar.update(1)
        if done % config.checkpoint_every == 0 and done < end:
            checkpoint(done)
    bar.close()
    interrupted = end < config.iterations
    if end > start and interrupted:
        # Before averaging: an uninterrupted run carries rank 0's own statistics on.
        checkpoint(end)
    if process.world_size > 1:
        _average_norm_statistics(model, process.world_size)
    if end > start and not interrupted:
        checkpoint(end)
    train_seconds = time.perf_counter() - started
    summary = {
        "iterations": end,
        "resumed_from": start,
        "final_loss": loss_value,
        "train_seconds": train_seconds,
        "images_per_s": (end - start) * config.batch_size / max(train_seconds, 1e-9),
        "metrics": None,
        "checkpoint": str(checkpoint_path),
        "log": str(log.path),
        "world_size": process.world_size,
        "replica_max_difference": _replica_max_difference(model, process),
    }
    if interrupted:
        summary["model"] = _unwrap(model)
        return summary

    matrix = evaluate(
        _unwrap(model),
        val_set,
        scales=config.eval_scales,
        flip=config.eval_flip,
        batch_size=per_rank_batch if config.dataset == "digits" else 1,
        device=process.device,
        num_workers=config.num_workers,
    )
    summary["metrics"] = matrix.summary(train_set.class_names)
    log.write(event="eval", iteration=end, split=config.val_split, **summary["metrics"])
    if process.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["model"] = _unwrap(model)
    return summary
