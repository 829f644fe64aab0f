"""The authors' EMANet checkpoints: their parameter names and layouts <-> this package's.

The official EMANet (the XiaLiPKU/EMANet repository) computes what :class:`EMANet` computes
but names its modules differently, and stores the bases as (1, C, K) instead of (K, C)::

    official                             this package
    extractor.0.*   (deep stem)          backbone.conv1.*
    extractor.1.*                        backbone.bn1.*
    extractor.4.* ... extractor.7.*      backbone.layer1.* ... backbone.layer4.*
    fc0.conv.*, fc0.bn.*                 fc0.0.*, fc0.1.*
    emau.mu           (1, C, K)          attention.mu      (K, C)
    emau.conv1.*                         attention.conv_in.*
    emau.conv2.0.*, emau.conv2.1.*       attention.conv_out.*, attention.bn_out.*
    fc1.0.conv.*, fc1.0.bn.*             fc1.0.*, fc1.1.*
    fc2.*                                fc2.*

Its ResNet alone (the ImageNet backbone: ``conv1.0.*``, ``bn1.*``, ``layer1.*`` ...,
``fc.*``) already uses the names of :class:`~em_tutorial.nn.ResNet` with ``deep_stem=True``.
Both conversions are strict: a key that fits no rule, a missing key and a wrong shape are
errors that name the key. The structure (depths, widths, K, classes) is read from the shapes.
"""

from __future__ import annotations

import os

import torch

from ._weights import read_weights, unwrap_state_dict
from .emanet import EMANet
from .resnet import ResNet

__all__ = ["from_official_state_dict", "to_official_state_dict", "load_official_checkpoint"]

# (official prefix, this package's prefix); within each column no prefix starts another.
_PREFIXES = (
    ("extractor.0.", "backbone.conv1."),
    ("extractor.1.", "backbone.bn1."),
    *((f"extractor.{i + 3}.", f"backbone.layer{i}.") for i in range(1, 5)),
    ("fc0.conv.", "fc0.0."),
    ("fc0.bn.", "fc0.1."),
    ("emau.conv1.", "attention.conv_in."),
    ("emau.conv2.0.", "attention.conv_out."),
    ("emau.conv2.1.", "attention.bn_out."),
    ("fc1.0.conv.", "fc1.0."),
    ("fc1.0.bn.", "fc1.1."),
    ("fc2.", "fc2."),
)
_BASES = ("emau.mu", "attention.mu")


def _rename(key: str, official_to_ours: bool) -> str:
    source, target = (0, 1) if official_to_ours else (1, 0)
    if key == _BASES[source]:
        return _BASES[target]
    for pair in _PREFIXES:
        if key.startswith(pair[source]):
            return pair[target] + key[len(pair[source]) :]
    naming = "the official EMANet's" if official_to_ours else "this package's EMANet"
    raise ValueError(f"unknown key {key!r}: not a parameter or buffer name of {naming}")


def _shape(state_dict: dict, key: str, callers_name=str) -> torch.Size:
    """The shape of ``state_dict[key]``; a missing key is named as the caller names it."""
    if key not in state_dict:
        raise ValueError(f"missing key {callers_name(key)!r}")
    return state_dict[key].shape


def _block_indices(state_dict: dict, stage: str) -> set[int]:
    # A key whose block index is no integer is left to _check_complete to name.
    heads = (k[len(stage) :].split(".")[0] for k in state_dict if k.startswith(stage))
    return {int(head) for head in heads if head.isdigit()}


def _reference_model(state_dict: dict, prefix: str, callers_name) -> torch.nn.Module:
    """A meta-device model of the structure that ``state_dict`` (this package's names) implies.

    Keys it misses are named by ``callers_name`` (the official names for an official dict).
    """
    stages = [f"{prefix}layer{i}." for i in range(1, 5)]
    blocks = [_block_indices(state_dict, stage) for stage in stages]
    if not all(blocks):
        stage = callers_name(stages[blocks.index(set())])
        raise ValueError(f"missing keys: no blocks for {stage[:-1]} (no key {stage}0.*)")
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
    backbone_kwargs = {
        "layers": tuple(1 + max(b) for b in blocks),
        "block": "bottleneck" if bottleneck else "basic",
        "base_width": _shape(state_dict, f"{prefix}layer1.0.conv1.weight", callers_name)[0],
        "deep_stem": True,
        "stem_width": _shape(state_dict, f"{prefix}conv1.0.weight", callers_name)[0],
    }
    with torch.device("meta"):
        if not prefix:  # the backbone alone, with or without its ImageNet classifier
            fc = state_dict.get("fc.weight")
            return ResNet(**backbone_kwargs, num_classes=None if fc is None else fc.shape[0])
        return EMANet(
            _shape(state_dict, "fc2.weight", callers_name)[0],
            backbone=ResNet(**backbone_kwargs),
            ema_channels=_shape(state_dict, "fc0.0.weight", callers_name)[0],
            num_bases=_shape(state_dict, "attention.mu", callers_name)[0],
            head_channels=_shape(state_dict, "fc1.0.weight", callers_name)[0],
        )


