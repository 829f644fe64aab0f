"""One code path for NumPy, CuPy and any array-API namespace: the ``xp`` idiom.

Every numerical function in the package starts with ``xp = get_array_module(x, mu)`` and then
calls ``xp.exp``, ``xp.matmul``, ``xp.sum`` ... instead of ``np.exp`` and friends, so the same
lines run on NumPy arrays (CPU), CuPy arrays (GPU) and ``array_api_strict`` arrays (the CPU
stand-in the tests use to catch NumPy-only calls).

This is CuPy's ``cupy.get_array_module`` idea, widened with ``array_api_compat`` so that it
also covers namespaces that follow the Python array API standard.
"""

from __future__ import annotations

import os

import array_api_compat
import numpy as np

__all__ = [
    "get_array_module",
    "is_numpy_namespace",
    "is_cupy_namespace",
    "gpu_available",
    "gpu_unavailable_reason",
    "to_device",
    "to_numpy",
    "usable_cpus",
]


def _kind(array) -> str:
    if array_api_compat.is_numpy_array(array):
        return "numpy"
    if array_api_compat.is_cupy_array(array):
        return "cupy"
    return type(array).__module__.split(".")[0]


def get_array_module(*arrays):
    """Return the array namespace ``xp`` shared by ``arrays``.

    Python scalars and ``None`` are ignored. NumPy arrays give an array-API view of NumPy
    (``array_api_compat.numpy``), CuPy arrays the CuPy one, strict arrays their own namespace.

    Raises
    ------
    TypeError
        If the arrays live in different libraries (for example one NumPy and one CuPy array).
        Mixing them would mean a silent copy between host and device on every call; move them
        to one place first with :func:`to_device` or :func:`to_numpy`.
    """
    arrays = [a for a in arrays if a is not None and not isinstance(a, (bool, int, float, complex))]
    if not arrays:
        return array_api_compat.numpy
    kinds = {_kind(a) for a in arrays}
    if len(kinds) > 1:
        raise TypeError(
            f"arrays from different libraries were mixed: {sorted(kinds)}. Move them all to one "
            "place first, e.g. em_tutorial.backend.to_device(x) for the GPU or "
            "em_tutorial.backend.to_numpy(x) for the CPU."
        )
    return array_api_compat.array_namespace(*arrays)


def is_numpy_namespace(xp) -> bool:
    """True if ``xp`` is NumPy (plain or its array-API-compat wrapper)."""
    return array_api_compat.is_numpy_namespace(xp)


def is_cupy_namespace(xp) -> bool:
    """True if ``xp`` is CuPy (plain or its array-API-compat wrapper)."""
    return array_api_compat.is_cupy_namespace(xp)


def gpu_available() -> bool:
    """True if CuPy is installed *and* can see a CUDA device."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:  # a broken CUDA install reports itself through many exception types
        return False


def gpu_unavailable_reason():
    """None if CuPy can use a GPU here, else a sentence saying why not (for skip messages)."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed (pip install 'em_tutorial[gpu]')"
    if not gpu_available():
        return "CuPy is installed but sees no CUDA GPU on this machine"
    return None


def to_device(array, dtype=None):
    """Copy a host array (or anything ``numpy.asarray`` takes) to the GPU as a CuPy array.

    Parameters
    ----------
    array : array_like
    dtype : dtype, optional
        Cast on the way, e.g. ``numpy.float32`` (the GPU stage's default precision).

    Raises
    ------
    RuntimeError
        If CuPy is missing or no GPU is visible.
    """
    if not gpu_available():
        raise RuntimeError(
            "no GPU: CuPy is not installed or cannot see a CUDA device "
            "(pip install 'em_tutorial[gpu]' on a machine with an NVIDIA GPU)"
        )
    import cupy

    return cupy.asarray(array, dtype=dtype)


def to_numpy(array):
    """Return ``array`` as a NumPy array, copying from the GPU if it is a CuPy array."""
    if array_api_compat.is_cupy_array(array):
        return array.get()
    if array_api_compat.is_torch_array(array):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity where the system reports one (Linux),
    else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
