"""The authors' EMANet checkpoints: names and layouts converted both ways, strictly, and
EMANet-101's structure against the official network's, so that any drift shows."""

import argparse
import math
import re
import traceback

import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from em_tutorial.nn import (  # noqa: E402
    emanet_resnet50,
    emanet_resnet101,
    emanet_tiny,
    from_official_state_dict,
    load_official_checkpoint,
    to_official_state_dict,
)


# --- the official network described from its structure (names and shapes only) -----------


def _bn(prefix, channels):
    names = ("weight", "bias", "running_mean", "running_var")
    shapes = {f"{prefix}.{n}": (channels,) for n in names}
    return {**shapes, f"{prefix}.num_batches_tracked": ()}


def _official_backbone(prefix, layers, width, stem):
    """Deep stem (3x3 convs stem, stem, 2 stem; BN after the first two, BN 'bn1' after the
    third), then bottleneck stages of widths w, 2w, 4w, 8w (expansion 4), a 1x1 convolution
    and BN in the first block of every stage as the shortcut."""
    shapes = {f"{prefix}conv1.0.weight": (stem, 3, 3, 3), **_bn(f"{prefix}conv1.1", stem),
              f"{prefix}conv1.3.weight": (stem, stem, 3, 3), **_bn(f"{prefix}conv1.4", stem),
              f"{prefix}conv1.6.weight": (2 * stem, stem, 3, 3), **_bn(f"{prefix}bn1", 2 * stem)}
    channels = 2 * stem
    for stage, blocks in enumerate(layers, start=1):
        planes = width * 2 ** (stage - 1)
        for i in range(blocks):
            block = f"{prefix}layer{stage}.{i}"
            shapes.update({f"{block}.conv1.weight": (planes, channels, 1, 1),
                           **_bn(f"{block}.bn1", planes),
                           f"{block}.conv2.weight": (planes, planes, 3, 3),
                           **_bn(f"{block}.bn2", planes),
                           f"{block}.conv3.weight": (4 * planes, planes, 1, 1),
                           **_bn(f"{block}.bn3", 4 * planes)})
            if i == 0:
                shapes[f"{block}.downsample.0.weight"] = (4 * planes, channels, 1, 1)
                shapes.update(_bn(f"{block}.downsample.1", 4 * planes))
            channels = 4 * planes
    return shapes, channels


def _official_emanet(layers, width, stem, classes, ema=512, bases=64, head=256):
    """Official EMANet names: the backbone inside an nn.Sequential 'extractor' (0 = conv1,
    1 = bn1, 2 = relu, 3 = maxpool, 4..7 = layer1..4); fc0 = conv/bn; emau = mu (1, C, K),
    conv1 (bias), conv2 = Sequential(conv, bn); fc1 = Sequential(conv/bn, dropout); fc2."""
    backbone, channels = _official_backbone("", layers, width, stem)
    renames = {"conv1.": "extractor.0.", "bn1.": "extractor.1.",
               **{f"layer{i}.": f"extractor.{i + 3}." for i in range(1, 5)}}
    shapes = {}
    for key, shape in backbone.items():
        old = next(p for p in renames if key.startswith(p))
        shapes[renames[old] + key[len(old):]] = shape
    shapes.update({"fc0.conv.weight": (ema, channels, 3, 3), **_bn("fc0.bn", ema),
                   "emau.mu": (1, ema, bases), "emau.conv1.weight": (ema, ema, 1, 1),
                   "emau.conv1.bias": (ema,), "emau.conv2.0.weight": (ema, ema, 1, 1),
                   **_bn("emau.conv2.1", ema), "fc1.0.conv.weight": (head, ema, 3, 3),
                   **_bn("fc1.0.bn", head), "fc2.weight": (classes, head, 1, 1),
                   "fc2.bias": (classes,)})
    return shapes


def _tensors(shapes, device="cpu"):
    generator = torch.Generator().manual_seed(0)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: torch.randn(s, generator=generator) if s else torch.tensor(7)
            for k, s in shapes.items()}


TINY = {"layers": (1, 1, 1, 1), "width": 8, "stem": 8, "classes": 5, "ema": 16, "bases": 4,
        "head": 8}
TINY_KWARGS = {"ema_channels": 16, "num_bases": 4, "head_channels": 8}


def _tiny_official():
    return _tensors(_official_emanet(**TINY))


# --- conversion ---------------------------------------------------------------------------


