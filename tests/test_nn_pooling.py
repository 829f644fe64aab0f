"""The global-pooling context block against a hand computation, and its reach."""

import pytest
import torch

from em_tutorial.nn import GlobalPooling2d, emanet_tiny


def test_matches_the_equation_in_float64():
    torch.manual_seed(0)
    block = GlobalPooling2d(5).double()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    # Y = ReLU(X + W g + b), g = mean over the 24 positions
    g = x.mean(dim=(2, 3))  # (B, C)
    weight = block.conv.weight[:, :, 0, 0]  # (C, C)
    expected = (x + (g @ weight.T + block.conv.bias)[:, :, None, None]).clamp_min(0)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)


def test_every_output_pixel_depends_on_the_far_corner():
    block = GlobalPooling2d(3)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    block(x)[0, :, 0, 0].sum().backward()
    assert x.grad[0, :, 7, 7].abs().sum() > 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="GlobalPooling2d"):
        GlobalPooling2d(3)(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="channels"):
        GlobalPooling2d(0)


def test_emanet_head_choice():
    model = emanet_tiny(11, head="pooling")
    assert isinstance(model.attention, GlobalPooling2d) and model.emau is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 11, 32, 32)
