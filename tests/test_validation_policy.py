"""One table of bad inputs, run through every EM-attention stage: same error type, same words.

The stages: ``ema.em_attention`` on NumPy and on ``array_api_strict`` arrays, the NumPy fast
path ``ema_fast.em_attention_fast``, the PyTorch ``nn.functional.em_attention`` (CPU) and
the fused GPU entry point ``gpu.em_attention_fused``. The fused one checks its inputs before
it requires CuPy, so without a GPU it runs here on NumPy arrays: a bad input must raise the
table's error, a good one the "needs CuPy arrays" TypeError (which shows that the validation
passed and the CuPy requirement came after it). With a GPU it gets CuPy arrays.

Every expected message names the argument at fault (x, mu, n_iter, lam).
"""

import math

import numpy as np
import pytest

from em_tutorial import ema, ema_fast
from em_tutorial.backend import gpu_available
from em_tutorial.gpu import em_attention_fused

torch = pytest.importorskip("torch")
xps = pytest.importorskip("array_api_strict")

from em_tutorial.nn import functional as nnf  # noqa: E402

X_SHAPE, MU_SHAPE = (10, 4), (3, 4)


def _to_gpu_if_any(array):
    if not gpu_available():
        return array  # the fused entry point validates NumPy arrays the same way
    import cupy

    return cupy.asarray(array)


# stage name -> (function, conversion of a NumPy array into the stage's array type)
STAGES = {
    "numpy": (ema.em_attention, np.asarray),
    "numpy fast path": (ema_fast.em_attention_fast, np.asarray),
    "array_api_strict": (ema.em_attention, xps.asarray),
    "torch": (nnf.em_attention, torch.from_numpy),
    "fused GPU": (em_attention_fused, _to_gpu_if_any),
}

# name -> (changes to the good input, error type, regex that names the argument)
BAD_INPUTS = {
    "x 1-D": ({"x_shape": (10,)}, ValueError, r"^x must have shape \(N, C\)"),
    "mu 4-D": ({"mu_shape": (1, 1, 3, 4)}, ValueError, r"^mu must have shape \(K, C\)"),
    "channel mismatch": ({"mu_shape": (3, 5)}, ValueError, r"channel mismatch: x has C=4 .* mu"),
    "batch mismatch": ({"x_shape": (2, 10, 4), "mu_shape": (3, 3, 4)}, ValueError,
                       r"batch mismatch: x has B=2 .* mu has B=3"),
    "batched mu, unbatched x": ({"mu_shape": (2, 3, 4)}, ValueError, r"^mu is batched.*x is not"),
    "N = 0": ({"x_shape": (0, 4)}, ValueError, r"N = 0 pixels \(x shape \(0, 4\)"),
    "K = 0": ({"mu_shape": (0, 4)}, ValueError, r"K = 0 bases .*mu shape \(0, 4\)"),
    "C = 0": ({"x_shape": (10, 0), "mu_shape": (3, 0)}, ValueError, r"C = 0 channels \(x shape"),
    "n_iter 2.5": ({"n_iter": 2.5}, TypeError, r"^n_iter \(T\) must be an integer; got 2.5"),
    "n_iter True": ({"n_iter": True}, TypeError, r"^n_iter \(T\) must be an integer"),
    "n_iter '3'": ({"n_iter": "3"}, TypeError, r"^n_iter \(T\) must be an integer"),
    "n_iter 0": ({"n_iter": 0}, ValueError, r"^n_iter \(T\) must be at least 1; got 0"),
    "lam negative": ({"lam": -1.0}, ValueError, r"^lam .* finite number >= 0; got -1.0"),
    "lam NaN": ({"lam": math.nan}, ValueError, r"^lam .* finite number >= 0"),
    "lam inf": ({"lam": math.inf}, ValueError, r"^lam .* finite number >= 0"),
    "lam a string": ({"lam": "1"}, TypeError, r"^lam .* must be a real number"),
    "x float16": ({"x_dtype": np.float16, "mu_dtype": np.float16}, TypeError,
                  r"^x must be float32 or float64, got float16.*cast it to float32"),
    "mu integer": ({"mu_dtype": np.int64}, TypeError,
                   r"^mu must be a float32 or float64 array; got dtype \S*int64, an integer dtype"),
    "x complex": ({"x_dtype": np.complex128}, TypeError,
                  r"^x must be a float32 or float64 array; got dtype \S*complex128, not a real"),
    "x NaN": ({"x_bad": math.nan}, ValueError, r"^x contains NaN or inf \(1 of its 40 values\)"),
    "mu inf": ({"mu_bad": -math.inf}, ValueError, r"^mu contains NaN or inf \(1 of its 12"),
    "lam beyond float": ({"lam": 10**400}, ValueError, r"^lam .* finite number >= 0"),
    "x overflows": ({"x_bad": 1e308}, ValueError,
                    r"^x, mu and lam are too large for \S*float64: lambda x\^T mu or the sums"),
    "lam overflows": ({"lam": 1e307}, ValueError, r"^x, mu and lam are too large .* lam = 1e\+307"),
}


