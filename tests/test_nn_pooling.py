"""The image-pooling context block (DeepLabv3 form) against a hand computation, and its reach."""

import pytest
import torch

from em_tutorial.nn import ImagePooling2d, emanet_tiny


def test_matches_the_equation_in_float64():
    torch.manual_seed(0)
    block = ImagePooling2d(5).double()
    for bn in (block.pooled[1], block.fuse[1]):  # statistics that are not the identity
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    block.eval()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)

    def bn(module, v):  # eval-mode BatchNorm over the channel axis 1
        shape = (1, -1) + (1,) * (v.ndim - 2)
        scale = module.weight / (module.running_var + module.eps).sqrt()
        return (v - module.running_mean.view(shape)) * scale.view(shape) + module.bias.view(shape)

    g = x.mean(dim=(2, 3))  # (B, C): g = (1/N) sum_n x_n
    c = bn(block.pooled[1], g @ block.pooled[0].weight[:, :, 0, 0].T).clamp_min(0)  # (B, C)
    stacked = torch.cat([x, c[:, :, None, None].expand_as(x)], dim=1)  # (B, 2C, H, W)
    fused = torch.einsum("oc,bchw->bohw", block.fuse[0].weight[:, :, 0, 0], stacked)
    expected = bn(block.fuse[1], fused).clamp_min(0)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)


def test_is_not_the_identity_at_initialisation():
    # As in DeepLabv3, the fusion convolution re-mixes X from the first step (documented).
    torch.manual_seed(0)
    x = torch.rand(4, 8, 6, 6)
    out = ImagePooling2d(8).train()(x)
    assert (out - x).norm() > 0.5 * x.norm()


def test_every_output_pixel_depends_on_the_far_corner():
    torch.manual_seed(0)
    block = ImagePooling2d(16).eval()
    x = torch.randn(1, 16, 8, 8)
    y = x.clone()
    y[0, :, 7, 7] += 5.0  # only the far corner changes...
    assert (block(x)[0, :, 0, 0] - block(y)[0, :, 0, 0]).abs().max() > 1e-4  # ...and (0, 0) moves


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="ImagePooling2d"):
        ImagePooling2d(3)(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="channels"):
        ImagePooling2d(0)
    with pytest.raises(ValueError, match="at least two images"):
        ImagePooling2d(3).train()(torch.randn(1, 3, 4, 4))


def test_emanet_head_choice():
    model = emanet_tiny(11, head="pooling")
    assert isinstance(model.attention, ImagePooling2d) and model.emau is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 11, 32, 32)
