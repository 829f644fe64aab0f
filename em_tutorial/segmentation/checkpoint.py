"""Checkpoints that survive interruption and are never trusted blindly.

* A checkpoint is written to a temporary file and renamed over the old one (``os.replace``), so
  a crash mid-write never destroys the last good checkpoint; a failed write removes its
  temporary file, and :func:`remove_stale_temporaries` clears those a killed process left.
* It holds ``iteration``, the ``model`` and ``optimizer`` state (momentum included), the
  torch (and CUDA) random states and the ``config``, plus ``format`` and ``sha256``: the
  SHA-256 of every other entry (each key and value with its type; dtypes, shapes and bytes of
  each tensor). Only tensors and plain Python containers, so
  ``torch.load(path, weights_only=True)`` reads it.
* Format 2 hashed keys and leaves without their types (the key ``0`` as the key ``"0"``; an
  empty dict, an empty list and a missing entry alike). Its files are still verified with its
  own checksum; the next save writes format 3. A format this version does not know is refused.
* :func:`load_checkpoint` refuses, in one line naming the file, anything that is not an
  em-tutorial checkpoint, a file whose content no longer matches its checksum (flipped bytes),
  and weights, buffers or optimiser state holding NaN or infinity.
* A checkpoint written before checksums existed (no ``sha256``) is loaded with an
  :class:`UnverifiedCheckpointWarning`: refusing it would strand every run interrupted before
  then, and the finiteness and settings checks still apply. The next save adds the checksum.
* Nothing in training draws from NumPy's or Python's global random streams -- every
  augmentation has its own seeded generator (see :mod:`em_tutorial.segmentation.data.sampler`)
  -- so their states are not saved.
* Resuming refuses a checkpoint trained with other settings, except those that cannot change
  the weights (:data:`RESUMABLE_CHANGES`).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import torch

from ..nn._weights import emanet_difference
from .config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUMABLE_CHANGES",
    "CorruptCheckpoint",
    "UnverifiedCheckpointWarning",
    "atomic_torch_save",
    "check_resumable",
    "content_checksum",
    "load_checkpoint",
    "load_model_state",
    "refuse_checkpoint_before_freeze",
    "remove_stale_temporaries",
    "restore_training_state",
    "save_checkpoint",
    "training_state",
]

RESUMABLE_CHANGES = {
    "resume", "stop_at", "progress", "num_workers", "checkpoint_every", "log_every", "threads",
    "device", "out_dir", "data_root", "eval_scales", "eval_flip",
}  # fmt: skip
"""Settings that may change between an interrupted run and its resumption (they do not change
the weights): where things are, how often to log and save, how to evaluate at the end."""

CHECKPOINT_FORMAT = "em-tutorial checkpoint 3"
"""The ``format`` entry of every checkpoint this module writes."""
_FORMAT_2 = "em-tutorial checkpoint 2"
_REQUIRED_KEYS = ("iteration", "model", "optimizer", "rng", "config")
_CHECKED_FOR_FINITENESS = ("model", "optimizer")


class CorruptCheckpoint(RuntimeError):
    """A checkpoint cannot be trusted: unreadable, not a checkpoint, altered, or not finite."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without a checksum (written before checksums existed) was loaded."""


def _leaves(value, name=""):
    """``(dotted name, leaf)`` for every tensor or plain value inside nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{name}[{index}]")
    else:
        yield name, value


def content_checksum(state: dict) -> str:
    """SHA-256 (hex) of every entry of ``state`` but ``format`` and ``sha256``.

    The content is fed to the hash as a tagged, length-prefixed encoding (:func:`_feed`), so
    two states have the same checksum exactly when their content -- types included -- is equal.
    """
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k not in ("format", "sha256")})
    return digest.hexdigest()


def _feed(digest, value) -> None:
    """Hash ``value``: a header line naming its type (and dtype and shape, or length), then
    its bytes or its members. Every header fixes how much follows, so no two contents give
    the same byte stream."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)  # (numel,)
        digest.update(f"tensor {value.dtype} {tuple(value.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the bytes, without a copy
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}\n".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)}\n".encode())
        for item in value:
            _feed(digest, item)
    else:
        text = repr(value).encode()
        digest.update(f"{type(value).__name__} {len(text)}\n".encode() + text)


def _format_2_checksum(state: dict) -> str:
    """The checksum of format-2 files: dotted names and leaves, without container types."""
    digest = hashlib.sha256()
    content = {k: v for k, v in state.items() if k not in ("format", "sha256")}
    for name, leaf in _leaves(content):
        if isinstance(leaf, torch.Tensor):
            flat = leaf.detach().cpu().contiguous().reshape(-1)  # (numel,)
            digest.update(f"{name}|{leaf.dtype}|{tuple(leaf.shape)}|".encode())
            digest.update(flat.view(torch.uint8).numpy())
        else:
            digest.update(f"{name}|{type(leaf).__name__}|{leaf!r}|".encode())
    return digest.hexdigest()


_CHECKSUMS = {CHECKPOINT_FORMAT: content_checksum, _FORMAT_2: _format_2_checksum}


def _non_finite_entries(state: dict) -> list[str]:
    """Names of the weights, buffers and optimiser tensors holding NaN or infinity."""
    bad = []
    for part in _CHECKED_FOR_FINITENESS:
        for name, leaf in _leaves(state.get(part, {}), part):
            if isinstance(leaf, torch.Tensor):
                if leaf.is_floating_point() and not bool(torch.isfinite(leaf).all()):
                    bad.append(name)
            elif isinstance(leaf, float) and not math.isfinite(leaf):
                bad.append(name)
    return bad


