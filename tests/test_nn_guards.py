"""Bad input to EMAU and EMANet: one clear error, and no buffer changed by it.

Non-finite bases skip the moving average of the bases; NaN, inf, a wrong dtype, an empty batch
or a lone 1x1 feature map in training mode are refused before any buffer is touched. The
distributed case (a skip on one rank is a skip on every rank) is in ``test_nn_emau.py``; the
policy shared by every module of ``em_tutorial.nn`` is in ``test_nn_input_policy.py``.
"""

import math

import pytest

torch = pytest.importorskip("torch")

from em_tutorial.nn import EMAU, emanet_tiny  # noqa: E402
from em_tutorial.nn import functional as nnf  # noqa: E402

C, K = 8, 4


def _buffers(module):
    return {name: value.clone() for name, value in module.named_buffers()}


def _assert_buffers_equal(module, before, skip=()):
    for name, value in module.named_buffers():
        if not name.endswith(skip):
            assert torch.equal(value, before[name]), f"buffer {name} changed"


def _emau(rule="official", **kwargs):
    torch.manual_seed(0)
    return EMAU(C, num_bases=K, bases_update=rule, **kwargs).train()


@pytest.mark.parametrize("rule", ["official", "mmseg"])
def test_empty_batch_is_refused_in_training_and_empty_in_eval(rule):
    emau = _emau(rule)
    before = _buffers(emau)
    with pytest.raises(ValueError, match=r"^EMAU input x of shape \(0, 8, 5, 6\) is an empty "
                                         r"batch \(B = 0\): in training mode BatchNorm"):
        emau(torch.randn(0, C, 5, 6))
    _assert_buffers_equal(emau, before)  # num_batches_tracked included
    assert emau.eval()(torch.randn(0, C, 5, 6)).shape == (0, C, 5, 6)
    _assert_buffers_equal(emau, before)
    emau.train()(torch.randn(2, C, 5, 6))  # the control: a real batch moves the bases
    assert not torch.equal(emau.mu, before["mu"])
    assert bool(torch.isfinite(emau.mu).all())


@pytest.mark.parametrize("rule", ["official", "mmseg"])
def test_non_finite_bases_skip_the_update(rule):
    """The update itself refuses NaN and inf bases (an input check could miss an overflow)."""
    emau = _emau(rule, renormalize_bases=False)
    before = emau.mu.clone()
    bases = torch.randn(2, K, C)
    for bad in (math.nan, math.inf):
        bases[1, 2, 3] = bad
        emau._update_bases(bases)
        assert torch.equal(emau.mu, before)
    emau._update_bases(bases[:1])  # the control: the finite image alone is used
    assert not torch.equal(emau.mu, before)