def test_official_state_dict_loads_and_round_trips():
    official = _tiny_official()
    ours = from_official_state_dict(official)
    model = emanet_tiny(5, **TINY_KWARGS)
    model.load_state_dict(ours)  # strict: every key and shape fits
    # The bases: (1, C, K) there, (K, C) here.
    assert torch.equal(model.emau.mu, official["emau.mu"][0].T)
    assert torch.equal(model.emau.conv_in.weight, official["emau.conv1.weight"])
    layer4 = official["extractor.7.0.conv3.weight"]
    assert torch.equal(model.backbone.layer4[0].conv3.weight, layer4)
    assert torch.equal(model.fc1[1].running_var, official["fc1.0.bn.running_var"])
    back = to_official_state_dict(model.state_dict())
    assert list(back) == list(official)
    assert all(torch.equal(back[k], official[k]) for k in official)
    again = from_official_state_dict(back)
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())


def test_backbone_alone_keeps_its_names():
    shapes, _ = _official_backbone("", (1, 1, 1, 1), 8, 8)
    backbone = _tensors({**shapes, "fc.weight": (10, 256), "fc.bias": (10,)})
    assert from_official_state_dict(backbone).keys() == backbone.keys()
    model = emanet_tiny(5, pretrained_backbone=from_official_state_dict(backbone))
    assert torch.equal(model.backbone.conv1[6].weight, backbone["conv1.6.weight"])
    assert to_official_state_dict(model.backbone.state_dict()).keys() == shapes.keys()


def test_data_parallel_prefix_and_checkpoint_file(tmp_path):
    official = _tiny_official()
    path = tmp_path / "step_30000.pth"
    # The official training script saves the state dict under "net", with the step.
    torch.save({"net": {f"module.{k}": v for k, v in official.items()}, "step": 30000}, path)
    assert load_official_checkpoint(path).keys() == from_official_state_dict(official).keys()
    model = emanet_tiny(5, weights=path, **TINY_KWARGS)
    assert torch.equal(model.fc2.bias, official["fc2.bias"])
    with pytest.raises(ValueError, match=r"does not fit this EMANet: this checkpoint has 5 "
                                         r"classes, the model has 3 classes$"):
        emanet_tiny(3, weights=path, **TINY_KWARGS)


def _truncated_checkpoint(path):
    torch.save(_tiny_official(), path)
    path.write_bytes(path.read_bytes()[:300])


NOT_CHECKPOINTS = {
    "random bytes": lambda path: path.write_bytes(bytes(range(256)) * 4),
    "a short binary": lambda path: path.write_bytes(b"\x00\x01 not a checkpoint"),
    "JSON": lambda path: path.write_text('{"net": {}}'),
    "a cut zip": _truncated_checkpoint,
}
LOADERS = {
    "load_official_checkpoint": load_official_checkpoint,
    "weights=": lambda path: emanet_tiny(5, weights=path, **TINY_KWARGS),
    "pretrained_backbone=": lambda path: emanet_tiny(5, pretrained_backbone=path),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("content", NOT_CHECKPOINTS)
def test_a_file_that_is_no_checkpoint_is_named_in_one_line(tmp_path, content, loader):
    """PyTorch's advice to retry with weights_only=False (running the file's code) never shows,
    neither in the message nor in a chained exception of the traceback."""
    path = tmp_path / "weights.pth"
    NOT_CHECKPOINTS[content](path)
    with pytest.raises(ValueError) as caught:
        LOADERS[loader](path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not a PyTorch checkpoint, or a damaged one")
    assert "\n" not in message
    shown = "".join(traceback.format_exception(caught.value))
    assert "weights_only" not in shown and "Weights only load failed" not in shown


@pytest.mark.parametrize("loader", LOADERS)
def test_a_pickled_object_is_named_not_run(tmp_path, loader):
    path = tmp_path / "weights.pth"
    torch.save({"net": _tiny_official(), "args": argparse.Namespace(lr=0.01)}, path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} holds a pickled "
                                         r"argparse.Namespace object; only tensors") as caught:
        LOADERS[loader](path)
    assert "weights_only" not in "".join(traceback.format_exception(caught.value))


def test_a_missing_file_stays_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "absent.pth")


