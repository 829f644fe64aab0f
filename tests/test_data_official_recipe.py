"""The official data recipe: discrete training scales and 8k + 1 validation padding."""

from collections import Counter

import numpy as np
import pytest

from em_tutorial.segmentation.data import (
    IGNORE_INDEX,
    OFFICIAL_SCALES,
    TrainAugmentation,
    ValidationPadding,
    pad_to_stride_plus_one,
)


def _drawn_scale(augment, seed, side=20):
    """Recover the drawn factor: a side x side all-ones label, scaled, then padded with the
    ignore label up to a crop larger than any scaled size, keeps round(side * s)^2 ones."""
    image = np.zeros((side, side, 3), np.uint8)
    label = np.ones((side, side), np.uint8)
    _, out = augment(image, label, rng=np.random.default_rng(seed))
    return np.sqrt((out == 1).sum()) / side


def test_discrete_scales_drawn_uniformly_from_the_official_set():
    assert OFFICIAL_SCALES == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    augment = TrainAugmentation(crop_size=48, scales=OFFICIAL_SCALES, flip=False)
    counts = Counter(round(_drawn_scale(augment, seed), 6) for seed in range(280))
    assert set(counts) == set(OFFICIAL_SCALES)
    assert min(counts.values()) >= 20  # 40 expected for each of the 7
    continuous = TrainAugmentation(crop_size=48, scale_range=(0.5, 2.0), flip=False)
    assert len({_drawn_scale(continuous, seed) for seed in range(50)}) > 20


def test_discrete_scales_errors():
    with pytest.raises(ValueError, match="scales"):
        TrainAugmentation(scales=())
    with pytest.raises(ValueError, match="scales"):
        TrainAugmentation(scales=(0.5, 0.0))


@pytest.mark.parametrize("stride", [8, 16])
def test_padding_to_stride_plus_one(rng, stride):
    for h, w in [(1, 1), (8, 9), (17, 16), (30, 45), (513, 512)]:
        image = rng.standard_normal((3, h, w)).astype(np.float32)
        label = rng.integers(0, 21, (h, w))
        padded, padded_label = pad_to_stride_plus_one(image, label, stride)
        # the smallest size >= the original of the form stride * k + 1, found by counting up
        expected_h = next(n for n in range(h, h + stride + 1) if n % stride == 1 % stride)
        expected_w = next(n for n in range(w, w + stride + 1) if n % stride == 1 % stride)
        assert padded.shape == (3, expected_h, expected_w)
        assert padded_label.shape == (expected_h, expected_w)
        np.testing.assert_array_equal(padded[:, :h, :w], image)
        np.testing.assert_array_equal(padded_label[:h, :w], label)
        assert not padded[:, h:].any() and not padded[:, :, w:].any()
        assert (padded_label[h:] == IGNORE_INDEX).all()
        assert (padded_label[:, w:] == IGNORE_INDEX).all()


def test_validation_padding_transform_on_a_voc_sized_image(rng):
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (375, 500), dtype=np.uint8)
    x, y = ValidationPadding()(image, label)
    assert x.shape == (3, 377, 505) and y.shape == (377, 505)  # 8 * 47 + 1, 8 * 63 + 1
    assert x.dtype == np.float32 and y.dtype == np.int64
    with pytest.raises(ValueError, match="label"):
        pad_to_stride_plus_one(x, y[:-1])
