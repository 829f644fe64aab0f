"""Training EMANet: the loop, one iteration at a time (counted in iterations, not epochs).

    lr_i  = lr_0 * (1 - i / iterations) ** 0.9          poly schedule (biases: 2 * lr_i)
            times (i + 1) / warmup for the first ``warmup_iterations`` (linear warm-up; none in
            the official recipe)
    loss  = cross_entropy(model(images), labels), ignoring label 255, averaged over all pixels
            of the crops (official) or over the labelled ones (``loss_normalization``)
    SGD step with momentum 0.9, weight decay 1e-4 on convolution weights only

The run's other ideas live beside this module: the settings and recipes in
:mod:`~em_tutorial.segmentation.config`, checkpoints in :mod:`~em_tutorial.segmentation.checkpoint`,
``torchrun`` in :mod:`~em_tutorial.segmentation.distributed`, ``log.jsonl`` in
:mod:`~em_tutorial.segmentation.runlog`.

Reproducibility and safety
--------------------------
* ``resume=True`` restores weights, optimiser momentum, the torch random state and the position
  in the data, so an interrupted and resumed run ends with the same weights as an
  uninterrupted one (CPU, same seed).
* A non-finite loss stops the run with :class:`TrainingDiverged` before the weights are touched
  and before anything is saved; the last good checkpoint stays as it was.
* Under ``torchrun`` each rank gets its shard of every epoch, and the end of the run checks
  that every rank holds the same weights and EMAU bases.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .. import nn as em_nn
from ..nn._collectives import all_reduce
from .checkpoint import (
    refuse_checkpoint_before_freeze,
    remove_stale_temporaries,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from .config import TrainConfig, build_datasets, build_model
from .data.sampler import ResumableSampler, resumable_batches
from .distributed import (
    Process,
    average_norm_statistics,
    max_over_ranks,
    replica_max_difference,
    setup_process,
    unwrap,
    wrap_model,
)
from .evaluation import evaluate
from .loss import segmentation_loss
from .runlog import JsonLog, read_json, write_json

__all__ = ["TrainingDiverged", "poly_factor", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def poly_factor(iteration: int, iterations: int, power: float = 0.9, warmup: int = 0) -> float:
    """The multiplier of the base learning rate at ``iteration``.

    ``(1 - i / iterations) ** power`` (poly), times ``(i + 1) / warmup`` while ``i < warmup``.
    """
    factor = (1.0 - iteration / iterations) ** power
    if iteration < warmup:
        factor *= (iteration + 1) / warmup
    return factor


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
    process = setup_process(config.device)
    try:
        return _train(config, process)
    finally:
        if process.owns_group:
            dist.destroy_process_group()


# What became of a checkpoint, as the ranks agree on it (the worst outcome wins).
_SAVED, _NOT_FINITE, _NOT_WRITTEN = 0, 1, 2


@dataclass
class _Run:
    """The parts of one run that the steps below share."""

    config: TrainConfig
    process: Process
    model: torch.nn.Module  # wrapped in DistributedDataParallel when there are several ranks
    optimizer: torch.optim.Optimizer
    checkpoint_path: Path

    def save(self, iteration: int) -> None:
        """The main rank writes the checkpoint; if it cannot, every rank stops with it (the
        others would otherwise wait for it at the next collective, for ever)."""
        failure = None
        if self.process.is_main:
            state = training_state(iteration, unwrap(self.model), self.optimizer, self.config)
            try:
                save_checkpoint(state, self.checkpoint_path)
            except (ValueError, OSError) as error:  # ValueError: NaN or infinity in the state
                failure = error
        code = _SAVED if failure is None else _NOT_FINITE if isinstance(failure, ValueError) \
            else _NOT_WRITTEN
        outcome = max_over_ranks(code, self.process)
        if outcome == _SAVED:
            return
        if isinstance(failure, OSError):
            raise failure
        if outcome == _NOT_FINITE:  # the last good file is kept
            what = failure or "rank 0 refused to save the checkpoint: non-finite values"
            raise self.diverged(f"{what} after iteration {iteration}") from None
        raise RuntimeError(f"stopped with rank 0, which could not write the checkpoint of "
                           f"iteration {iteration} (rank 0's error says why)")  # fmt: skip

    def diverged(self, what: str) -> TrainingDiverged:
        """The error that stops a diverging run, saying which checkpoint is left to use."""
        kept = f"the last good checkpoint is {self.checkpoint_path}" \
            if self.checkpoint_path.exists() else "no checkpoint had been written yet"
        return TrainingDiverged(f"{what}; {kept}. Try a lower learning rate (now {self.config.lr}).")


def _train(config: TrainConfig, process: Process) -> dict:
    """Checks, seed, model and optimiser, resumption, data, the iterations, the last checkpoint,
    then (for a finished run) the evaluation and ``summary.json``."""
    out_dir = Path(config.out_dir)
    checkpoint_path = out_dir / "checkpoint.pt"
    per_rank_batch = _check_run_setup(config, process, checkpoint_path)

    # Same seed on every rank: identical initial weights and EMAU bases everywhere.
    torch.manual_seed(config.seed)
    train_set, val_set = build_datasets(config)
    model = build_model(config, train_set.num_classes).to(process.device)
    optimizer = _optimizer(model, config)
    start, recorded = _resume(config, process, checkpoint_path, model, optimizer)
    if recorded is not None:
        return {**recorded, "model": model}
    model = wrap_model(model, process)
    run = _Run(config, process, model, optimizer, checkpoint_path)
    batches = resumable_batches(*_loader(train_set, run, per_rank_batch), start, per_rank_batch)

    log = JsonLog(out_dir / "log.jsonl", process.is_main)
    log.forget_after(start)
    log.write(event="start", iteration=start, world_size=process.world_size, config=config.to_dict())
    end = config.iterations if config.stop_at is None else min(config.stop_at, config.iterations)
    loss_value, started = _optimise(run, batches, start, end, log, train_set.ignore_index)
    _save_last_checkpoint(run, start, end)
    train_seconds = time.perf_counter() - started
    summary = {
        "iterations": end,
        "resumed_from": start,
        # a run resumed at its end (killed while evaluating) takes the loss from its log
        "final_loss": loss_value if end > start else log.value_at("train", end, "loss"),
        "train_seconds": train_seconds,
        "images_per_s": (end - start) * config.batch_size / max(train_seconds, 1e-9),
        "metrics": None,
        "checkpoint": str(checkpoint_path),
        "log": str(log.path),
        "world_size": process.world_size,
        "replica_max_difference": replica_max_difference(model, process),
    }
    if end == config.iterations:  # not stopped early by stop_at: evaluate
        matrix = evaluate(unwrap(model), val_set, scales=config.eval_scales, flip=config.eval_flip,
                          batch_size=per_rank_batch if config.dataset != "voc" else 1,
                          device=process.device, num_workers=config.num_workers)  # fmt: skip
        summary["metrics"] = matrix.summary(train_set.class_names)
        log.write(event="eval", iteration=end, split=config.val_split, **summary["metrics"])
        if process.is_main:
            write_json(out_dir / "summary.json", summary)
    summary["model"] = unwrap(model)
    return summary


def _resume(config: TrainConfig, process: Process, checkpoint_path: Path, model, optimizer):
    """Where the run starts (0 unless resuming) and, for a finished run that was evaluated,
    its recorded summary: evaluating it again would only rewrite its record."""
    if not config.resume:
        return 0, None
    refuse_checkpoint_before_freeze(checkpoint_path, optimizer)
    start = restore_training_state(checkpoint_path, config, model, optimizer)
    if process.is_main:  # said even without a progress bar
        print(f"resumed from iteration {start} of {config.iterations} ({checkpoint_path})")
    summary_path = checkpoint_path.with_name("summary.json")
    recorded = read_json(summary_path) if start == config.iterations else None
    if recorded is not None and process.is_main:
        print(f"the run had finished; its results in {summary_path} are kept")
    return start, recorded


def _check_run_setup(config: TrainConfig, process: Process, checkpoint_path: Path) -> int:
    """Create the output folder, refuse to overwrite a run; return the batch of one rank."""
    if process.is_main:
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(checkpoint_path)  # left by a process killed while saving
    if config.batch_size % process.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} must divide evenly over {process.world_size} processes"
        )
    if not config.resume and checkpoint_path.exists():
        raise FileExistsError(
            f"{checkpoint_path} already exists: continue that run with resume=True (--resume), "
            "or choose another output folder; it is not overwritten"
        )
    return config.batch_size // process.world_size


def _optimizer(model, config: TrainConfig) -> torch.optim.SGD:
    """SGD over the official parameter groups, each remembering its base rate for the schedule."""
    groups = em_nn.param_groups(model, config.lr, config.weight_decay)
    for group in groups:
        group["initial_lr"] = group["lr"]  # the poly schedule scales each group's own rate
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def _loader(train_set, run: _Run, per_rank_batch: int):
    """This rank's resumable sampler and the loader that draws through it."""
    config, process = run.config, run.process
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
    return loader, sampler