def _describe(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` with its checksum: temporary file, fsync, then an atomic rename.

    A reader (or a crash) sees either the old complete file or the new complete file; a
    failed write removes its temporary file. A state holding NaN or infinity is refused
    (``ValueError``) before anything is written, so the last good checkpoint stays.
    """
    bad = _non_finite_entries(state)
    if bad:
        raise ValueError(f"refusing to save a checkpoint with non-finite values in {_describe(bad)}")
    stamped = {**state, "format": CHECKPOINT_FORMAT}
    stamped["sha256"] = content_checksum(stamped)
    atomic_torch_save(stamped, path)


def atomic_torch_save(obj, path) -> None:
    """``torch.save(obj, path)`` through a temporary file, fsync and an atomic rename.

    A reader (or a crash) sees either the old complete file or the new one; a failed write
    removes its temporary file (:func:`remove_stale_temporaries` finds those of a killed one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the temporary files of interrupted writes of the checkpoint ``path``.

    Call it only where no other process is writing that checkpoint (one run per folder).
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for temporary in stale:
        temporary.unlink(missing_ok=True)
    return stale


def _read(path: Path, map_location) -> dict:
    """``torch.load`` with the failure named in one line: not a torch file, or a damaged one."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":  # every torch.save file since PyTorch 1.6 is a zip archive
        raise CorruptCheckpoint(f"cannot read checkpoint {path}: not an em-tutorial checkpoint "
                                "(not a PyTorch file at all)")  # fmt: skip
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch reports truncation and bad pickles with many types
        reason = str(error).split(". ")[0].splitlines()[0]
        raise CorruptCheckpoint(
            f"cannot read checkpoint {path}: damaged, truncated or not an em-tutorial checkpoint "
            f"({reason})"
        ) from error


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CorruptCheckpoint
        Not an em-tutorial checkpoint; content that does not match its checksum; or NaN or
        infinity in the weights, buffers or optimiser state.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = _read(path, map_location)
    missing = [k for k in _REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        held = f"the keys {_describe([str(k) for k in state]) or '(none)'}" \
            if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CorruptCheckpoint(
            f"cannot read checkpoint {path}: not an em-tutorial checkpoint (a PyTorch file "
            f"holding {held}; missing {', '.join(missing)})"
        )
    if "sha256" not in state:
        warnings.warn(f"checkpoint {path} has no checksum (written by an older em-tutorial); "
                      "its content cannot be verified", UnverifiedCheckpointWarning, stacklevel=2)  # fmt: skip
    elif state.get("format") not in _CHECKSUMS:
        raise CorruptCheckpoint(
            f"cannot read checkpoint {path}: its format {state.get('format')!r} is not one this "
            f"em-tutorial reads ({', '.join(map(repr, _CHECKSUMS))}): written by a newer "
            "em-tutorial, or altered"
        )
    elif state["sha256"] != _CHECKSUMS[state["format"]](state):
        raise CorruptCheckpoint(
            f"cannot read checkpoint {path}: its content does not match its SHA-256 checksum "
            "(changed or damaged since it was written); use an intact copy or start a new run"
        )
    bad = _non_finite_entries(state)
    if bad:
        raise CorruptCheckpoint(f"cannot use checkpoint {path}: NaN or infinity in {_describe(bad)}")
    return state


def load_model_state(model, weights: dict, source) -> None:
    """``model.load_state_dict(weights)``, or one line saying how they differ.

    Raises
    ------
    ValueError
        When names or shapes differ: what the checkpoint and the network are, item by item
        where they differ ("this checkpoint has 21 classes / ResNet-101 (deep stem), the model
        has 11 classes / ResNet-50 (deep stem)", as for the authors' weights given to
        ``emanet_resnet101(weights=...)``), or, when those agree, the differing entries.
    """
    difference = emanet_difference(weights, model.state_dict())
    if difference is not None:
        raise ValueError(f"{source} does not fit this network: {difference}")
    model.load_state_dict(weights)


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
    load_model_state(model, state["model"], f"checkpoint {path}")
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["iteration"]


def refuse_checkpoint_before_freeze(checkpoint_path: Path, optimizer) -> None:
    """Refuse, with the reason, a checkpoint written before the EMAU's first conv was frozen.

    Its optimiser holds one more weight and one more bias (that convolution's) than this
    model trains: its weights still load, its optimiser state does not.
    """
    try:  # mmap: only the group lists are read, not the tensors
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
        saved_groups = saved["optimizer"]["param_groups"]
        saved_sizes = {g.get("name"): len(g["params"]) for g in saved_groups}
    except Exception:  # missing or unreadable: restore_training_state says which
        return
    sizes = {g["name"]: len(g["params"]) for g in optimizer.param_groups}
    extra = {name: saved_sizes.get(name, 0) - n for name, n in sizes.items()}
    if {name: n for name, n in extra.items() if n} == {"weights": 1, "biases": 1}:
        raise ValueError(
            f"cannot resume {checkpoint_path}: it was written before the EMAU's first "
            "convolution was frozen, and its optimiser state holds that convolution's weight "
            "and bias. Start a new run; its weights still load with "
            "model.load_state_dict(load_checkpoint(path)['model'])."
        )
