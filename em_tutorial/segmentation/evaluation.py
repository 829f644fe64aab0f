"""Evaluating a segmentation network: single-scale, or multi-scale with horizontal flips.

Multi-scale + flip inference (the official repository reports it but never released it): for
each scale s the image is resized by s (bilinear), the network's class probabilities are
resized back to the original size, and the same is done for the mirrored image (mirrored
back). The prediction is the class with the largest mean probability:

    p(c | pixel) = mean over s in scales, f in {identity, flip} of  f(resize(softmax(net(f(resize_s(x))))))

PASCAL VOC practice uses scales (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) with flips.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..nn._collectives import all_reduce
from .metrics import ConfusionMatrix

__all__ = ["VOC_EVAL_SCALES", "evaluate", "predict_probabilities"]

VOC_EVAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@torch.no_grad()
def predict_probabilities(model, images, scales=(1.0,), flip=False):
    """Class probabilities averaged over scales (and mirror images).

    Parameters
    ----------
    model : nn.Module
        Maps (B, 3, h, w) to logits (B, K, h, w); put it in eval mode first.
    images : Tensor, shape (B, 3, H, W)
    scales : sequence of float
    flip : bool
        Also average over the horizontally mirrored images.

    Returns
    -------
    Tensor, shape (B, K, H, W)
    """
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {tuple(scales)}")
    size = images.shape[-2:]
    total = None
    for scale in scales:
        scaled = images
        if scale != 1.0:
            scaled_size = [max(1, round(n * scale)) for n in size]
            scaled = F.interpolate(images, size=scaled_size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            probabilities = model(view).float().softmax(dim=1)  # (B, K, h, w)
            if mirrored:
                probabilities = probabilities.flip(-1)
            if probabilities.shape[-2:] != size:
                probabilities = F.interpolate(
                    probabilities, size=size, mode="bilinear", align_corners=False
                )  # (B, K, H, W)
            total = probabilities if total is None else total + probabilities
    return total / (len(scales) * (2 if flip else 1))


def evaluate(
    model,
    dataset,
    scales=(1.0,),
    flip=False,
    batch_size=1,
    device="cpu",
    num_workers=0,
    progress=False,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over ``dataset`` (all of it, shared among ranks if any).

    Parameters
    ----------
    model : nn.Module
    dataset : a data set of ``(image (3, H, W), label (H, W))`` pairs with ``num_classes``
        and ``ignore_index`` attributes. Images of different sizes need ``batch_size=1``.
        Pixels labelled ``ignore_index`` never count, the official 8k + 1 padding
        (:class:`~em_tutorial.segmentation.data.ValidationPadding`) among them.
    scales, flip
        See :func:`predict_probabilities`.
    batch_size, device, num_workers
    progress : bool
        Draw a tqdm bar.

    Returns
    -------
    ConfusionMatrix
        Under ``torch.distributed`` every rank evaluates every ``world_size``-th image and the
        matrices are summed, so every rank returns the full result.
    """
    from tqdm.auto import tqdm

    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    matrix = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    was_training = model.training
    model.eval()
    try:
        for images, labels in tqdm(loader, desc="evaluate", disable=not progress or rank != 0):
            probabilities = predict_probabilities(model, images.to(device), scales, flip)
            matrix.update(probabilities.argmax(dim=1).cpu().numpy(), labels.numpy())
    finally:
        model.train(was_training)
    if distributed:
        counts = torch.from_numpy(matrix.matrix).to(device)
        all_reduce(counts)
        matrix.matrix = counts.cpu().numpy().astype(np.int64)
    return matrix
