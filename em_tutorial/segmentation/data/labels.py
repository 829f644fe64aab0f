"""Checking segmentation labels when they are read, and whole splits in advance.

A label map holds, per pixel, a class index ``0 .. num_classes - 1`` or the ignore value 255.
Any other value would reach the loss as an out-of-range target (torch's "Target 77 is out of
bounds", naming no file, possibly hours into a run) or be counted silently by the metrics, so
every reader checks its labels with :func:`check_label` and names the file in the error.
:func:`find_bad_samples` reads a whole split through the same checks (``em-tutorial check-data``).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["LabelError", "check_label", "find_bad_samples"]


class LabelError(ValueError):
    """A label map holds values that are neither class indices nor the ignore value."""


def check_label(label, num_classes: int, ignore_index: int, source: str):
    """Return ``label`` unchanged if every value is a class index or ``ignore_index``.

    Parameters
    ----------
    label : ndarray, shape (H, W), integer
        Class index per pixel.
    num_classes : int
        Valid classes are ``0 .. num_classes - 1``.
    ignore_index : int
        The value of pixels left out of the loss and the metrics (255).
    source : str
        What the label was read from (a file path), named in the error.

    Raises
    ------
    LabelError
        Naming ``source`` and the offending values.
    """
    label = np.asarray(label)
    if label.size == 0 or (label.min() >= 0 and label.max() < num_classes):
        return label  # the common case, two reductions
    outside = (label < 0) | (label >= num_classes)
    bad = np.unique(label[outside & (label != ignore_index)])
    if bad.size:
        more = f" and {bad.size - 10} more" if bad.size > 10 else ""
        shown = ", ".join(str(v) for v in bad[:10]) + more
        count = int(np.isin(label, bad).sum())
        raise LabelError(
            f"label {source} holds values {shown} in {count} pixel{'s' * (count != 1)}; expected class indices "
            f"0..{num_classes - 1} or the ignore value {ignore_index}"
        )
    return label


def find_bad_samples(dataset, progress=True, description="check", read=None,
                     problems_of=None) -> list[str]:  # fmt: skip
    """Read every sample of ``dataset`` and collect what fails.

    Parameters
    ----------
    dataset : a data set with ``raw(i)`` and ``len()``
        ``raw`` raises ``OSError`` or ``ValueError`` naming the file (missing, corrupt, wrong
        mode or size, bad label values).
    progress : bool
        Draw a tqdm bar.
    description : str
        The bar's label.
    read : callable, optional
        ``read(i)`` in place of ``dataset.raw(i)`` (e.g. a reader of the labels only).
    problems_of : callable, optional
        ``problems_of(i)``, the list of every problem of sample ``i`` (several files can be bad
        in one sample), in place of reading it: see
        :meth:`~em_tutorial.segmentation.data.VOCSegmentation.sample_problems`.

    Returns
    -------
    list of str
        One message per bad sample (per bad file with ``problems_of``); empty when every
        sample reads cleanly.
    """
    from tqdm.auto import tqdm

    problems_of = problems_of or functools.partial(_first_problem, read or dataset.raw)
    problems = []
    with tqdm(range(len(dataset)), desc=description, unit="img", disable=not progress) as bar:
        for index in bar:
            found = problems_of(index)
            if found:
                problems += found
                bar.set_postfix(bad=len(problems))
    return problems


def _first_problem(read, index) -> list[str]:
    """``[message]`` of the error ``read(index)`` raises, or ``[]``."""
    try:
        read(index)
    except (OSError, ValueError) as error:
        return [str(error)]
    return []