@pytest.mark.parametrize("rule", ["official", "mmseg"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_emau_refuses_non_finite_input_in_training(rule, bad):
    """The bases update is skipped (mu unchanged) and BatchNorm never sees the batch."""
    emau = _emau(rule)
    before = _buffers(emau)
    x = torch.randn(2, C, 5, 6)
    x[1, 3, 2, 2] = bad
    with pytest.raises(ValueError, match=r"^EMAU input x contains NaN or inf in image 1 of the "
                                         r"batch of 2 \(1 of its 480 values\)"):
        emau(x)
    _assert_buffers_equal(emau, before)


@pytest.mark.parametrize(
    "scale, match",
    [(3e38, r"^EMAU input x \(max \|x\| = 3e\+38\) overflowed torch.float32 in the first conv"),
     # finite features, but lambda x^T mu overflows
     (1e37, r"^EMAU input x, after the first convolution: x, mu and lam are too large for "
            r"torch.float32")],
)
@pytest.mark.parametrize("training", [True, False])
def test_emau_refuses_input_that_overflows(scale, match, training):
    emau = _emau().train(training)
    before = _buffers(emau)
    with pytest.raises(ValueError, match=match):
        emau(torch.full((2, C, 5, 6), scale))
    _assert_buffers_equal(emau, before)
    emau(1e20 * torch.randn(2, C, 5, 6))  # the control: large but safe
    # unit bases, not silent zeros (hard assignments may leave some bases without pixels)
    largest_norms = emau.last_bases.norm(dim=-1).amax(dim=-1)  # (B,)
    torch.testing.assert_close(largest_norms, torch.ones(2))


def test_emau_refuses_non_finite_input_in_eval_mode_too():
    emau = _emau().eval()
    before = _buffers(emau)
    x = torch.randn(2, C, 5, 6)
    x[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^EMAU input x contains NaN or inf in image 0 of the "
                                         r"batch of 2 \(1 of its 480 values\)"):
        emau(x)
    _assert_buffers_equal(emau, before)


@pytest.mark.parametrize(
    "dtype, match",
    [(torch.float64, r"^EMAU input x has dtype torch.float64 but the module's parameters are "
                     r"torch.float32; .* torch.autocast"),
     (torch.float16, r"^EMAU input x has dtype torch.float16 but .* torch.autocast for half"),
     (torch.int64, r"^EMAU input x has dtype torch.int64, an integer or boolean dtype")],
)
def test_emau_wrong_dtype_is_one_type_error(dtype, match):
    emau = _emau()
    before = _buffers(emau)
    with pytest.raises(TypeError, match=match):
        emau(torch.ones(2, C, 5, 6, dtype=dtype))
    _assert_buffers_equal(emau, before)
    emau.double()(torch.ones(2, C, 5, 6, dtype=torch.float64))  # the advice works


def test_emau_one_value_per_channel_in_training():
    emau = _emau()
    before = _buffers(emau)
    with pytest.raises(ValueError, match="BatchNorm needs more than one value per channel in tr"):
        emau(torch.randn(1, C, 1, 1))
    _assert_buffers_equal(emau, before)
    emau.eval()(torch.randn(1, C, 1, 1))  # fine in eval mode ...
    emau.train()(torch.randn(2, C, 1, 1))  # ... and with two values per channel


def test_torch_em_attention_names_an_integer_dtype():
    with pytest.raises(TypeError, match=r"^x must be a float32 .* torch.int64, an integer dtype"):
        nnf.em_attention(torch.ones(5, 3, dtype=torch.int64), torch.randn(2, 3))


def _tiny():
    torch.manual_seed(0)
    return emanet_tiny(3).train()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_emanet_refuses_non_finite_images_in_training(bad):
    model = _tiny()
    before = _buffers(model)
    images = torch.randn(2, 3, 16, 16)
    images[0, 1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"^EMANet input x contains NaN or inf in image 0 of"):
        model(images)
    _assert_buffers_equal(model, before)
    model(images.nan_to_num(0.0, 0.0, 0.0))  # the control: the cleaned batch trains
    assert not torch.equal(model.emau.mu, before["attention.mu"])


def test_emanet_empty_batch_refused_in_training_empty_output_in_eval():
    model = _tiny()
    before = _buffers(model)
    with pytest.raises(ValueError, match=r"^EMANet input x of shape \(0, 3, 16, 16\) is an empty"):
        model(torch.randn(0, 3, 16, 16))
    _assert_buffers_equal(model, before)  # num_batches_tracked included
    assert model.eval()(torch.randn(0, 3, 16, 16)).shape == (0, 3, 16, 16)
    _assert_buffers_equal(model, before)


def test_emanet_dtype_and_size_errors():
    model = _tiny()
    before = _buffers(model)
    with pytest.raises(TypeError, match=r"^EMANet input x has dtype torch.float64"):
        model(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"^EMANet input x has dtype torch.uint8, an integer"):
        model(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1x1 feature maps .* BatchNorm needs more than one"):
        model(torch.randn(1, 3, 8, 8))
    _assert_buffers_equal(model, before)
    model(torch.randn(1, 3, 9, 8))  # 2x1 feature maps are enough
    with torch.autocast("cpu", dtype=torch.bfloat16):  # half precision the advised way
        assert model.eval()(torch.randn(1, 3, 16, 16).bfloat16()).shape == (1, 3, 16, 16)


def test_emau_skip_mode_keeps_the_bases_and_lets_nan_through():
    emau = _emau(non_finite="skip")
    before = emau.mu.clone()
    x = torch.randn(2, C, 5, 6)
    x[0, 0, 0, 0] = math.nan
    assert bool(torch.isnan(emau(x)).any())
    assert torch.equal(emau.mu, before)
    with pytest.raises(ValueError, match="non_finite must be 'raise' or 'skip'"):
        EMAU(C, non_finite="ignore")


def test_emanet_with_diverged_weights_shows_nan_in_its_output_and_keeps_its_bases():
    """Finite images, NaN weights: the loss must turn NaN (the training loop's signal)."""
    model = _tiny()
    with torch.no_grad():
        model.fc0[0].weight.fill_(math.nan)
    before = model.emau.mu.clone()
    assert bool(torch.isnan(model(torch.randn(2, 3, 16, 16))).all())
    assert torch.equal(model.emau.mu, before)
