"""Receptive fields: nothing beyond the theoretical reach moves an output; the context task
keeps its fragments beyond that reach."""

import numpy as np
import pytest
import torch

from em_tutorial.nn import emanet_tiny
from em_tutorial.segmentation import CONTEXT_MODEL
from em_tutorial.segmentation.data import ContextConfig
from em_tutorial.segmentation.receptive_field import (
    effective_receptive_field,
    theoretical_receptive_field,
)


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(0)
    return emanet_tiny(11, head="none", **CONTEXT_MODEL).double().eval()


@pytest.fixture(scope="module")
def side(plain):
    return theoretical_receptive_field(plain)


def test_pixels_beyond_the_reach_never_change_an_output(plain, side):
    reach = side // 2
    size, row, col = 240, 117, 118  # an output pixel off the feature grid's centre
    torch.manual_seed(1)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    rows, cols = np.ogrid[:size, :size]
    far = torch.as_tensor(np.maximum(abs(rows - row), abs(cols - col)) > reach)
    y = torch.where(far, torch.randn_like(x), x)
    with torch.no_grad():
        before, after = plain(x)[0, :, row, col], plain(y)[0, :, row, col]
    torch.testing.assert_close(before, after, rtol=0, atol=1e-12)
    # ...while the pixels at the edge of the reach do change it (the field is not too wide)
    ring = torch.as_tensor(np.maximum(abs(rows - row), abs(cols - col)) > reach - 16)
    with torch.no_grad():
        moved = plain(torch.where(ring, torch.randn_like(x), x))[0, :, row, col]
    assert (moved - before).abs().max() > 1e-9


def test_context_scenes_place_whole_digits_beyond_the_reach(side):
    assert ContextConfig().context_distance > side // 2


def test_effective_field_is_inside_the_theoretical_one(plain, side):
    images = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    effective, gradient = effective_receptive_field(plain, images, mass=0.9)
    assert 1 < effective < side
    assert gradient.shape == (128, 128) and abs(gradient.sum() - 1) < 1e-9
    with pytest.raises(ValueError, match="mass"):
        effective_receptive_field(plain, images, mass=1.5)
