"""Several processes under ``torchrun``: set-up, model wrapping, and the checks that ranks agree.

Launched by ``torchrun --nproc_per_node N`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), a process joins the process group (gloo on CPU, NCCL on GPU) and wraps the
model in ``DistributedDataParallel`` (SyncBatchNorm on GPU). Without ``torchrun`` everything
here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..nn._collectives import all_gather, all_reduce

__all__ = [
    "Process",
    "average_norm_statistics",
    "max_over_ranks",
    "replica_max_difference",
    "resolve_device",
    "setup_process",
    "unwrap",
    "wrap_model",
]


@dataclass
class Process:
    """This process's place among the ``world_size`` processes, and its device."""

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
        raise ValueError(f"device {name!r} was asked for but torch sees no CUDA GPU "
                         "(use 'cpu', or 'auto' to take a GPU only when there is one)")  # fmt: skip
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} was asked for but torch sees only "
                         f"{torch.cuda.device_count()} CUDA GPU(s)")  # fmt: skip
    return device


def setup_process(device: str) -> Process:
    """Join the torchrun process group if there is one, and pick this process's device."""
    chosen = resolve_device(device)
    use_cuda = chosen.type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Process(device=chosen)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Process(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        device=torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"),
        owns_group=owns_group,
    )


def wrap_model(model, process: Process):
    """``DistributedDataParallel`` around ``model`` (SyncBatchNorm on GPU); as is for one process.

    Every trainable parameter gets a gradient, so DDP need not look for unused ones: the EMAU's
    first convolution, which the loss does not depend on, is frozen (``requires_grad=False``).
    """
    if process.world_size == 1:
        return model
    if process.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[process.device.index] if process.device.type == "cuda" else None,
    )


def unwrap(model):
    """The network inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if hasattr(model, "module") else model


def max_over_ranks(value: int, process: Process) -> int:
    """The largest ``value`` of all ranks, on every rank: a decision they all share.

    A collective: every rank must call it at the same point, or the others wait for it.
    """
    if process.world_size == 1:
        return value
    values = torch.tensor([value], dtype=torch.int64, device=process.device)
    all_reduce(values, op=dist.ReduceOp.MAX)
    return int(values.item())


def average_norm_statistics(model, world_size: int) -> None:
    """Average BatchNorm running statistics over ranks (each rank saw only its own batches).

    DistributedDataParallel copies rank 0's buffers to every rank before each forward pass, so
    after the last pass each rank holds statistics updated by its own shard only.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for statistic in (module.running_mean, module.running_var):
                all_reduce(statistic)
                statistic /= world_size


def replica_max_difference(model, process: Process) -> float:
    """Largest difference between ranks of a fingerprint of every weight and buffer (0: agree)."""
    if process.world_size == 1:
        return 0.0
    tensors = [t for t in unwrap(model).state_dict().values() if t.is_floating_point()]
    # Per tensor: sum and sum of squares, in float64 -- equal tensors give equal numbers.
    fingerprint = torch.stack(
        [s for t in tensors for s in (t.double().sum(), t.double().square().sum())]
    )  # (2 * n_tensors,)
    gathered = [torch.empty_like(fingerprint) for _ in range(process.world_size)]
    all_gather(gathered, fingerprint)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)
