"""The model-side pieces of the official EMANet training recipe.

* :func:`param_groups` -- SGD groups: decay on convolution weights only, biases at 2x the rate;
* :func:`set_bn_momentum`, :data:`OFFICIAL_BN_MOMENTUM` -- the running-statistics momentum
  of every BatchNorm (official: 3e-4; PyTorch's default: 0.1).
"""

from __future__ import annotations

from torch import nn

__all__ = ["param_groups", "set_bn_momentum", "OFFICIAL_BN_MOMENTUM"]

OFFICIAL_BN_MOMENTUM = 3e-4
"""BatchNorm momentum of the official EMANet (its ``BN_MOM``); PyTorch's default is 0.1."""

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def set_bn_momentum(model: nn.Module, momentum: float) -> nn.Module:
    """Set the running-statistics momentum of every BatchNorm in ``model``; returns ``model``.

    ``running <- (1 - momentum) running + momentum batch``; the official EMANet uses
    :data:`OFFICIAL_BN_MOMENTUM` everywhere. ``nn.SyncBatchNorm.convert_sync_batchnorm``
    keeps the value.
    """
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"BatchNorm momentum must lie in (0, 1], got {momentum}")
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
    return model


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Optimiser parameter groups of the official EMANet recipe.

    * ``"weights"``: convolution and linear weights, learning rate ``lr``, ``weight_decay``;
    * ``"norm_weights"``: normalisation-layer scales, ``lr``, no weight decay;
    * ``"biases"``: every bias (convolutions and normalisation layers), ``2 * lr``, no decay.

    Each trainable parameter appears in exactly one group; frozen ones (``requires_grad``
    False, such as the EMAU's first convolution) in none; empty groups are left out. Pass the
    result to ``torch.optim.SGD(groups, momentum=0.9)``; a schedule that scales each group's
    initial ``lr`` (``LambdaLR``) keeps the biases at twice the rate.
    """
    weights, norm_weights, biases = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "bias":
                biases.append(param)
            elif isinstance(module, _NORM_TYPES):
                norm_weights.append(param)
            else:
                weights.append(param)
    groups = [
        {"name": "weights", "params": weights, "lr": lr, "weight_decay": weight_decay},
        {"name": "norm_weights", "params": norm_weights, "lr": lr, "weight_decay": 0.0},
        {"name": "biases", "params": biases, "lr": 2 * lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
