"""Weight files read safely, and state dicts described by the structure their shapes imply.

Shared by :func:`~em_tutorial.nn.load_official_checkpoint`, ``EMANet(pretrained_backbone=...)``
and ``emanet_*(weights=...)``, so that a file that is no checkpoint, a checkpoint wrapped in a
dict, and one for another network get the same one-line errors on every path.
"""

from __future__ import annotations

import os
import re

import torch

from .resnet import RESNET_DEPTHS

WRAPPER_KEYS = ("net", "state_dict", "model", "model_state_dict")
"""Where training scripts put the state dict inside a checkpoint dict: the official EMANet's
script ("net"), PyTorch Lightning and mmsegmentation ("state_dict"), torchvision's
references and this package's training ("model"), and the PyTorch tutorials' habit."""
_DEPTHS = {(block, layers): depth for depth, (block, layers) in RESNET_DEPTHS.items()}


def read_weights(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, or one ValueError naming the file.

    A missing file raises FileNotFoundError as it is. Any other failure is a ValueError that
    names the file and says what it is not; PyTorch's own message (which suggests loading with
    ``weights_only=False``, i.e. running whatever the file contains) is not passed on.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # missing, a folder, no permission: the message names the path
        raise
    except Exception as error:  # noqa: BLE001 -- random bytes, text, a cut zip, an object
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:
            raise ValueError(f"{path} is not a PyTorch checkpoint, or a damaged one (torch.load "
                             f"failed with {type(error).__name__})") from None
        raise ValueError(
            f"{path} holds a pickled {found[1]} object; only tensors and plain containers are "
            "read from weight files: save the state_dict alone "
            "(torch.save(model.state_dict(), path))"
        ) from None


def _is_state_dict(value) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(v, torch.Tensor) for v in value.values()))


def unwrap_state_dict(checkpoint, source) -> dict:
    """The state dict in ``checkpoint``: itself, or the one under a :data:`WRAPPER_KEYS` key.

    Raises a ValueError naming ``source`` and what it holds when there is none.
    """
    if _is_state_dict(checkpoint):
        return checkpoint
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{source} holds a {type(checkpoint).__name__}, not a state dict "
                         "(a dict of tensors)")
    for key in WRAPPER_KEYS:
        if _is_state_dict(checkpoint.get(key)):
            return checkpoint[key]
    shown = sorted(map(str, checkpoint))[:8]
    raise ValueError(
        f"{source} holds a dict with keys {shown}{' ...' if len(checkpoint) > 8 else ''} and "
        f"no state dict: neither tensors nor a dict of tensors under {list(WRAPPER_KEYS)}"
    )


def backbone_structure(state_dict: dict, prefix: str = "") -> str | None:
    """"ResNet-101 (deep stem)", "ResNet (1, 1, 1, 1) bottleneck, width 8 (deep stem)" ...:
    the ResNet that the keys and shapes under ``prefix`` describe, None if they describe none."""
    layers = []
    for stage in range(1, 5):
        heads = {k[len(f"{prefix}layer{stage}.") :].split(".")[0] for k in state_dict
                 if k.startswith(f"{prefix}layer{stage}.")}
        blocks = [int(h) for h in heads if h.isdigit()]
        if not blocks:
            return None
        layers.append(1 + max(blocks))
    first = state_dict.get(f"{prefix}layer1.0.conv1.weight")
    if first is None:
        return None
    block = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state_dict else "basic"
    width = first.shape[0]
    depth = _DEPTHS.get((block, tuple(layers)))
    name = f"ResNet-{depth}" if depth else f"ResNet {tuple(layers)} {block}"
    if width != 64:
        name += f", width {width}"
    stem = "deep" if f"{prefix}conv1.0.weight" in state_dict else "plain"
    return f"{name} ({stem} stem)"


def emanet_structure(state_dict: dict) -> dict[str, str]:
    """What an EMANet state dict (this package's names) says of its network, item by item."""
    described = {"backbone": backbone_structure(state_dict, "backbone.")}
    for item, key, unit in (("classes", "fc2.weight", "classes"),
                            ("ema_channels", "fc0.0.weight", "attention channels"),
                            ("num_bases", "attention.mu", "bases"),
                            ("head_channels", "fc1.0.weight", "head channels")):
        if key in state_dict:
            described[item] = f"{state_dict[key].shape[0]} {unit}"
    heads = {"attention.mu": "EMAU head", "attention.theta.weight": "non-local head",
             "attention.pooled.0.weight": "image-pooling head"}
    described["head"] = next((h for k, h in heads.items() if k in state_dict), "no attention head")
    return {item: text for item, text in described.items() if text is not None}


def mismatch(found: dict[str, str], expected: dict[str, str]) -> str | None:
    """"this checkpoint has A / B, the model has C / D" over the items that differ, or None."""
    differing = [item for item in expected if found.get(item) != expected[item]]
    if not differing:
        return None
    has = " / ".join(found.get(item, f"no {item}") for item in differing)
    return f"this checkpoint has {has}, the model has " + " / ".join(
        expected[item] for item in differing)


def same_keys_and_shapes(state_dict: dict, expected: dict) -> bool:
    """Does ``state_dict`` hold exactly the entries of ``expected``, each of its shape?"""
    return state_dict.keys() == expected.keys() and all(
        tuple(value.shape) == tuple(expected[name].shape) for name, value in state_dict.items())


def emanet_difference(state_dict: dict, expected: dict) -> str | None:
    """How an EMANet ``state_dict`` differs from the ``expected`` one, None where it fits:
    the items of :func:`emanet_structure` that differ (:func:`mismatch`), or where those
    agree, the entries (:func:`key_differences`)."""
    difference = mismatch(emanet_structure(state_dict), emanet_structure(expected))
    if difference is None and not same_keys_and_shapes(state_dict, expected):
        difference = key_differences(state_dict, expected)
    return difference


def key_differences(state_dict: dict, expected: dict) -> str:
    """A short account of missing, unexpected and misshapen keys (a few named of each)."""
    def named(keys):
        return f"{len(keys)} ({', '.join(map(repr, keys[:3]))}{', ...' if len(keys) > 3 else ''})"

    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    shapes = [k for k in expected if k in state_dict
              and state_dict[k].shape != expected[k].shape]
    parts = [f"{what} keys {named(keys)}" for what, keys in
             (("missing", missing), ("unexpected", extra), ("misshapen", shapes)) if keys]
    return "; ".join(parts) or "no key differs"
