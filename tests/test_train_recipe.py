"""The official recipe's switches in training and evaluation: the loss over all pixels, discrete
scales, 8k + 1 validation padding, BatchNorm momentum and initialisation, the authors' weights,
and the refusal of a checkpoint written before the EMAU's first convolution was frozen."""

import json
import math

import numpy as np
import pytest
import torch
from test_data_official_recipe import _drawn_scale
from test_data_voc import voc_root  # noqa: F401  (a fixture: a tiny VOC-layout folder)
from test_train import _config

from em_tutorial import nn as em_nn
from em_tutorial.cli import main
from em_tutorial.segmentation import (
    RECIPES,
    TrainConfig,
    build_datasets,
    build_model,
    build_val_set,
    evaluate,
    train,
)
from em_tutorial.segmentation.data import OFFICIAL_SCALES
from em_tutorial.segmentation.loss import segmentation_loss


def test_loss_normalisations_by_hand():
    # One 2x2 crop, 3 classes, one pixel ignored: l_p = log(sum_c exp(a_pc)) - a_p,y_p.
    logits = [[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.5, 0.5, -1.0], [3.0, 0.0, 1.0]]  # (pixel, c)
    labels = [2, 0, 255, 1]
    losses = [
        math.log(sum(math.exp(a) for a in row)) - row[y]
        for row, y in zip(logits, labels)
        if y != 255
    ]
    as_tensor = torch.tensor(logits, dtype=torch.float64).T.reshape(1, 3, 2, 2)  # (B, C, H, W)
    label_tensor = torch.tensor(labels).reshape(1, 2, 2)  # (B, H, W)
    official = segmentation_loss(as_tensor, label_tensor, 255, "all")
    labelled = segmentation_loss(as_tensor, label_tensor, 255, "labelled")
    assert official.item() == pytest.approx(sum(losses) / 4, rel=1e-12)  # all 4 pixels
    assert labelled.item() == pytest.approx(sum(losses) / 3, rel=1e-12)  # the 3 labelled
    with pytest.raises(ValueError, match="loss normalization must be one of"):
        segmentation_loss(as_tensor, label_tensor, 255, "mean")


def test_class_balanced_loss_by_hand():
    # Classes 0 (two pixels) and 2 (one pixel) present, one pixel ignored: each class's mean
    # counts once, L = ((l_1 + l_2) / 2 + l_0) / 2 -- not the pixel mean (l_0 + l_1 + l_2) / 3.
    logits = [[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.5, 0.5, -1.0], [3.0, 0.0, 1.0]]  # (pixel, c)
    labels = [2, 0, 0, 255]
    l0, l1, l2 = (math.log(sum(math.exp(a) for a in row)) - row[y]
                  for row, y in zip(logits[:3], labels[:3]))  # fmt: skip
    as_tensor = torch.tensor(logits, dtype=torch.float64).T.reshape(1, 3, 2, 2)  # (B, C, H, W)
    label_tensor = torch.tensor(labels).reshape(1, 2, 2)  # (B, H, W)
    balanced = segmentation_loss(as_tensor, label_tensor, 255, "classes")
    assert balanced.item() == pytest.approx(((l1 + l2) / 2 + l0) / 2, rel=1e-12)
    nothing = torch.full((1, 2, 2), 255)
    assert segmentation_loss(as_tensor, nothing, 255, "classes").item() == 0.0


def test_recipes_official_for_voc_and_unchanged_for_digits():
    voc = TrainConfig(dataset="voc", data_root="/data/voc")
    assert voc.model_kwargs == {"bn_momentum": 3e-4, "init": "official"}
    assert (voc.loss_normalization, voc.normalization, voc.val_padding) == ("all", "official", True)
    assert voc.train_scales == OFFICIAL_SCALES
    digits = TrainConfig()
    assert (digits.loss_normalization, digits.normalization, digits.val_padding) == (
        "labelled", "imagenet", False)  # fmt: skip
    assert "bn_momentum" not in digits.model_kwargs and "init" not in digits.model_kwargs
    with pytest.raises(ValueError, match="normalization must be one of"):
        TrainConfig(normalization="std")
    with pytest.raises(ValueError, match="train_scales must be 'uniform' or factors"):
        TrainConfig(train_scales="official")


