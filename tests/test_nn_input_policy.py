"""One input policy for every module of ``em_tutorial.nn``, in eval and in training mode.

EMANet, its ResNet backbone, the EMAU, the non-local block and the image-pooling block all
refuse, with one ValueError that names the problem and before any buffer moves:

* NaN or inf anywhere (naming the images of the batch that hold them): in eval mode it would
  silently turn its whole image into background, in training poison the running statistics;
* values so large that the first BatchNorm's statistics overflow (the running variance would
  become infinite);
* an empty batch in training mode (BatchNorm would count a step without data); in eval mode
  it gives an empty output;

and a NumPy array (or any non-tensor) is a TypeError naming what was expected.
"""

import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from em_tutorial.nn import EMAU, ImagePooling2d, NonLocal2d, ResNet, emanet_tiny  # noqa: E402
from em_tutorial.nn.functional import non_finite_message  # noqa: E402

C = 8
# name -> (owner in the messages, constructor, input shape (B, C, H, W) with B = 3)
ENTRY_POINTS = {
    "EMANet": ("EMANet", lambda: emanet_tiny(3), (3, 3, 16, 16)),
    "EMANet, non-local head": ("EMANet", lambda: emanet_tiny(3, head="nonlocal"), (3, 3, 16, 16)),
    "ResNet": ("ResNet", lambda: ResNet((1, 1, 1, 1), base_width=8, deep_stem=True),
               (3, 3, 16, 16)),
    "EMAU": ("EMAU", lambda: EMAU(C, num_bases=4), (3, C, 5, 6)),
    "NonLocal2d": ("NonLocal2d", lambda: NonLocal2d(C), (3, C, 5, 6)),
    "ImagePooling2d": ("ImagePooling2d", lambda: ImagePooling2d(C), (3, C, 5, 6)),
}
MODES = {"train": True, "eval": False}


def _build(name, training):
    torch.manual_seed(0)
    owner, build, shape = ENTRY_POINTS[name]
    return owner, build().train(training), shape


def _buffers(module):
    return {name: value.clone() for name, value in module.named_buffers()}


def _assert_buffers_unchanged(module, before):
    for name, value in module.named_buffers():
        assert torch.equal(value, before[name]), f"buffer {name} changed"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ENTRY_POINTS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_refused_naming_the_image(name, mode, bad):
    owner, module, shape = _build(name, MODES[mode])
    before = _buffers(module)
    x = torch.randn(shape)
    x[1, 0, 2, 3] = bad
    numel = math.prod(shape)
    with pytest.raises(ValueError, match=rf"^{owner} input x contains NaN or inf in image 1 of "
                                         rf"the batch of 3 \(1 of its {numel} values\)"):
        module(x)
    _assert_buffers_unchanged(module, before)
    x[2, -1, -1, -1] = bad  # two images
    with pytest.raises(ValueError, match=r"in images 1, 2 of the batch of 3 \(2 of its"):
        module(x)
    _assert_buffers_unchanged(module, before)
    # the control: the same batch, cleaned, passes and gives finite numbers
    assert bool(torch.isfinite(module(x.nan_to_num(0.0, 0.0, 0.0))).all())


def test_emanet_in_eval_mode_no_longer_turns_a_nan_image_into_background():
    """The reported case: one NaN pixel made its whole image NaN, argmax background (0)."""
    torch.manual_seed(0)
    model = emanet_tiny(4).eval()
    images = torch.randn(2, 3, 32, 32)
    images[1, 2, 17, 5] = math.nan
    with pytest.raises(ValueError, match=r"^EMANet input x contains NaN or inf in image 1 "):
        model(images)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_huge_finite_input_is_refused_before_any_statistic_moves(name, mode):
    owner, module, shape = _build(name, MODES[mode])
    before = _buffers(module)
    # the EMAU's BatchNorm never sees x's scale (its EM bases are unit vectors): its own
    # rule (test_nn_guards.py) refuses only what overflows the EM iterations
    scale = 1e37 if owner == "EMAU" else 1e20
    with pytest.raises(ValueError, match=rf"^{owner} input x.* (too large|overflow)"):
        module(torch.randn(shape) * scale)
    _assert_buffers_unchanged(module, before)
    out = module(torch.randn(shape) * 1e3)  # the control: large, but far from overflowing
    assert bool(torch.isfinite(out).all())
    assert all(bool(torch.isfinite(b).all()) for b in module.buffers())