@pytest.mark.parametrize("wrapper", ["net", "state_dict", "model", "model_state_dict"])
def test_wrapped_checkpoints_are_unwrapped(tmp_path, wrapper):
    official = _tiny_official()
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: official, "meta": {"epoch": 3}}, path)
    model = emanet_tiny(5, weights=path, **TINY_KWARGS)
    assert torch.equal(model.fc2.weight, official["fc2.weight"])
    shapes, _ = _official_backbone("", (1, 1, 1, 1), 8, 8)
    backbone = _tensors(shapes)
    torch.save({wrapper: backbone, "epoch": 3}, path)
    model = emanet_tiny(5, pretrained_backbone=path)
    assert torch.equal(model.backbone.conv1[0].weight, backbone["conv1.0.weight"])


@pytest.mark.parametrize(
    "content, match",
    [({"epoch": 3, "optimizer": {"lr": 0.1}}, r"holds a dict with keys \['epoch', 'optimizer'\] "
                                              r"and no state dict"),
     ([1, 2], r"holds a list, not a state dict"),
     # this package's own names under a wrapper: said so, not "no blocks for layer1"
     ({"state_dict": "ours"}, r"already in this package's names \(backbone\.\*, attention"),
     ({"state_dict": {"backbone.stem.0.weight": torch.ones(1), "decode_head.conv.weight":
                      torch.ones(1), "auxiliary_head.conv.weight": torch.ones(1)}},
      r"not the official EMANet's state dict nor its ResNet's: .*\(its keys begin "
      r"\['auxiliary_head.conv', 'backbone.stem', 'decode_head.conv'\]")],
)
def test_what_was_found_instead_of_a_state_dict_is_said(tmp_path, content, match):
    path = tmp_path / "other.pth"
    if content == {"state_dict": "ours"}:
        content = {"state_dict": emanet_tiny(5, **TINY_KWARGS).state_dict()}
    torch.save(content, path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:? .*{match}") as caught:
        emanet_tiny(5, weights=path, **TINY_KWARGS)
    assert "no blocks for" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "removed, match",
    [(("fc0.conv.weight",), r"missing key 'fc0.conv.weight'$"),
     (("fc1.0.conv.weight",), r"missing key 'fc1.0.conv.weight'$"),
     (("extractor.0.0.weight",), r"missing key 'extractor.0.0.weight'$"),
     (("extractor.4.0.conv1.weight",), r"missing key 'extractor.4.0.conv1.weight'$"),
     ("extractor.5.", r"missing keys: no blocks for extractor.5 \(no key extractor.5.0.\*\)$")],
)
def test_a_missing_official_key_is_named_by_its_official_name(tmp_path, removed, match):
    official = _tiny_official()
    for key in [k for k in official if k.startswith(removed)]:
        del official[key]
    path = tmp_path / "official.pth"
    torch.save({"net": official}, path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {match}"):
        emanet_tiny(5, weights=path, **TINY_KWARGS)


def test_another_class_count_or_depth_is_said_in_words(tmp_path):
    """Not a load_state_dict dump: the items that differ, the checkpoint's then the model's."""
    official = _tensors(_official_emanet(**{**TINY, "layers": (3, 4, 23, 3), "classes": 21}))
    path = tmp_path / "resnet101.pth"
    torch.save({"net": official, "step": 30000}, path)
    widths = {"base_width": 8, "stem_width": 8}
    with pytest.raises(ValueError) as caught:
        emanet_resnet50(11, weights=path, **widths, **TINY_KWARGS)
    assert str(caught.value) == (
        f"{path} does not fit this EMANet: this checkpoint has ResNet-101, width 8 (deep stem) "
        "/ 21 classes, the model has ResNet-50, width 8 (deep stem) / 11 classes")
    with pytest.raises(ValueError, match=r"this checkpoint has 16 attention channels / 4 bases, "
                                         r"the model has 32 attention channels / 8 bases$"):
        emanet_resnet101(21, weights=path, **widths, **{**TINY_KWARGS, "ema_channels": 32,
                                                        "num_bases": 8})
    model = emanet_resnet101(21, weights=path, **widths, **TINY_KWARGS)  # the control
    assert torch.equal(model.fc2.bias, official["fc2.bias"])


def test_pretrained_backbone_of_another_depth_is_said_in_words():
    shapes, _ = _official_backbone("", (1, 2, 1, 1), 8, 8)
    with pytest.raises(ValueError, match=r"^pretrained_backbone: .* the weights are a ResNet "
                                         r"\(1, 2, 1, 1\) bottleneck, width 8 \(deep stem\), "
                                         r"this backbone is a ResNet \(1, 1, 1, 1\)"):
        emanet_tiny(5, pretrained_backbone=_tensors(shapes))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update({"emau.conv3.weight": torch.ones(1)}), "unknown key 'emau.conv3"),
        (lambda d: d.pop("extractor.6.0.bn2.running_var"), "extractor.6.0.bn2.running_var"),
        (lambda d: d.pop("emau.conv1.bias"), r"missing \['emau.conv1.bias'\]"),
        (lambda d: d.update({"extractor.5.1.conv1.weight": torch.ones(1)}), "extractor.5.1"),
        (lambda d: d.update({"emau.mu": torch.ones(16, 4)}), r"\(1, C, K\)"),
        (lambda d: d.update({"fc1.0.bn.bias": torch.ones(9)}), "'fc1.0.bn.bias' has shape"),
        (lambda d: d.pop("emau.mu"), "missing key 'emau.mu'"),
        (lambda d: d.update({"extractor.4.a.conv1.weight": torch.ones(1)}), "extractor.4.a"),
    ],
)
def test_strict_errors_name_the_key(edit, match):
    official = _tiny_official()
    edit(official)
    with pytest.raises(ValueError, match=match):
        from_official_state_dict(official)


