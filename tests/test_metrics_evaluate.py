"""Inference and evaluation: single-scale, multi-scale and flips, checked against direct sums."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from em_tutorial.segmentation import evaluate, predict_probabilities


class Threshold(torch.nn.Module):
    """Class 1 where channel 0 is positive, else class 0: logits (-s x0, s x0)."""

    def __init__(self, sign=1.0):
        super().__init__()
        self.sign = sign

    def forward(self, x):
        channel = x[:, :1] * 50.0 * self.sign  # (B, 1, H, W)
        return torch.cat([-channel, channel], dim=1)  # (B, 2, H, W)


class Pairs:
    """Two images whose label is 1 exactly where channel 0 is positive, with ignored pixels."""

    num_classes = 2
    ignore_index = 255

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
        self.labels = (self.images[:, 0] > 0).astype(np.int64)
        self.labels[:, 0, 0] = 255

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def test_evaluate_perfect_and_inverted_models():
    data = Pairs()
    perfect = evaluate(Threshold(), data, batch_size=2)
    assert perfect.mean_iou() == 1.0
    assert perfect.matrix.sum() == 2 * 6 * 7 - 2  # the two ignored pixels are left out
    inverted = evaluate(Threshold(-1.0), data)
    np.testing.assert_array_equal(np.diag(inverted.matrix), [0, 0])
    # Flips and scale 1 change nothing for a per-pixel model.
    assert evaluate(Threshold(), data, scales=(1.0,), flip=True).mean_iou() == 1.0


def test_multi_scale_flip_equals_the_direct_average():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 5, 3, padding=1))
    model.eval()
    images = torch.randn(2, 3, 9, 11)
    scales = (0.5, 1.0, 1.5)
    got = predict_probabilities(model, images, scales, flip=True)

    expected = torch.zeros(2, 5, 9, 11)
    with torch.no_grad():
        for s in scales:
            size = (round(9 * s), round(11 * s))
            scaled = images if s == 1.0 else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            plain = model(scaled).softmax(1)
            mirrored = model(scaled.flip(3)).softmax(1).flip(3)
            for p in (plain, mirrored):
                expected += F.interpolate(p, size=(9, 11), mode="bilinear", align_corners=False) / 6
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 9, 11), rtol=1e-6, atol=1e-6)
    single = predict_probabilities(model, images)
    with torch.no_grad():
        torch.testing.assert_close(single, model(images).softmax(1))
    with pytest.raises(ValueError, match="scales"):
        predict_probabilities(model, images, scales=(0.0,))
