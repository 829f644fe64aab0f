"""The dilated ResNet backbone and EMANet: structure, shapes, training step, precision."""

import math

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from em_tutorial.nn import (  # noqa: E402
    EMAU,
    EMANet,
    ImagePooling2d,
    NonLocal2d,
    ResNet,
    emanet_resnet101,
    emanet_tiny,
    param_groups,
    resnet50,
    resnet101,
    resnet152,
)


def _ceil_halvings(size, times):
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


# --- backbone ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "constructor, torchvision_count",
    [(resnet50, 25_557_032), (resnet101, 44_549_160), (resnet152, 60_192_808)],
)
def test_plain_stem_resnets_have_torchvision_parameter_counts(constructor, torchvision_count):
    """torchvision.models.resnet{50,101,152}() have exactly these many parameters."""
    model = constructor(deep_stem=False, num_classes=1000, output_stride=32)
    assert sum(p.numel() for p in model.parameters()) == torchvision_count


def test_plain_stem_state_dict_uses_torchvision_names():
    state = resnet50(deep_stem=False, num_classes=1000).state_dict()
    # Shapes as in torchvision's resnet50 (a ResNet v1.5 with the stride on the 3x3 conv).
    expected_shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.bias": (1024,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    for name, shape in expected_shapes.items():
        assert tuple(state[name].shape) == shape, name
    assert len(state) == 320  # torchvision resnet50().state_dict() has 320 entries


def test_classifier_weights_load_into_emanet_backbone(tmp_path):
    """An ImageNet-style classifier state_dict (with fc.*) loads into EMANet's backbone."""
    small = {"layers": (1, 2, 1, 1), "base_width": 8, "deep_stem": False}
    weights = ResNet(**small, num_classes=10, output_stride=32).state_dict()
    torch.save(weights, tmp_path / "classifier.pt")
    for source in (weights, tmp_path / "classifier.pt"):
        model = EMANet(3, backbone="resnet50", pretrained_backbone=source, backbone_kwargs=small,
                       ema_channels=16, num_bases=4, head_channels=8)
        for name, value in model.backbone.state_dict().items():
            assert torch.equal(value, weights[name]), name
    with pytest.raises(ValueError, match="deep_stem"):  # deep stem: other names and shapes
        EMANet(3, backbone="resnet50", pretrained_backbone=weights,
               backbone_kwargs={**small, "deep_stem": True})


def test_multi_grid_dilations_are_the_official_ones():
    def dilations(layer):
        return [block.conv2.dilation[0] for block in layer]

    os8 = ResNet(layers=(1, 1, 4, 3), base_width=8, output_stride=8)
    assert dilations(os8.layer3) == [1, 2, 2, 2] and dilations(os8.layer4) == [2, 8, 16]
    assert os8.layer3[0].conv2.stride == (1, 1) and os8.layer4[0].conv2.stride == (1, 1)
    os16 = ResNet(layers=(1, 1, 2, 3), base_width=8, output_stride=16)
    assert dilations(os16.layer3) == [1, 1] and dilations(os16.layer4) == [1, 4, 8]
    assert os16.layer3[0].conv2.stride == (2, 2)
    os32 = ResNet(layers=(1, 1, 1, 3), base_width=8, output_stride=32)
    assert dilations(os32.layer4) == [1, 1, 1]


def test_deep_stem_structure():
    model = ResNet(layers=(1, 1, 1, 1), base_width=8, stem_width=16, deep_stem=True)
    convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.out_channels for c in convs] == [16, 16, 32] and model.bn1.num_features == 32


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("block", ["bottleneck", "basic"])
@pytest.mark.parametrize("size", [(64, 64), (65, 47)])
def test_backbone_feature_shapes(output_stride, block, size):
    model = ResNet(layers=(1, 1, 1, 1), block=block, base_width=4, output_stride=output_stride)
    features = model(torch.randn(1, 3, *size))
    halvings = int(math.log2(output_stride))
    expected = tuple(_ceil_halvings(s, halvings) for s in size)
    assert features.shape == (1, model.out_channels, *expected)
    assert model.out_channels == 8 * 4 * (4 if block == "bottleneck" else 1)


def test_resnet_bad_arguments():
    with pytest.raises(ValueError, match="output_stride"):
        ResNet(output_stride=4)
    with pytest.raises(ValueError, match="block"):
        ResNet(block="wide")
    with pytest.raises(ValueError, match="layers"):
        ResNet(layers=(1, 1, 1))


# --- EMANet ------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("size", [(64, 64), (65, 65), (63, 70)])
def test_emanet_output_shapes(output_stride, size):
    model = emanet_tiny(5, output_stride=output_stride).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 5, *size)
    h, w = (_ceil_halvings(s, int(math.log2(output_stride))) for s in size)
    assert model.emau.last_z.shape == (2, h * w, 16)