def _inputs(rng, x_shape=X_SHAPE, mu_shape=MU_SHAPE, x_dtype=np.float64, mu_dtype=np.float64,
            x_bad=None, mu_bad=None, **kwargs):
    """NumPy x, mu and the keyword arguments of one table row."""
    x = rng.standard_normal(x_shape).astype(x_dtype)
    mu = rng.standard_normal(mu_shape).astype(mu_dtype)
    for array, bad in ((x, x_bad), (mu, mu_bad)):
        if bad is not None:
            array[(0,) * array.ndim] = bad
    return x, mu, kwargs


def _run(stage, x, mu, kwargs):
    function, convert = STAGES[stage]
    if stage == "array_api_strict" and np.float16 in (x.dtype, mu.dtype):
        pytest.skip("array_api_strict has no float16 (it is not in the array API standard)")
    return function(convert(x), convert(mu), **kwargs)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("row", BAD_INPUTS)
def test_every_stage_refuses_the_same_way(rng, row, stage):
    changes, error, message = BAD_INPUTS[row]
    x, mu, kwargs = _inputs(rng, **changes)
    with pytest.raises(error, match=message) as info:
        _run(stage, x, mu, kwargs)
    assert type(info.value) is error  # not a subclass raised by some other check


@pytest.mark.parametrize("stage", STAGES)
def test_good_input_passes_the_checks(rng, stage):
    """The control: without it an always-raising validator would pass the table."""
    x, mu, kwargs = _inputs(rng)
    if stage == "fused GPU" and not gpu_available():
        with pytest.raises(TypeError, match="fused kernels need CuPy arrays"):
            _run(stage, x, mu, kwargs)
        return
    z = _run(stage, x, mu, kwargs)[0]
    assert tuple(z.shape) == (10, 3)


@pytest.mark.parametrize("stage", STAGES)
def test_mixed_float_dtypes_are_promoted_on_every_stage(rng, stage):
    """float32 features with float64 bases: float64 results equal to the float64 computation."""
    x, mu, _ = _inputs(rng, x_dtype=np.float32)
    expected = ema.em_attention(x.astype(np.float64), mu)
    if stage == "fused GPU" and not gpu_available():
        with pytest.raises(TypeError, match="fused kernels need CuPy arrays"):
            _run(stage, x, mu, {})
        pytest.skip("the fused kernels compute only on a GPU; the checks above passed")
    got = _run(stage, x, mu, {})
    for e, g in zip(expected, got):
        g = np.asarray(g.get() if hasattr(g, "get") else g)  # CuPy arrays to the host
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("position", ["x", "mu"])
def test_an_argument_that_is_no_array_is_named(rng, stage, position):
    x, mu, _ = _inputs(rng)
    function, convert = STAGES[stage]
    args = {"x": convert(x), "mu": convert(mu)}
    args[position] = [[1.0, 2.0, 3.0, 4.0]]
    with pytest.raises(TypeError, match=rf"\b{position}\b.* must be (an array|torch tensors)"):
        function(**args)