def _check_complete(state_dict: dict, prefix: str, callers_name) -> None:
    """Raise a ValueError naming (in the caller's naming) each missing, extra or misshapen key."""
    expected = _reference_model(state_dict, prefix, callers_name).state_dict()
    missing = [callers_name(k) for k in expected if k not in state_dict]
    extra = [callers_name(k) for k in state_dict if k not in expected]
    if missing or extra:
        raise ValueError(
            f"state dict does not fit the structure: missing {missing}, unexpected {extra}"
        )
    for key, tensor in expected.items():
        if state_dict[key].shape != tensor.shape:
            raise ValueError(
                f"{callers_name(key)!r} has shape {tuple(state_dict[key].shape)}, the structure "
                f"implied by the other keys needs {tuple(tensor.shape)}"
            )


def _strip_data_parallel(state_dict: dict) -> dict:
    # nn.DataParallel and DistributedDataParallel save every key under "module."
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def from_official_state_dict(state_dict: dict) -> dict:
    """The official EMANet's (or its ResNet backbone's) ``state_dict`` in this package's names.

    Parameters
    ----------
    state_dict : dict of str -> Tensor
        Keys as the official ``EMANet`` (``extractor.*``, ``fc0.*``, ``emau.*``, ``fc1.*``,
        ``fc2.*``) or its deep-stem ``ResNet`` (``conv1.0.*``, ``layer1.*`` ..., ``fc.*``);
        a ``module.`` prefix on every key (DataParallel) is removed.

    Returns
    -------
    dict
        Loads with ``load_state_dict`` into :class:`EMANet` (or :class:`ResNet`,
        ``deep_stem=True``) of the same depth and widths. The bases ``emau.mu`` (1, C, K)
        become ``attention.mu`` (K, C); every other tensor is passed on as it is.

    Raises
    ------
    ValueError
        A key that is no official name, a missing key, a shape that does not fit.
    """
    state_dict = _strip_data_parallel(state_dict)
    ours = ("backbone.", "fc0.", "attention.", "fc1.", "fc2.")
    if "attention.mu" in state_dict or all(k.startswith(ours) for k in state_dict):
        raise ValueError("this state dict is already in this package's names (backbone.*, "
                         "attention.*), not the official EMANet's: load it directly with "
                         "model.load_state_dict(state_dict)")
    if "emau.mu" not in state_dict and "extractor.0.0.weight" not in state_dict:
        if "conv1.0.weight" not in state_dict and "layer1.0.conv1.weight" not in state_dict:
            starts = sorted({".".join(k.split(".")[:2]) for k in state_dict})
            raise ValueError(
                "not the official EMANet's state dict nor its ResNet's: no key 'emau.mu', "
                f"'extractor.0.0.weight' or 'conv1.0.weight' (its keys begin {starts[:6]}"
                f"{' ...' if len(starts) > 6 else ''})"
            )
        _check_complete(state_dict, "", str)  # a backbone: same names here
        return state_dict
    converted = {_rename(k, official_to_ours=True): v for k, v in state_dict.items()}
    mu = _shape(state_dict, "emau.mu")
    if len(mu) != 3 or mu[0] != 1:
        raise ValueError(f"'emau.mu' must have the official shape (1, C, K), got {tuple(mu)}")
    converted["attention.mu"] = state_dict["emau.mu"][0].T.contiguous()  # (1, C, K) -> (K, C)
    _check_complete(converted, "backbone.", lambda k: _rename(k, official_to_ours=False))
    return converted


def to_official_state_dict(state_dict: dict) -> dict:
    """The inverse of :func:`from_official_state_dict`: this package's names -> the official.

    ``state_dict`` is an :class:`EMANet` with the EMAU head and a deep-stem bottleneck
    ResNet (``model.state_dict()``), or such a ResNet alone. Raises a ValueError naming any
    key that does not fit.
    """
    state_dict = _strip_data_parallel(state_dict)
    if not any(k.startswith("backbone.") for k in state_dict):
        _check_complete(state_dict, "", str)
        return state_dict
    mu = _shape(state_dict, "attention.mu")
    if len(mu) != 2:
        raise ValueError(f"'attention.mu' must have shape (K, C), got {tuple(mu)}")
    _check_complete(state_dict, "backbone.", str)
    converted = {_rename(k, official_to_ours=False): v for k, v in state_dict.items()}
    converted["emau.mu"] = state_dict["attention.mu"].T.unsqueeze(0).contiguous()  # (1, C, K)
    return converted


def load_official_checkpoint(path: str | os.PathLike) -> dict:
    """Read an official EMANet checkpoint file -> ``state_dict`` in this package's names.

    The official training script saves ``{"net": state_dict, "step": int}``; a file holding
    the ``state_dict`` itself, or one under another usual key (``"state_dict"``, ``"model"``,
    ``"model_state_dict"``), is read too. Loaded with ``weights_only=True`` on the CPU.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        One line naming the file: not a PyTorch checkpoint (random bytes, text, a damaged
        file), a pickled object other than tensors and containers, no state dict inside,
        or a state dict that is not the official EMANet's (the key at fault by its official
        name).
    """
    state_dict = unwrap_state_dict(read_weights(path), path)
    try:
        return from_official_state_dict(state_dict)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
