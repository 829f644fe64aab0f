"""Small trained networks shipped with the package, so that a reader sees trained behaviour
without training anything.

``shipped/context-<head>-seed0.pt``: the seed-0 context networks of the committed ablation
(``results/ablation/``, made by ``em-tutorial ablate`` with the planned recipe), without
attention (``none``) and with the EMAU (``emau``). Their weights are stored in float16 (about
300 KiB each) and loaded back as float32; the rounding moves a few pixels' predictions, so
metrics computed from them are close to, not equal to, the committed row of seed 0.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["SHIPPED_DIR", "SHIPPED_HEADS", "export_shipped_model", "shipped_context_model"]

SHIPPED_DIR = Path(__file__).parent / "shipped"
SHIPPED_HEADS = ("none", "emau")


def _path(head: str) -> Path:
    if head not in SHIPPED_HEADS:
        raise ValueError(f"shipped context networks: heads {SHIPPED_HEADS}, got {head!r}")
    return SHIPPED_DIR / f"context-{head}-seed0.pt"


def shipped_context_model(head: str = "emau"):
    """The shipped seed-0 context network with ``head``, float32, in eval mode; and its config.

    Returns
    -------
    (EMANet, TrainConfig)
        The config is the context recipe's with ``seed=0``: its validation scenes are those
        the network was evaluated on.
    """
    from .config import TrainConfig, build_model

    config = TrainConfig(dataset="context", head=head, seed=0)
    model = build_model(config, num_classes=11)
    state = torch.load(_path(head), map_location="cpu", weights_only=True)
    model.load_state_dict({name: value.to(model.state_dict()[name].dtype)
                           for name, value in state.items()})  # fmt: skip
    return model.eval(), config


def export_shipped_model(checkpoint, head: str) -> Path:
    """Write a finished run's weights (``checkpoint.pt`` of a seed-0 context run with ``head``)
    as the shipped float16 copy, atomically."""
    from .checkpoint import atomic_torch_save, load_checkpoint

    state = load_checkpoint(checkpoint)["model"]
    half = {name: value.half() if value.is_floating_point() else value
            for name, value in state.items()}  # fmt: skip
    path = _path(head)
    atomic_torch_save(half, path)
    return path
