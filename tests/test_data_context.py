"""Context scenes: one class per scene, border fragments beyond the convolutions' reach."""

import numpy as np
import pytest
from scipy import ndimage

from em_tutorial.segmentation.data import ContextConfig, ContextScenes

SMALL = ContextConfig(image_size=208)


@pytest.fixture(scope="module")
def scenes():
    return ContextScenes("val", 12, seed=1, config=SMALL)


def test_deterministic_per_seed(scenes):
    again = ContextScenes("val", 12, seed=1, config=SMALL)
    other = ContextScenes("val", 12, seed=2, config=SMALL)
    np.testing.assert_array_equal(scenes.images, again.images)
    np.testing.assert_array_equal(scenes.windows, again.windows)
    assert not np.array_equal(scenes.labels, other.labels)


def test_one_digit_class_per_scene(scenes):
    for i in range(len(scenes)):
        classes = set(np.unique(scenes.raw(i)[1]).tolist())
        assert classes - {0} and len(classes - {0}) == 1, classes


def test_fragments_touch_a_border_and_hold_ink(scenes):
    for i in range(len(scenes)):
        windows, label = scenes.fragment_windows(i), scenes.raw(i)[1]
        parts, count = ndimage.label(windows)
        assert count >= 1  # touching fragments merge into one part
        for part in range(1, count + 1):
            rows, cols = np.nonzero(parts == part)
            assert min(rows.min(), cols.min()) == 0 or max(rows.max(), cols.max()) == 207
        assert (label[windows] > 0).any()


def test_full_instances_lie_beyond_the_context_distance(scenes):
    # Chebyshev distance from every fragment pixel to the nearest ink pixel of a full instance
    for i in range(len(scenes)):
        windows, label = scenes.fragment_windows(i), scenes.raw(i)[1]
        full_ink = (label > 0) & ~windows
        assert full_ink.sum() > 100  # at least one whole digit
        distance = ndimage.distance_transform_cdt(~full_ink, metric="chessboard")
        assert distance[windows].min() > SMALL.context_distance


def test_fragments_only_ignores_everything_else(scenes):
    view = scenes.fragments_only()
    image, label = view[3]
    np.testing.assert_array_equal(image, scenes[3][0])
    windows = scenes.fragment_windows(3)
    assert (label[~windows] == 255).all()
    np.testing.assert_array_equal(label[windows], scenes.raw(3)[1][windows])


def test_too_small_a_scene_is_refused():
    with pytest.raises(ValueError, match="no room"):
        ContextConfig(image_size=140)
    with pytest.raises(ValueError, match="at least 1"):
        ContextScenes("val", 0, config=SMALL)


@pytest.fixture(scope="module")
def edits():
    return {mode: ContextScenes("val", 12, seed=1, config=SMALL, far_digits=mode)
            for mode in ("swap", "remove")}  # fmt: skip


def test_swap_redraws_only_the_far_digits_as_another_class(scenes, edits):
    swapped = edits["swap"]
    np.testing.assert_array_equal(swapped.scene_classes, scenes.scene_classes)
    np.testing.assert_array_equal(scenes.far_classes, scenes.scene_classes)
    assert (swapped.far_classes != swapped.scene_classes).all()
    np.testing.assert_array_equal(swapped.windows, scenes.windows)
    for i in range(len(scenes)):
        windows = scenes.fragment_windows(i)
        kept_label, swapped_label = scenes.raw(i)[1], swapped.raw(i)[1]
        # the fragments, their labels and the pixels around them are those of the kept scene
        np.testing.assert_array_equal(swapped.raw(i)[0][windows], scenes.raw(i)[0][windows])
        np.testing.assert_array_equal(swapped_label[windows], kept_label[windows])
        far = swapped_label[~windows]
        assert set(np.unique(far).tolist()) == {0, swapped.far_classes[i] + 1}


def test_remove_leaves_background_texture_where_the_far_digits_were(scenes, edits):
    removed = edits["remove"]
    for i in range(len(scenes)):
        windows = scenes.fragment_windows(i)
        image, label = removed.raw(i)
        assert (label[~windows] == 0).all()
        np.testing.assert_array_equal(image[windows], scenes.raw(i)[0][windows])
        # textured, not a flat fill: the area of the far digits keeps the background's spread
        far_ink = (scenes.raw(i)[1] > 0) & ~windows
        assert image[far_ink].std() > 3


def test_unknown_far_digits_mode_is_refused():
    with pytest.raises(ValueError, match="far_digits"):
        ContextScenes("val", 2, config=SMALL, far_digits="blur")