def test_voc_recipe_builds_bn_momentum_and_official_init():
    # The VOC recipe's model_kwargs on the tiny backbone (the same code path as ResNet-101).
    config = TrainConfig(dataset="voc", data_root="/data/voc", model="tiny")
    torch.manual_seed(0)
    model = build_model(config, 21)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == em_nn.OFFICIAL_BN_MOMENTUM for m in norms)
    # Official init: fc2 keeps PyTorch's default (|w| <= 1/sqrt(fan_in)), the EMAU's first
    # convolution its default (non-zero) bias; the Kaiming init draws fc2 from
    # N(0, sqrt(2 / out_channels)) and zeroes that bias.
    fan_in = model.fc2.weight[0].numel()
    assert model.fc2.weight.abs().max() <= 1 / math.sqrt(fan_in)
    assert model.attention.conv_in.bias.abs().max() > 0
    kaiming = build_model(TrainConfig(dataset="voc", data_root="/data/voc", model="tiny",
                                      model_kwargs={}), 21)  # fmt: skip
    assert kaiming.fc2.weight.abs().max() > 1 / math.sqrt(fan_in)
    assert not kaiming.attention.conv_in.bias.any()
    assert all(m.momentum == 0.1 for m in kaiming.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_voc_training_draws_scales_only_from_the_discrete_set(voc_root):
    official, _ = build_datasets(TrainConfig(dataset="voc", data_root=str(voc_root), crop_size=48))
    drawn = {round(_drawn_scale(official.transform, seed), 6) for seed in range(100)}
    assert drawn == set(OFFICIAL_SCALES)
    uniform, _ = build_datasets(TrainConfig(dataset="voc", data_root=str(voc_root), crop_size=48,
                                            train_scales="uniform"))  # fmt: skip
    assert uniform.transform.scales is None
    assert len({_drawn_scale(uniform.transform, seed) for seed in range(30)}) > 10


class PixelwiseClassifier(torch.nn.Module):
    """A 1x1 convolution: each pixel's logits depend on that pixel alone, not on the size."""

    def __init__(self, num_classes):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return self.conv(x)  # (B, classes, H, W)


def test_validation_padding_leaves_the_scores_unchanged(voc_root):
    settings = dict(dataset="voc", data_root=str(voc_root))
    padded = build_val_set(TrainConfig(**settings))
    plain = build_val_set(TrainConfig(**settings, val_padding=False))
    (image, label), (plain_image, plain_label) = padded[0], plain[0]
    assert plain_image.shape[1:] == (38, 36) and image.shape[1:] == (41, 41)  # 8 * 5 + 1
    assert (label[38:] == 255).all() and (label[:, 36:] == 255).all()
    model = PixelwiseClassifier(padded.num_classes)
    with_padding, without = evaluate(model, padded), evaluate(model, plain)
    # The padded pixels are labelled 255 and never counted: the same matrix, the same mIoU.
    np.testing.assert_array_equal(with_padding.matrix, without.matrix)
    assert with_padding.matrix.sum() == (plain_label != 255).sum()
    assert with_padding.summary()["miou"] == without.summary()["miou"]


@pytest.mark.slow  # builds EMANet-50 twice
def test_eval_official_weights_file(voc_root, tmp_path, capsys):
    torch.manual_seed(0)
    model = em_nn.emanet_resnet50(21, init="official").eval()
    weights = tmp_path / "official.pth"
    official = em_nn.to_official_state_dict(model.state_dict())
    torch.save({"net": official, "step": 30000}, weights)
    output = tmp_path / "metrics.json"
    assert main(["eval", "--official-weights", str(weights), "--model", "resnet50", "--data-root",
                 str(voc_root), "--no-progress", "--output", str(output)]) == 0  # fmt: skip
    assert "mIoU" in capsys.readouterr().out
    metrics = json.loads(output.read_text())
    # The same model evaluated directly on the VOC recipe's validation set (official input).
    val_set = build_val_set(TrainConfig(dataset="voc", data_root=str(voc_root)))
    expected = evaluate(model, val_set).summary(val_set.class_names)
    assert metrics["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert metrics["iou"] == pytest.approx(expected["iou"], abs=1e-12)
    del official["emau.conv1.bias"]
    torch.save({"net": official, "step": 1}, weights)
    assert main(["eval", "--official-weights", str(weights), "--model", "resnet50",
                 "--data-root", str(voc_root)]) == 1  # fmt: skip
    assert "emau.conv1.bias" in capsys.readouterr().err


def test_cli_recipe_switches_reach_the_config(monkeypatch, tmp_path):
    seen = {}

    def fake_train(config):
        seen["config"] = config
        return {"model": None, "metrics": None, "checkpoint": "c", "log": "l"}

    monkeypatch.setattr("em_tutorial.segmentation.train", fake_train)
    argv = ["train", "--bn-momentum", "0.01", "--bases-update", "mmseg", "--loss-normalization",
            "all", "--normalization", "official", "--val-padding",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    config = seen["config"]
    assert config.model_kwargs == {**RECIPES["digits"]["model_kwargs"], "bn_momentum": 0.01,
                                   "bases_update": "mmseg"}  # fmt: skip
    assert (config.loss_normalization, config.normalization, config.val_padding) == (
        "all", "official", True)  # fmt: skip
    main(["train", "--dataset", "voc", "--data-root", "/v", "--train-scales", "uniform",
          "--no-val-padding", "--init", "kaiming", "--out", str(tmp_path)])  # fmt: skip
    config = seen["config"]
    assert (config.train_scales, config.val_padding) == ("uniform", False)
    assert config.model_kwargs == {"bn_momentum": 3e-4, "init": "kaiming"}


def test_resuming_a_checkpoint_from_before_the_freeze_is_refused(tmp_path):
    train(_config(tmp_path, iterations=2, stop_at=1))
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    # Its optimiser as the code before the freeze built it: the EMAU's first conv trained too.
    model = build_model(_config(tmp_path, "other"), 11)
    model.attention.conv_in.requires_grad_(True)
    old_optimizer = torch.optim.SGD(em_nn.param_groups(model, 0.1, 1e-4), momentum=0.9)
    state["optimizer"] = old_optimizer.state_dict()
    for name in ("loss_normalization", "train_scales", "normalization", "val_padding"):
        del state["config"][name]  # nor did its settings have the recipe switches
    torch.save(state, path)
    with pytest.raises(ValueError, match="before the EMAU's first convolution was frozen"):
        train(_config(tmp_path, iterations=2, resume=True))
