"""``all_reduce`` and ``all_gather`` that return only once gloo has let go of their tensors.

Why: gloo (the CPU backend) runs each collective on a worker thread, and that thread may still
hold the collective's tensors for a moment after ``dist.all_reduce`` has returned. Letting go
of a tensor that Python knows takes the GIL. If the process has begun to shut down by then,
the worker thread is stopped inside a destructor and the process aborts ("terminate called
without an active exception", SIGABRT), after a run that had finished and written everything
(pytorch/pytorch#190489). Waiting here until only the caller holds the tensors closes that
window; it costs microseconds. NCCL is left as it is: its collectives run on CUDA streams.
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.distributed as dist

RELEASE_TIMEOUT_S = 1.0
"""Seconds to wait for gloo to let go of a collective's tensors before warning and going on."""


def all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> None:
    """``dist.all_reduce(tensor, op)``, in place, then wait until gloo has let go of ``tensor``."""
    held = tensor._use_count()
    dist.all_reduce(tensor, op=op)
    wait_until_released([tensor], [held])


def all_gather(outputs: list[torch.Tensor], tensor: torch.Tensor) -> None:
    """``dist.all_gather(outputs, tensor)``, then wait until gloo has let go of every tensor."""
    tensors = [*outputs, tensor]
    held = [t._use_count() for t in tensors]
    dist.all_gather(outputs, tensor)
    wait_until_released(tensors, held)


def wait_until_released(tensors: list[torch.Tensor], held: list[int]) -> None:
    """Sleep (the GIL released) until each tensor's reference count is back to ``held``.

    ``held`` is each count read before the collective. Only gloo is waited for.
    """
    if dist.get_backend() != "gloo":
        return
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while any(t._use_count() > count for t, count in zip(tensors, held)):
        if time.monotonic() > deadline:
            warnings.warn(f"gloo still held a collective's tensors {RELEASE_TIMEOUT_S} s after "
                          "it returned; going on (the process may abort at exit)",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
            return
        time.sleep(1e-4)
