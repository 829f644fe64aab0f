"""Segmentation metrics against confusion matrices and IoUs counted by hand."""

import numpy as np
import pytest

from em_tutorial.segmentation.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy

# 3 classes, a 3x4 image; 255 marks ignored pixels.
TARGET = np.array([[0, 0, 1, 1], [0, 2, 2, 255], [1, 1, 2, 255]])
PREDICTION = np.array([[0, 1, 1, 1], [0, 2, 0, 2], [1, 2, 2, 0]])
# Counted by hand over the 10 labelled pixels, rows = truth, columns = prediction:
#   truth 0 at (0,0) (0,1) (1,0): predicted 0, 1, 0
#   truth 1 at (0,2) (0,3) (2,0) (2,1): predicted 1, 1, 1, 2
#   truth 2 at (1,1) (1,2) (2,2): predicted 2, 0, 2
HAND_MATRIX = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 2]])
# IoU = TP / (row sum + column sum - TP): class 0: 2/(3+3-2), class 1: 3/(4+4-3), class 2: 2/(3+3-2)
HAND_IOU = np.array([2 / 4, 3 / 5, 2 / 4])


def test_confusion_matrix_matches_hand_count():
    matrix = confusion_matrix(PREDICTION, TARGET, num_classes=3)
    np.testing.assert_array_equal(matrix, HAND_MATRIX)
    assert matrix.sum() == 10  # the two ignored pixels are not counted


def test_iou_and_mean_iou_match_hand_values():
    np.testing.assert_allclose(iou_per_class(HAND_MATRIX), HAND_IOU, rtol=0, atol=1e-15)
    assert mean_iou(HAND_MATRIX) == pytest.approx(HAND_IOU.mean(), abs=1e-15)
    assert pixel_accuracy(HAND_MATRIX) == pytest.approx(7 / 10, abs=1e-15)


def test_absent_class_is_skipped_and_false_positive_only_class_counts_zero():
    # Class 3 never occurs (NaN, skipped); class 2 only appears as a wrong prediction (IoU 0).
    target = np.array([0, 0, 1, 1])
    prediction = np.array([0, 2, 1, 1])
    matrix = confusion_matrix(prediction, target, num_classes=4)
    iou = iou_per_class(matrix)
    np.testing.assert_allclose(iou[:3], [1 / 2, 1.0, 0.0])
    assert np.isnan(iou[3])
    assert mean_iou(matrix) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_accumulator_equals_one_matrix_over_all_batches():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(4, 7, 9))
    target[rng.random(target.shape) < 0.1] = 255
    prediction = rng.integers(0, 5, size=target.shape)
    cm = ConfusionMatrix(5)
    for b in range(4):
        cm.update(prediction[b], target[b])
    # Reference: a double loop over pixels.
    reference = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(target.ravel(), prediction.ravel()):
        if t != 255:
            reference[t, p] += 1
    np.testing.assert_array_equal(cm.matrix, reference)
    summary = cm.summary([f"c{k}" for k in range(5)])
    assert summary["miou"] == pytest.approx(mean_iou(reference))
    assert set(summary["iou"]) == {f"c{k}" for k in range(5)}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="target holds class 7"):
        confusion_matrix(np.zeros(3), np.array([0, 7, 1]), 3)
    with pytest.raises(ValueError, match="prediction holds class -1"):
        confusion_matrix(np.array([0, -1, 1]), np.zeros(3), 3)
    with pytest.raises(ValueError, match="empty"):
        mean_iou(np.zeros((3, 3)))
