"""Inference and evaluation: single-scale, multi-scale and flips, checked against direct sums
and against scikit-learn's confusion matrix."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from em_tutorial.segmentation import evaluate, predict_probabilities


class Threshold(torch.nn.Module):
    """Class 1 where channel 0 is positive, else class 0: logits (-s x0, s x0)."""

    def __init__(self, sign=1.0):
        super().__init__()
        self.sign = sign

    def forward(self, x):
        channel = x[:, :1] * 50.0 * self.sign  # (B, 1, H, W)
        return torch.cat([-channel, channel], dim=1)  # (B, 2, H, W)


class Segmentations:
    """A data set of ``(image (3, H, W), label (H, W))`` pairs held in two arrays."""

    ignore_index = 255

    def __init__(self, images, labels, num_classes):
        self.images, self.labels, self.num_classes = images, labels, num_classes

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def pairs():
    """Two images whose label is 1 exactly where channel 0 is positive, with ignored pixels."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    labels = (images[:, 0] > 0).astype(np.int64)
    labels[:, 0, 0] = 255
    return Segmentations(images, labels, num_classes=2)


def test_evaluate_perfect_and_inverted_models():
    data = pairs()
    perfect = evaluate(Threshold(), data, batch_size=2)
    assert perfect.mean_iou() == 1.0
    assert perfect.matrix.sum() == 2 * 6 * 7 - 2  # the two ignored pixels are left out
    inverted = evaluate(Threshold(-1.0), data)
    np.testing.assert_array_equal(np.diag(inverted.matrix), [0, 0])
    # Flips and scale 1 change nothing for a per-pixel model.
    assert evaluate(Threshold(), data, scales=(1.0,), flip=True).mean_iou() == 1.0


def test_confusion_matrix_equals_scikit_learn():
    # A random 1x1 convolution over 4 classes, 3 images in batches of 2 (the last one short),
    # labels drawn independently of the predictions, with ignored pixels.
    rng = np.random.default_rng(1)
    images = rng.standard_normal((3, 3, 5, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=(3, 5, 8))
    labels[rng.random(labels.shape) < 0.2] = 255
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, kernel_size=1)
    got = evaluate(model, Segmentations(images, labels, num_classes=4), batch_size=2).matrix

    with torch.no_grad():
        predictions = model(torch.from_numpy(images)).argmax(dim=1).numpy()  # (3, 5, 8)
    keep = labels != 255
    expected = sklearn_confusion_matrix(labels[keep], predictions[keep], labels=range(4))
    assert len(np.unique(predictions[keep])) >= 3  # the model is not constant: a real check
    np.testing.assert_array_equal(got, expected)


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
