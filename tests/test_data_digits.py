"""The embedded digit scenes: deterministic, labelled right, splits kept apart."""

import numpy as np
import pytest

from em_tutorial.segmentation.data import DigitScenes, SceneConfig, render_scene, upscale_glyph
from em_tutorial.segmentation.data.digits import digit_pool

SMALL = SceneConfig(image_size=32)


def test_upscale_glyph_hand_values():
    glyph = np.zeros((8, 8))
    glyph[0, 0] = 1.0
    # Output pixel i of 16 sits at input coordinate u = (i + 0.5) / 2 - 0.5: u(0) = -0.25 takes
    # 3/4 of pixel 0 (and 1/4 of the zero border), u(1) = 0.25 takes 3/4 of pixel 0 and 1/4 of
    # pixel 1, u(2) = 0.75 takes 1/4 of pixel 0.
    big = upscale_glyph(glyph, 16)
    weights = np.array([0.75, 0.75, 0.25, 0.0])
    np.testing.assert_allclose(big[:4, :4], np.outer(weights, weights), atol=1e-15)
    assert big[4:, :].max() == 0.0 and big[:, 4:].max() == 0.0
    # Same size: the identity.
    glyph = np.random.default_rng(0).random((8, 8))
    np.testing.assert_allclose(upscale_glyph(glyph, 8), glyph, atol=1e-15)


def test_render_scene_hand_checked_example():
    # A hand-drawn "1": a vertical bar, full intensity in the middle, half at its top pixel.
    glyph = np.zeros((8, 8))
    glyph[1:7, 3:5] = 1.0
    glyph[0, 3] = 0.5
    background = np.full((12, 12, 3), 0.2)
    colour = np.array([1.0, 0.5, 0.0])
    image, label = render_scene(background, [glyph], [1], [(2, 3)], [8], [colour], ink_threshold=0.4)

    expected_label = np.zeros((12, 12), dtype=np.uint8)
    expected_label[3:9, 6:8] = 2  # digit 1 -> label 2 where intensity >= 0.4
    expected_label[2, 6] = 2  # the half-intensity pixel (0.5 >= 0.4)
    np.testing.assert_array_equal(label, expected_label)
    np.testing.assert_allclose(image[5, 6], colour)  # full ink: the digit's colour
    np.testing.assert_allclose(image[2, 6], 0.5 * 0.2 + 0.5 * colour)  # half ink: the mix
    np.testing.assert_allclose(image[0, 0], [0.2, 0.2, 0.2])  # untouched background


def test_scenes_are_deterministic_and_seeded():
    a = DigitScenes("train", 6, seed=3, config=SMALL)
    b = DigitScenes("train", 6, seed=3, config=SMALL)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    # Scene i depends only on (seed, split, i), not on how many scenes were asked for.
    c = DigitScenes("train", 3, seed=3, config=SMALL)
    np.testing.assert_array_equal(c.images, a.images[:3])
    d = DigitScenes("train", 6, seed=4, config=SMALL)
    assert not np.array_equal(d.images, a.images)
    v = DigitScenes("val", 6, seed=3, config=SMALL)
    assert not np.array_equal(v.images, a.images)


def test_labels_follow_the_ink_and_have_every_class():
    ds = DigitScenes("train", 200, seed=0, config=SMALL)
    assert ds.images.shape == (200, 32, 32, 3) and ds.labels.shape == (200, 32, 32)
    assert set(np.unique(ds.labels)) == set(range(11))
    # Each scene holds 2-3 digits: ink covers a fair share of the image, background the rest.
    ink = (ds.labels > 0).mean()
    assert 0.08 < ink < 0.4
    # Labelled ink is drawn: on average it differs from the background's colour much more
    # than background pixels differ among themselves.
    image = ds.images.astype(float)
    background_mean = np.array([image[i][ds.labels[i] == 0].mean(axis=0) for i in range(200)])
    gap = np.array([np.abs(image[i][ds.labels[i] > 0] - background_mean[i]).mean() for i in range(200)])
    spread = np.array([np.abs(image[i][ds.labels[i] == 0] - background_mean[i]).mean() for i in range(200)])
    assert (gap > 2 * spread).mean() > 0.9


def test_model_input_and_key_forms():
    ds = DigitScenes("val", 2, seed=0, config=SMALL)
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert y.shape == (32, 32) and y.dtype == np.int64
    x2, y2 = ds[(1, 12345)]  # the training sampler's (index, seed) keys
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_splits_use_disjoint_digit_samples():
    train_glyphs, train_classes = digit_pool("train")
    val_glyphs, val_classes = digit_pool("val")
    assert len(train_glyphs) + len(val_glyphs) == 1797
    assert set(np.unique(val_classes)) == set(range(10))
    train_rows = {g.tobytes() for g in train_glyphs}
    # A few glyphs repeat inside load_digits itself; nearly none may cross the split.
    assert sum(g.tobytes() in train_rows for g in val_glyphs) <= 2


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="split"):
        digit_pool("test")
    with pytest.raises(ValueError, match="digit_size"):
        SceneConfig(image_size=32, digit_size=(20, 40))
    with pytest.raises(ValueError, match="num_scenes"):
        DigitScenes("train", 0, config=SMALL)


def test_labels_are_checked_when_read():
    scenes = DigitScenes("train", num_scenes=3, seed=0, config=SMALL)
    scenes.labels[1, :2, :3] = 77  # corrupted in memory: the reader's check still applies
    scenes.labels[1, 5, 5] = 255  # the ignore value is allowed
    scenes[0]
    with pytest.raises(ValueError, match=r"label of digit scene 1 of the 'train' split holds "
                       r"values 77 in 6 pixels; expected class indices 0\.\.10 or the ignore value 255"):  # fmt: skip
        scenes[1]