def test_reverse_errors_name_the_key():
    state = emanet_tiny(5, **TINY_KWARGS).state_dict()
    with pytest.raises(ValueError, match="already in this package's names"):
        from_official_state_dict(state)
    state["attention.extra"] = torch.ones(1)
    with pytest.raises(ValueError, match="attention.extra"):
        to_official_state_dict(state)
    nonlocal_head = emanet_tiny(5, head="nonlocal").state_dict()
    with pytest.raises(ValueError, match="attention.mu"):
        to_official_state_dict(nonlocal_head)


# --- EMANet-101 against the official structure --------------------------------------------


def test_emanet_resnet101_matches_official_structure():
    """659 state-dict tensors, name for name and shape for shape, and the head's size."""
    official = _official_emanet((3, 4, 23, 3), 64, 64, 21)
    assert len(official) == 659
    with torch.device("meta"):
        model = emanet_resnet101(21)
    converted = to_official_state_dict(model.state_dict())
    assert {k: tuple(v.shape) for k, v in converted.items()} == official
    ours = from_official_state_dict(_tensors(official, device="meta"))
    model.load_state_dict(ours)  # strict


def test_emanet_resnet101_head_cost():
    """Parameters and multiply-accumulates of the head on a 513x513 crop (65x65 features),
    counted from the official layer sizes: any change to the head shows here."""
    n, c, k, t = 65 * 65, 512, 64, 3
    conv_params = {"fc0": 2048 * c * 9, "emau": 2 * c * c + c, "fc1": c * 256 * 9,
                   "fc2": 256 * 21 + 21}
    bn_params = {"fc0": 2 * c, "emau": 2 * c, "fc1": 2 * 256, "fc2": 0}
    # conv: params x positions; EM: T x (x mu^T + z^T x) + reconstruction z mu = (2T + 1) NKC
    macs = {name: (p - (c if name == "emau" else 21 if name == "fc2" else 0)) * n
            for name, p in conv_params.items()}
    macs["emau"] += (2 * t + 1) * n * k * c
    with torch.device("meta"):
        model = emanet_resnet101(21).eval()
    # Shapes only (meta tensors), except the EMAU: autocast, inside it, needs a real device.
    model.attention.to_empty(device="cpu")
    for tensor in (*model.attention.parameters(), *model.attention.buffers()):
        tensor.data.fill_(0.01)
    x = torch.empty(1, 2048, 65, 65, device="meta")
    for name in ("fc0", "attention", "fc1", "fc2"):
        module = getattr(model, name)
        key = "emau" if name == "attention" else name
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            device = next(module.parameters()).device
            x = module(x if x.device == device else torch.ones(x.shape, device=device))
        assert sum(p.numel() for p in module.parameters()) == conv_params[key] + bn_params[key]
        assert math.isclose(counter.get_total_flops() / 2, macs[key], rel_tol=1e-9), name
    total_gmacs = sum(macs.values()) / 1e9
    # 39.87 (fc0) + 2.21 + 0.97 (EMAU: convolutions + EM) + 4.98 (fc1) + 0.02 (fc2)
    assert round(total_gmacs, 2) == 48.06
