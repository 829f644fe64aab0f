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


def take_rows(array, rows):
    """``array[rows]`` for a host list of row indices, on the array's device."""
    xp = get_array_module(array)
    return xp.take(array, xp.asarray(rows, device=array_api_compat.device(array)), axis=0)


def replace_rows(array, rows, replacements):
    """``array`` with its row ``rows[i]`` replaced by ``replacements[i]`` (a host list of
    indices; no in-place assignment, which not every array library allows)."""
    xp = get_array_module(array, replacements)
    n_rows = array.shape[0]
    source = list(range(n_rows))  # row i of the result is row source[i] of the stack below
    for position, row in enumerate(rows):
        source[row] = n_rows + position
    return take_rows(xp.concat([array, replacements], axis=0), source)
