"""Checks of the readers' scalar arguments: one line naming the argument at fault."""

from __future__ import annotations

import math
import numbers

__all__ = ["check_integer", "check_real", "check_index"]


def check_integer(name: str, value, minimum: int) -> int:
    """``value`` as an int: TypeError unless an integer (bool is not), ValueError below minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_real(name: str, value, low: float, high: float = math.inf) -> float:
    """``value`` as a float: TypeError unless a real number, ValueError outside [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not low <= value <= high:  # NaN fails both comparisons
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return float(value)


def check_index(index, length: int) -> int:
    """A sample index in ``-length .. length - 1`` as an int in ``0 .. length - 1``.

    Raises TypeError for a non-integer and IndexError (what iteration expects) out of range.
    """
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise TypeError(f"index must be an integer, got {index!r}")
    if not -length <= index < length:
        raise IndexError(f"index {index} is out of range for {length} samples")
    return int(index) % length
