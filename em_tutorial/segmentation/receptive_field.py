"""How far a convolutional network sees: theoretical and effective receptive fields.

* **Theoretical** receptive field: every input pixel that can influence one output pixel at
  all. Measured, not derived by hand, so that strides, dilations, residual branches and the
  final upsampling all count: in a copy of the network every weight is made positive, every
  max-pooling becomes an average, BatchNorm becomes the identity and the context block is
  removed; on an all-ones image every ReLU is then open, and the input pixels with a non-zero
  gradient of the centre output are exactly its field. The field of an output pixel depends
  on where it falls between the stride-8 feature cells, so all 8 offsets are probed and the
  largest reach (farthest influencing pixel, in any direction) is kept.
* **Effective** receptive field (Luo et al., NeurIPS 2016): in the real network, the gradient
  of the centre pixel's logit ``d logit / d x`` falls off quickly from the centre. We report
  the side of the smallest centred square holding ``mass`` (90 %) of ``sum |d logit / d x|``.

Both are sides of squares in input pixels; the half-side is how far a pixel's label can
depend on the image.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

__all__ = ["effective_receptive_field", "theoretical_receptive_field"]


def _centre_gradient(model, images: torch.Tensor, choose_class) -> np.ndarray:
    """sum over images and colour channels of |d logit_c(centre) / d x|, shape (H, W)."""
    images = images.clone().requires_grad_(True)
    logits = model(images)  # (B, K, H, W)
    h, w = logits.shape[-2] // 2, logits.shape[-1] // 2
    centre = logits[:, :, h, w]  # (B, K)
    picked = centre.gather(1, choose_class(centre)[:, None])  # (B, 1)
    (gradient,) = torch.autograd.grad(picked.sum(), images)
    return gradient.abs().sum(dim=(0, 1)).double().numpy()  # (H, W)


def theoretical_receptive_field(model: nn.Module, image_size: int = 320) -> int:
    """Side ``2 * reach + 1``, in input pixels, of the theoretical receptive field of the
    convolutions of ``model``, where ``reach`` is the farthest (Chebyshev) distance from an output
    pixel to an input pixel that can influence it, over every offset from the feature grid.

    Parameters
    ----------
    model : EMANet
        Its context block (``model.attention``) is left out: the field of the convolutions.
    image_size : int
        Side of the probe images (this and the next ``output_stride - 1`` sizes); must exceed
        the field (a larger one changes nothing).
    """
    probe = copy.deepcopy(model).double().eval()
    probe.attention = nn.Identity()
    for name, module in list(probe.named_modules()):
        if isinstance(module, nn.Conv2d):
            module.weight.data = module.weight.data.abs() + 1e-3
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()  # running mean 0, variance 1, scale 1, shift 0
        elif isinstance(module, nn.MaxPool2d):  # a max passes the gradient to one pixel only
            parent, _, attribute = name.rpartition(".")
            average = nn.AvgPool2d(module.kernel_size, module.stride, module.padding)
            setattr(probe.get_submodule(parent) if parent else probe, attribute, average)
    reach = 0
    for size in range(image_size, image_size + model.backbone.output_stride):
        ones = torch.ones(1, 3, size, size, dtype=torch.float64)
        first_class = lambda c: torch.zeros(len(c), dtype=torch.long)  # noqa: E731
        cells = np.argwhere(_centre_gradient(probe, ones, first_class) > 0)  # (M, 2)
        reach = max(reach, int(np.abs(cells - size // 2).max()))
    return 2 * reach + 1


def effective_receptive_field(model: nn.Module, images, mass: float = 0.9):
    """Side of the centred square holding ``mass`` of the centre pixel's input gradient.

    Parameters
    ----------
    model : nn.Module
        In eval mode; the gradient of each image's centre pixel, for its predicted class.
    images : Tensor, shape (B, 3, H, W)
    mass : float
        Share of ``sum |d logit / d x|`` the square must hold.

    Returns
    -------
    side : int
    gradient_map : ndarray, shape (H, W)
        ``sum |d logit / d x|`` over images and channels, normalised to sum 1.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass}")
    gradient = _centre_gradient(model, torch.as_tensor(images), lambda c: c.argmax(dim=1))
    gradient /= gradient.sum()
    h, w = gradient.shape
    for half in range(max(h, w)):
        window = gradient[max(0, h // 2 - half): h // 2 + half + 1,
                          max(0, w // 2 - half): w // 2 + half + 1]  # fmt: skip
        if window.sum() >= mass - 1e-12:
            return 2 * half + 1, gradient
    return max(h, w), gradient
