"""Stage 3: the EM Attention Unit and EMANet in PyTorch.

* :func:`em_tutorial.nn.functional.em_attention` -- EM attention on tensors, equal to
  :func:`em_tutorial.ema.em_attention` (NumPy) number for number.
* :class:`EMAU` -- the EM Attention Unit, with its bases as a moving-average buffer.
* :class:`NonLocal2d` -- the non-local block, the O(N^2) baseline.
* :class:`ImagePooling2d` -- DeepLabv3's image pooling, the cheapest global-context baseline.
* :class:`ResNet` -- dilated ResNet backbones (torchvision-compatible names with the plain stem).
* :class:`EMANet`, :func:`emanet_resnet101` (official), :func:`emanet_tiny` (CPU-sized), and
  :func:`param_groups` and :func:`set_bn_momentum` for the official training recipe.
* :func:`from_official_state_dict`, :func:`to_official_state_dict`,
  :func:`load_official_checkpoint` -- the authors' checkpoints in this package's names.

Every module here follows one input policy, in eval and training mode alike: NaN or inf (the
message names the images of the batch that hold them), values so large that a BatchNorm's
statistics (or the EMAU's EM iterations) would overflow, and an empty batch in training mode
are refused with a ValueError before any buffer moves; anything but a tensor (a NumPy array)
is a TypeError. Inside :class:`EMANet`, which checks its images, the backbone and head blocks
skip the check, so that NaN from diverged weights reaches the loss (see
:func:`functional.check_batch`).
"""

from . import emanet, functional, recipe
from .emanet import (
    TINY_BACKBONE,
    EMANet,
    emanet_resnet50,
    emanet_resnet101,
    emanet_resnet152,
    emanet_tiny,
)
from .emau import EMAU
from .non_local import NonLocal2d
from .official import from_official_state_dict, load_official_checkpoint, to_official_state_dict
from .pooling import ImagePooling2d
from .recipe import OFFICIAL_BN_MOMENTUM, param_groups, set_bn_momentum
from .resnet import ResNet, resnet50, resnet101, resnet152

__all__ = [
    "functional", "EMAU", "ImagePooling2d", "NonLocal2d", "ResNet", "resnet50", "resnet101",
    "resnet152", *emanet.__all__, *recipe.__all__, "from_official_state_dict",
    "to_official_state_dict", "load_official_checkpoint",
]