def _optimise(run: _Run, batches, start: int, end: int, log: JsonLog, ignore_index: int):
    """Iterations ``start`` to ``end``, with log lines and periodic checkpoints.

    Returns the last loss and the ``time.perf_counter()`` at which the iterations began.
    """
    from tqdm.auto import tqdm

    config = run.config
    bar = tqdm(
        total=config.iterations,
        initial=start,
        desc=f"train {config.model}/{config.head}",
        unit="it",
        disable=not (config.progress and run.process.is_main),
        dynamic_ncols=True,
    )
    run.model.train()
    loss_value = math.nan
    started = time.perf_counter()
    window_start, window_images = started, 0
    try:
        for iteration in range(start, end):
            loss_value = _step(run, *next(batches), iteration, ignore_index)
            done = iteration + 1
            window_images += config.batch_size
            if done % config.log_every == 0 or done == config.iterations:
                now = time.perf_counter()
                speed = window_images / max(now - window_start, 1e-9)
                window_start, window_images = now, 0
                lr_now = run.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr_now:.2e}", img_s=f"{speed:.0f}")
                log.write(event="train", iteration=done, loss=loss_value, lr=lr_now,
                          images_per_s=speed, elapsed_s=now - started)  # fmt: skip
            bar.update(1)
            if done % config.checkpoint_every == 0 and done < end:
                run.save(done)
    finally:
        bar.close()
    return loss_value, started


