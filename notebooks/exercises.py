"""The checks behind the notebooks' exercises: they say whether an answer is right, never raise.

An exercise ships with a placeholder answer, ``None``; its check reports "not yet" for it,
so a notebook with unanswered exercises still runs from top to bottom.
"""

import numpy as np


def check(name, answer, expected, hint, rtol=1e-6, atol=1e-12):
    """Print whether ``answer`` equals ``expected`` (same shape, within ``rtol``)."""
    if answer is None:
        print(f"{name}: not yet. Hint: {hint}")
        return
    answer = np.asarray(answer, dtype=float)
    if answer.shape == np.shape(expected) and np.allclose(answer, expected, rtol=rtol, atol=atol):
        print(f"{name}: right.")
    else:
        print(f"{name}: not right yet (expected shape {np.shape(expected)}, got {answer.shape}). "
              f"Hint: {hint}")