def test_emanet_huge_images_leave_the_stem_running_variance_finite():
    """The reported case: 1e20 images made ``backbone.conv1.1.running_var`` infinite."""
    torch.manual_seed(0)
    model = emanet_tiny(3).train()
    running_var = model.backbone.conv1[1].running_var.clone()
    with pytest.raises(ValueError, match=r"^EMANet input x is too large \(max \|x\| = .*e\+20\): "
                                         r"the convolutions before its first normalisation"):
        model(torch.randn(2, 3, 64, 64) * 1e20)
    assert torch.equal(model.backbone.conv1[1].running_var, running_var)
    model(torch.randn(2, 3, 64, 64) * 1e12)  # accepted: the statistics stay finite
    assert bool(torch.isfinite(model.backbone.conv1[1].running_var).all())


@pytest.mark.parametrize("name", ["EMANet", "ResNet"])
def test_diverged_weights_are_not_blamed_on_ordinary_images(name):
    """Stem weights whose bound overflows even on unit-scale images: the network diverged,
    which its loss must show (the training loop's signal); the images are not refused."""
    _, module, shape = _build(name, True)
    stem = module.backbone.stem_conv if name == "EMANet" else module.stem_conv
    with torch.no_grad():
        stem.weight.mul_(1e30)
    assert module(torch.randn(shape)).shape[0] == shape[0]  # no ValueError blaming x


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_empty_batch_is_refused_in_training_and_empty_in_eval(name):
    owner, module, shape = _build(name, True)
    before = _buffers(module)
    empty = torch.randn(0, *shape[1:])
    with pytest.raises(ValueError, match=rf"^{owner} input x of shape \(0, .* is an empty batch "
                                         r"\(B = 0\): in training mode BatchNorm would count it"):
        module(empty)
    _assert_buffers_unchanged(module, before)  # num_batches_tracked included
    out = module.eval()(empty)
    assert out.shape[0] == 0
    _assert_buffers_unchanged(module, before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_a_numpy_array_is_a_type_error_naming_what_was_expected(name, mode):
    owner, module, shape = _build(name, MODES[mode])
    before = _buffers(module)
    layout = rf"\(B, {shape[1]}, H, W\)" if owner in ("EMANet", "ResNet") else r"\(B, C, H, W\)"
    with pytest.raises(TypeError, match=rf"^{owner} input x must be a torch.Tensor of shape "
                                        rf"{layout}, got numpy.ndarray; convert it first "
                                        r"\(torch.from_numpy\(x\)\)$"):
        module(np.zeros(shape, dtype=np.float32))
    with pytest.raises(TypeError, match=r"got list; convert it first \(torch.as_tensor\(x\)\)"):
        module(np.zeros(shape, dtype=np.float32).tolist())
    _assert_buffers_unchanged(module, before)


@pytest.mark.parametrize("head", ["emau", "nonlocal", "pooling"])
def test_head_blocks_inside_emanet_let_diverged_weights_show_in_the_output(head):
    """EMANet checks its images; NaN from its own weights reaches the loss (the training
    loop's divergence signal) instead of a ValueError from the head block."""
    torch.manual_seed(0)
    model = emanet_tiny(3, head=head).train()
    with torch.no_grad():
        model.fc0[0].weight.fill_(math.nan)
    assert bool(torch.isnan(model(torch.randn(2, 3, 16, 16))).all())


def test_many_images_at_fault_are_listed_briefly():
    x = torch.zeros(9, 2, 2, 2)
    x[1:8, 0, 0, 0] = math.nan
    assert re.fullmatch(r"M input x contains NaN or inf in images 1, 2, 3, 4, 5, \.\.\. of the "
                        r"batch of 9 \(7 of its 72 values\)", non_finite_message(x, "M"))
