"""New arrays made next to an existing one: same namespace, dtype and device.

The array API keeps arrays on different devices apart (a GPU array and a CPU one cannot be
combined), so every constant the equations need is created on the device of the data.
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from em_tutorial.backend import get_array_module, to_numpy


def constant_like(value, like):
    """``value`` as a 0-d array with the dtype and device of ``like``."""
    xp = get_array_module(like)
    return xp.asarray(value, dtype=like.dtype, device=array_api_compat.device(like))


def eye_like(n, like):
    """The (n, n) identity with the dtype and device of ``like``."""
    xp = get_array_module(like)
    return xp.eye(n, dtype=like.dtype, device=array_api_compat.device(like))


def full_like_shape(shape, value, like):
    """An array of ``shape`` filled with ``value``, with the dtype and device of ``like``."""
    xp = get_array_module(like)
    return xp.full(shape, value, dtype=like.dtype, device=array_api_compat.device(like))


def to_host(array):
    """A NumPy array with the values of ``array`` (any library and device, or a list).

    CuPy and PyTorch have their own copies to the host; any other array-API array goes
    through DLPack, which also moves it off a non-CPU device (array_api_strict's).
    """
    if array_api_compat.is_numpy_array(array) or not array_api_compat.is_array_api_obj(array):
        return np.asarray(array)  # NumPy already, or a list or scalar
    if array_api_compat.is_cupy_array(array) or array_api_compat.is_torch_array(array):
        return to_numpy(array)
    return np.from_dlpack(array, device="cpu")
