"""What a context block costs on top of the network without one: time, memory, multiply-adds.

Measured on the block alone (EMAU, non-local, pooling), on the feature map it receives in the
tiny EMANet -- ``(1, C, S/8, S/8)`` for an ``S x S`` image -- so the numbers are the *extra*
cost of each head over ``head="none"`` (an identity), per image:

* ``head_ms``: median wall time of a forward pass in eval mode (one CPU thread unless set
  otherwise; timings on a busy machine are not reliable);
* ``extra_kib``: the block's parameters plus the activations it keeps for the backward pass
  in training mode (for the non-local block this is dominated by its N x N attention matrix);
* ``extra_mmacs``: multiply-adds counted by :class:`torch.utils.flop_counter.FlopCounterMode`
  (flops / 2), in millions.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

__all__ = ["head_costs"]


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors that autograd keeps for the backward pass of ``module(x)``."""
    sizes = []

    def pack(tensor):
        if tensor.data_ptr() != x.data_ptr():  # the input is kept by the layer before anyway
            sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(x.requires_grad_())
    return sum(sizes)


def head_costs(model: nn.Module, image_size: int, repeats: int = 20) -> dict:
    """Extra cost per image of ``model.attention`` on an ``image_size``-pixel square image.

    Parameters
    ----------
    model : EMANet
        Any head; ``head="none"`` gives zeros.
    image_size : int
        Side S of the image; the block sees an (S/8 rounded up)-sided feature map.
    repeats : int
        Forward passes timed (the median is reported).

    Returns
    -------
    dict
        ``head_ms``, ``extra_kib``, ``extra_mmacs`` and ``feature_size`` (the side of the map).
    """
    from torch.utils.flop_counter import FlopCounterMode

    block = model.attention
    side = math.ceil(image_size / model.backbone.output_stride)
    channels = model.fc0[0].out_channels
    x = torch.randn(2, channels, side, side)  # two images: BatchNorm needs more than one value
    if isinstance(block, nn.Identity):
        return {"head_ms": 0.0, "extra_kib": 0.0, "extra_mmacs": 0.0, "feature_size": side}
    parameters = sum(p.numel() * p.element_size() for p in block.parameters())
    saved = _saved_bytes(block.train(), x.clone()) / 2
    block.eval()
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            block(x[:1])
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            block(x[:1])
            times.append(time.perf_counter() - started)
    return {
        "head_ms": 1000 * statistics.median(times),
        "extra_kib": (parameters + saved) / 1024,
        "extra_mmacs": counter.get_total_flops() / 2 / 1e6,
        "feature_size": side,
    }
