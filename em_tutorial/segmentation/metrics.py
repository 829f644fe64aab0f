"""Segmentation metrics from a confusion matrix: per-class IoU and mean IoU.

The confusion matrix ``M`` (K x K) counts pixels: ``M[t, p]`` = number of pixels of true class
``t`` predicted as class ``p``. Pixels whose label is the ignore index (255 in PASCAL VOC: object
borders and padding) are left out. For class k:

    IoU_k = TP_k / (TP_k + FP_k + FN_k) = M[k, k] / (sum_p M[k, p] + sum_t M[t, k] - M[k, k])

and the mean IoU averages IoU_k over the classes that occur (in the ground truth or the
predictions); a class absent from both has no IoU (NaN) and is skipped, as in the standard
VOC evaluation.
"""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy", "ConfusionMatrix"]


def confusion_matrix(prediction, target, num_classes: int, ignore_index: int = 255):
    """Count (true class, predicted class) pairs over all pixels.

    Parameters
    ----------
    prediction, target : array_like of int, same shape (any, e.g. (B, H, W))
        Predicted and true class of each pixel. ``target == ignore_index`` pixels are skipped.
    num_classes : int
        K.
    ignore_index : int

    Returns
    -------
    ndarray, shape (K, K), int64
        ``M[t, p]``.

    Raises
    ------
    ValueError
        On mismatched shapes, or a class index outside ``0..K-1`` that is not ``ignore_index``.
    """
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {prediction.shape} and "
            f"{target.shape}"
        )
    keep = target != ignore_index
    t = target[keep].astype(np.int64)
    p = prediction[keep].astype(np.int64)
    for name, values in (("target", t), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} holds class {values.min() if values.min() < 0 else values.max()}, "
                f"outside 0..{num_classes - 1} (and not the ignore index {ignore_index})"
            )
    # Pair (t, p) -> flat index t * K + p, then count each flat index.
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)  # (K, K)


def iou_per_class(matrix):
    """IoU of each class from a confusion matrix; NaN for a class in neither truth nor prediction.

    Returns
    -------
    ndarray, shape (K,), float64
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)  # (K,)
    # TP + FP + FN = (row sum) + (column sum) - TP
    union = matrix.sum(axis=1) + matrix.sum(axis=0) - true_positive  # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(matrix) -> float:
    """Mean of :func:`iou_per_class` over the classes that occur (NaN-skipping mean)."""
    iou = iou_per_class(matrix)
    present = ~np.isnan(iou)
    if not present.any():
        raise ValueError("the confusion matrix is empty: no labelled pixels were counted")
    return float(iou[present].mean())


def pixel_accuracy(matrix) -> float:
    """Fraction of labelled pixels predicted right: ``trace(M) / sum(M)``."""
    matrix = np.asarray(matrix)
    total = matrix.sum()
    if total == 0:
        raise ValueError("the confusion matrix is empty: no labelled pixels were counted")
    return float(np.trace(matrix) / total)


class ConfusionMatrix:
    """Accumulates a confusion matrix over many batches.

    Examples
    --------
    >>> cm = ConfusionMatrix(num_classes=3)
    >>> cm.update([[0, 1], [2, 2]], [[0, 1], [1, 255]])
    >>> cm.matrix.tolist()
    [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    >>> round(cm.mean_iou(), 4)
    0.5
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction, target):
        """Add a batch: predicted and true class maps of the same shape."""
        self.matrix += confusion_matrix(prediction, target, self.num_classes, self.ignore_index)

    def iou_per_class(self):
        return iou_per_class(self.matrix)

    def mean_iou(self) -> float:
        return mean_iou(self.matrix)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)

    def summary(self, class_names=None) -> dict:
        """``{"miou", "pixel_accuracy", "iou": {name: IoU or None}}`` (JSON-friendly)."""
        names = class_names or [str(k) for k in range(self.num_classes)]
        return {
            "miou": self.mean_iou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, self.iou_per_class())},
        }
