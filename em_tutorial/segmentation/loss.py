"""The training loss: per-pixel cross-entropy, averaged over the crop one of two ways.

For each pixel p of a batch of crops, with label y_p and class probabilities from a softmax
over the logits, the loss of a labelled pixel (y_p != 255) is

    l_p = -log softmax(logits_p)[y_p]

and an ignored pixel (y_p == 255: padding, object borders) contributes nothing. The mean:

* ``"all"`` (the official recipe): ``L = sum_p l_p / (B * H * W)``, over every pixel of the
  crops, ignored ones included in the count -- the authors' per-pixel NLL with
  ``reduction='none'``, averaged over the crop.
* ``"labelled"``: ``L = sum_p l_p / #{p : y_p != 255}`` -- PyTorch's
  ``cross_entropy(..., ignore_index=255)``. A crop taken from an image shrunk to half its size
  is mostly padding; this mean gives each of its few labelled pixels a larger weight, and
  the step a larger gradient, than the official one.
* ``"classes"``: ``L = (1 / |C|) sum_{c in C} mean_{p : y_p = c} l_p`` over the set C of
  classes present in the batch -- every class counts equally, however few its pixels. On
  scenes that are 90 % background, the two other means let the background dominate the
  gradient, and a small network spends hundreds of steps predicting "background or some
  digit" before it starts to tell the digits apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSS_NORMALIZATIONS", "segmentation_loss"]

LOSS_NORMALIZATIONS = ("all", "labelled", "classes")


def segmentation_loss(logits, labels, ignore_index=255, normalization="all") -> torch.Tensor:
    """Mean cross-entropy of a batch of crops, ignoring pixels labelled ``ignore_index``.

    Parameters
    ----------
    logits : Tensor, shape (B, classes, H, W)
    labels : Tensor, shape (B, H, W), int64
        Class indices, ``ignore_index`` where a pixel has no label.
    ignore_index : int
    normalization : {"all", "labelled", "classes"}
        Divide the summed loss by all ``B * H * W`` pixels (official) or by the labelled ones,
        or average the per-class means over the classes present.

    Returns
    -------
    Tensor, shape ()
    """
    if normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(
            f"loss normalization must be one of {LOSS_NORMALIZATIONS}, got {normalization!r}"
        )
    if normalization == "labelled":
        # L = sum_p l_p / #labelled pixels
        return F.cross_entropy(logits, labels, ignore_index=ignore_index)
    if normalization == "classes":
        return _class_balanced_loss(logits, labels, ignore_index)
    # L = sum_p l_p / (B * H * W)
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / labels.numel()


def _class_balanced_loss(logits, labels, ignore_index) -> torch.Tensor:
    """L = mean over the classes c present of (sum_{y_p = c} l_p / #{p : y_p = c})."""
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index,
                                reduction="none").flatten()  # (B*H*W,)
    flat = labels.flatten()  # (B*H*W,)
    labelled = flat != ignore_index
    classes = logits.shape[1]
    # per-class sums and counts by scatter-add: (classes,)
    sums = per_pixel.new_zeros(classes).index_add(0, flat[labelled], per_pixel[labelled])
    counts = torch.bincount(flat[labelled], minlength=classes).to(per_pixel.dtype)
    present = counts > 0
    if not present.any():  # nothing labelled: no gradient, as with the other means
        return per_pixel.sum() * 0.0
    return (sums[present] / counts[present]).mean()