def test_emanet_tiny_trains_on_cpu():
    torch.manual_seed(0)
    model = emanet_tiny(4).train()
    images, labels = torch.randn(2, 3, 48, 48), torch.randint(0, 4, (2, 48, 48))
    labels[:, :5] = 255  # the ignore label
    optimizer = torch.optim.SGD(param_groups(model, lr=0.01, weight_decay=1e-4), momentum=0.9)
    bases_before = model.emau.mu.clone()
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(images), labels, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert not torch.equal(model.emau.mu, bases_before)
    without_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert without_grad == {"attention.conv_in.weight", "attention.conv_in.bias"}


def test_emanet_tiny_size_and_knobs():
    model = emanet_tiny(21)
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert isinstance(model.emau, EMAU) and model.emau.num_bases == 16
    custom = emanet_tiny(3, ema_channels=32, num_bases=8, num_stages=2, base_width=4,
                         layers=(1, 2, 1, 1), head_channels=16, deep_stem=False)
    assert custom.emau.channels == 32 and custom.emau.num_stages == 2
    assert len(custom.backbone.layer2) == 2 and custom.backbone.out_channels == 4 * 8 * 4
    assert custom(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("head, head_cls", [("nonlocal", NonLocal2d), (None, nn.Identity),
                                            ("none", nn.Identity), ("pooling", ImagePooling2d)])
def test_ablation_heads(head, head_cls):
    model = emanet_tiny(3, head=head)
    assert isinstance(model.attention, head_cls) and model.emau is None
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 3, 40, 40)


def test_emanet_autocast_bfloat16_close_to_float32():
    torch.manual_seed(0)
    model = emanet_tiny(5).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images)
    assert bool(torch.isfinite(low).all())
    assert (low.float() - reference).norm() / reference.norm() < 5e-2


def test_emanet_bad_input():
    model = emanet_tiny(3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="3-channel"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="head"):
        emanet_tiny(3, head="aspp")
    with pytest.raises(ValueError, match="backbone"):
        EMANet(3, backbone="resnet77")


def test_emanet_resnet101_is_the_official_architecture():
    """Structure and size only: no forward pass of the full network in the test suite."""
    model = emanet_resnet101(21)
    assert isinstance(model.emau, EMAU)
    assert (model.emau.channels, model.emau.num_bases, model.emau.num_stages) == (512, 64, 3)
    assert model.backbone.output_stride == 8 and isinstance(model.backbone.conv1, nn.Sequential)
    assert len(model.backbone.layer3) == 23
    assert model.fc0[0].kernel_size == (3, 3) and model.fc0[0].in_channels == 2048
    assert model.fc1[0].out_channels == 256 and model.dropout.p == 0.1
    head = sum(p.numel() for m in model.head_modules() for p in m.parameters())
    # 3x3 2048->512, EMAU(512), 3x3 512->256, 1x1 256->21, with BN
    assert head == 9_437_184 + 1_024 + (262_656 + 262_144 + 1_024) + 1_179_648 + 512 + 5_397


def test_param_groups_follow_the_official_recipe():
    model = emanet_tiny(3)
    groups = param_groups(model, lr=0.01, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"weights", "norm_weights", "biases"}
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable) == len(list(model.parameters())) - 2
    # The EMAU's frozen first convolution is in no group.
    assert not {id(p) for p in model.emau.conv_in.parameters()} & set(ids)
    assert by_name["weights"]["weight_decay"] == 1e-4 and by_name["weights"]["lr"] == 0.01
    assert by_name["norm_weights"]["weight_decay"] == 0.0 and by_name["norm_weights"]["lr"] == 0.01
    assert by_name["biases"]["weight_decay"] == 0.0 and by_name["biases"]["lr"] == 0.02
    bias_ids = {id(p) for p in by_name["biases"]["params"]}
    assert {id(model.fc2.bias), id(model.backbone.bn1.bias)} <= bias_ids
    assert id(model.backbone.bn1.weight) in {id(p) for p in by_name["norm_weights"]["params"]}
    assert all(p.ndim == 4 for p in by_name["weights"]["params"])
    torch.optim.SGD(groups, momentum=0.9)  # accepted as is


@pytest.mark.slow
def test_emanet_resnet101_forward_small_input():
    model = emanet_resnet101(21).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 65, 65))
    assert logits.shape == (1, 21, 65, 65) and bool(torch.isfinite(logits).all())
    assert model.emau.last_z.shape == (1, 9 * 9, 64)
