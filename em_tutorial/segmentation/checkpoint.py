"""Checkpoints that survive interruption: atomic save, safe load, and the checks before resuming.

* A checkpoint is written to a temporary file and renamed over the old one (``os.replace``), so
  a crash mid-write never destroys the last good checkpoint. It holds only tensors and plain
  Python containers, so ``torch.load(path, weights_only=True)`` reads it.
* It holds ``iteration``, the ``model`` and ``optimizer`` state (momentum included), the
  torch (and CUDA) random states and the ``config``. Nothing in training draws from NumPy's or
  Python's global random streams -- every augmentation has its own seeded generator (see
  :mod:`em_tutorial.segmentation.data.sampler`) -- so their states are not saved.
* Resuming refuses a checkpoint trained with other settings, except those that cannot change
  the weights (:data:`RESUMABLE_CHANGES`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import TrainConfig

__all__ = [
    "RESUMABLE_CHANGES",
    "CorruptCheckpoint",
    "check_resumable",
    "load_checkpoint",
    "restore_training_state",
    "save_checkpoint",
    "training_state",
]

#: Settings that may change between an interrupted run and its resumption (they do not change
#: the weights): where things are, how often to log and save, how to evaluate at the end.
RESUMABLE_CHANGES = {
    "resume", "stop_at", "progress", "num_workers", "checkpoint_every", "log_every", "threads",
    "device", "out_dir", "data_root", "eval_scales", "eval_flip",
}  # fmt: skip


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, or not a checkpoint)."""


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


def check_resumable(saved: dict, config: TrainConfig) -> None:
    """Refuse to resume when ``config`` differs from the ``saved`` one in a weight-changing way."""
    now = config.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"cannot resume: the checkpoint was trained with other settings ({details})")


def training_state(iteration: int, model, optimizer, config: TrainConfig) -> dict:
    """Everything a resumed run needs to continue exactly where this one stands."""
    return {
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "config": config.to_dict(),
    }


def restore_training_state(path, config: TrainConfig, model, optimizer) -> int:
    """Load the checkpoint at ``path`` into ``model``, ``optimizer`` and the random state.

    Returns
    -------
    int
        The iteration the checkpoint was written after, where the resumed run starts.
    """
    # On the CPU: random states must be CPU tensors; load_state_dict moves the rest.
    state = load_checkpoint(path)
    check_resumable(state["config"], config)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["iteration"]