def _step(run: _Run, images, labels, iteration: int, ignore_index: int) -> float:
    """One SGD step at ``iteration``; returns the loss averaged over ranks."""
    config, process, optimizer = run.config, run.process, run.optimizer
    images = images.to(process.device, non_blocking=True)
    labels = labels.to(process.device, non_blocking=True)
    # lr_i = lr_0 * (1 - i / iterations) ** power, per group (biases keep their 2x), warmed up
    factor = poly_factor(iteration, config.iterations, config.poly_power,
                         config.warmup_iterations)  # fmt: skip
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor

    logits = run.model(images)  # (B, classes, H, W)
    loss = segmentation_loss(logits, labels, ignore_index, config.loss_normalization)
    mean_loss = loss.detach().clone()
    if process.world_size > 1:
        all_reduce(mean_loss)  # every rank sees the same value and stops together
        mean_loss /= process.world_size
    loss_value = float(mean_loss)
    if not math.isfinite(loss_value):
        raise run.diverged(f"loss became {loss_value} at iteration {iteration}; training stopped "
                           "before the weights were updated")  # fmt: skip
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss_value


def _save_last_checkpoint(run: _Run, start: int, end: int) -> None:
    """Checkpoint the last iteration, averaging BatchNorm statistics over ranks at the right time.

    A run stopped early (``stop_at``) is saved *before* the averaging, because an uninterrupted
    run carries rank 0's own statistics on; a finished run is saved after it.
    """
    interrupted = end < run.config.iterations
    if end > start and interrupted:
        run.save(end)
    if run.process.world_size > 1:
        average_norm_statistics(run.model, run.process.world_size)
    if end > start and not interrupted:
        run.save(end)
