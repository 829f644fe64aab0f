"""Property-based bad input for the public entry points: a finite result or one clear error.

Hypothesis draws shapes, dtypes and values (empty axes, NaN, inf, the largest floats, integer,
boolean and complex arrays, lists, None, strings) for the mixture, EM attention on every stage,
the EMA Unit, every network entry point (EMANet, ResNet, EMAU, NonLocal2d, ImagePooling2d, in
eval and training mode, with NaN or inf at a random pixel of a random image, values up to
1e38, empty batches and NumPy arrays), the training configuration and the two dataset
readers. Every call must either give finite numbers or raise
a ValueError or TypeError (file errors for the readers) that

* names the argument at fault,
* is raised by this package (the last frame of its traceback lies in ``em_tutorial``), not
  from inside NumPy, SciPy, PIL or torch,
* leaves the inputs and the module's buffers bit-identical.

The draws are derandomised (the same examples on every run) and few, to keep this file fast.
"""

import math
import re
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import em_tutorial
from em_tutorial import ema, ema_fast
from em_tutorial.gpu import em_attention_fused

torch = pytest.importorskip("torch")

from em_tutorial.nn import EMAU, ImagePooling2d, NonLocal2d, ResNet, emanet_tiny  # noqa: E402
from em_tutorial.nn import functional as nnf  # noqa: E402

PACKAGE = str(Path(em_tutorial.__file__).parent)
FAST = settings(
    max_examples=100, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ODD_DTYPES = [np.float16, np.int64, np.bool_, np.complex128]
NOT_ARRAYS = st.sampled_from([None, "x", 3.0, [[1.0, 2.0]]])


def assert_clear_refusal(error, names, allowed=(ValueError, TypeError)):
    """``error`` is of an ``allowed`` type, raised in this package, naming one of ``names``."""
    assert isinstance(error, allowed), f"{type(error).__name__}: {error}"
    frame = traceback.extract_tb(error.__traceback__)[-1]
    assert frame.filename.startswith(PACKAGE), f"raised in {frame.filename}: {error!r}"
    message = str(error)
    assert any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", message) for n in names), message


def values(dtype, regime):
    """Elements of ``dtype``: "moderate" (-10..10), "finite" (up to the dtype's largest, as
    Hypothesis likes extremes) or "wild" (NaN and inf too)."""
    if regime == "wild" or dtype in (np.bool_, np.complex128):
        return None  # Hypothesis's own choice for the dtype, edge cases first
    bounds = {"min_value": -10, "max_value": 10} if regime == "moderate" else {}
    return hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False, **bounds)


@st.composite
def arrays(draw, shape):
    """An array of ``shape``; mostly float32/float64, sometimes an odd dtype."""
    dtype = draw(st.sampled_from([np.float32, np.float64] * 3 + ODD_DTYPES))
    regime = draw(st.sampled_from(["moderate", "moderate", "finite", "wild"]))
    return draw(hnp.arrays(dtype, shape, elements=values(dtype, regime)))


@st.composite
def em_inputs(draw):
    """x, mu and keyword arguments: mostly fitting shapes, sometimes any shape or no array."""
    n, k, c = (draw(st.integers(0, 4)) for _ in range(3))
    x_shape = draw(st.sampled_from([(n, c), (draw(st.integers(0, 2)), n, c)]))
    mu_shape = draw(st.sampled_from([(k, c), (*x_shape[:-2], k, c)]))
    any_shape = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3)
    x_shape, mu_shape = (draw(st.one_of(st.just(s), any_shape)) if draw(st.integers(0, 5)) == 0
                         else s for s in (x_shape, mu_shape))
    x = draw(st.one_of(arrays(x_shape), NOT_ARRAYS)) if draw(st.integers(0, 9)) == 0 \
        else draw(arrays(x_shape))
    mu = draw(st.one_of(arrays(mu_shape), NOT_ARRAYS)) if draw(st.integers(0, 9)) == 0 \
        else draw(arrays(mu_shape))
    kwargs = {}
    if draw(st.booleans()):
        kwargs["n_iter"] = draw(st.one_of(st.integers(-1, 4), st.sampled_from([2.5, True, "3"])))
    if draw(st.booleans()):
        kwargs["lam"] = draw(st.one_of(st.floats(), st.integers(-2, 10**400), st.just("1")))
    return x, mu, kwargs


def _torch_or_as_is(value):
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


STAGES = {
    "numpy": (ema.em_attention, lambda v: v),
    "numpy fast path": (ema_fast.em_attention_fast, lambda v: v),
    "torch": (nnf.em_attention, _torch_or_as_is),
    "fused GPU validation": (em_attention_fused, lambda v: v),
}


def _snapshot(value):
    return value.copy() if isinstance(value, np.ndarray) else value


def _unchanged(value, before):
    if not isinstance(value, np.ndarray):
        return True
    return value.dtype == before.dtype and np.array_equal(
        value, before, equal_nan=value.dtype.kind in "fc")


@pytest.mark.parametrize("stage", STAGES)
@FAST
@given(inputs=em_inputs())
def test_em_attention_finite_or_one_clear_error(stage, inputs):
    x, mu, kwargs = inputs
    function, convert = STAGES[stage]
    x_before, mu_before = _snapshot(x), _snapshot(mu)
    try:
        result = function(convert(x), convert(mu), **kwargs)
    except (ValueError, TypeError) as error:
        if "fused kernels need CuPy arrays" in str(error):
            return  # without a GPU: the checks passed, then CuPy was required
        assert_clear_refusal(error, ("x", "mu", "n_iter", "lam"))
        assert _unchanged(x, x_before) and _unchanged(mu, mu_before)
        return
    for output in result:
        output = output.numpy() if isinstance(output, torch.Tensor) else np.asarray(output)
        assert np.isfinite(output).all()
    assert _unchanged(x, x_before) and _unchanged(mu, mu_before)


# --- the EMA Unit ----------------------------------------------------------------------------

EMAU_C = 3


@st.composite
def feature_maps(draw):
    """(B, C, H, W) tensors, B, H, W from 0; sometimes another C or number of dimensions."""
    shape = (draw(st.integers(0, 2)), EMAU_C, draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    if draw(st.integers(0, 7)) == 0:
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=3))
    if draw(st.integers(0, 9)) == 0:
        return draw(NOT_ARRAYS)
    return torch.from_numpy(draw(arrays(shape)))


@FAST
@given(x=feature_maps(), training=st.booleans(), rule=st.sampled_from(["official", "mmseg"]))
def test_emau_finite_or_one_clear_error_and_buffers_kept(x, training, rule):
    torch.manual_seed(0)
    emau = EMAU(EMAU_C, num_bases=2, num_stages=2, bases_update=rule).train(training)
    before = {name: value.clone() for name, value in emau.named_buffers()}
    try:
        out = emau(x)
    except (ValueError, TypeError) as error:
        assert_clear_refusal(error, ("x",))
        for name, value in emau.named_buffers():
            assert torch.equal(value, before[name]), f"{name} changed by a refused call"
        return
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    for name, value in emau.named_buffers():
        assert bool(torch.isfinite(value).all()), name


# --- every network entry point: NaN at a random place, huge values, B = 0, NumPy -------------

NETWORK_ENTRY_POINTS = {  # constructor, channels, spatial size (None: drawn small)
    "EMANet": (lambda: emanet_tiny(3), 3, 16),
    "ResNet": (lambda: ResNet((1, 1, 1, 1), base_width=4, deep_stem=True), 3, 16),
    "EMAU": (lambda: EMAU(EMAU_C, num_bases=2, num_stages=2), EMAU_C, None),
    "NonLocal2d": (lambda: NonLocal2d(EMAU_C), EMAU_C, None),
    "ImagePooling2d": (lambda: ImagePooling2d(EMAU_C), EMAU_C, None),
}


@st.composite
def network_calls(draw, name):
    """(training, x, fault, image at fault) for entry point ``name``: x holds NaN or inf at a
    random pixel of a random image, or all of its values scaled by up to 1e38, or is a NumPy
    array."""
    _, channels, side = NETWORK_ENTRY_POINTS[name]
    b = draw(st.integers(0, 3))
    h, w = (side, side) if side else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    x = torch.from_numpy(draw(hnp.arrays(np.float32, (b, channels, h, w),
                                         elements=values(np.float32, "moderate"))))
    fault = draw(st.sampled_from(["none", "nan", "inf", "huge", "numpy"]))
    image = None
    if fault in ("nan", "inf") and b:
        image = draw(st.integers(0, b - 1))
        where = (image, *(draw(st.integers(0, n - 1)) for n in (channels, h, w)))
        x[where] = math.nan if fault == "nan" else draw(st.sampled_from([math.inf, -math.inf]))
    elif fault == "huge":
        x = x * 10.0 ** draw(st.integers(0, 38))
    elif fault == "numpy":
        x = x.numpy()
    return draw(st.booleans()), x, fault, image


@pytest.mark.parametrize("name", NETWORK_ENTRY_POINTS)
@FAST
@given(data=st.data())
def test_network_entry_points_finite_or_one_clear_error(name, data):
    """Never a silent NaN: NaN or inf is refused naming its image (in eval mode too), an empty
    batch in training is refused, NumPy is a TypeError; otherwise finite numbers, and any
    refusal leaves every buffer (num_batches_tracked included) bit-identical."""
    training, x, fault, image = data.draw(network_calls(name))
    torch.manual_seed(0)
    module = NETWORK_ENTRY_POINTS[name][0]().train(training)
    before = {key: value.clone() for key, value in module.named_buffers()}
    try:
        out = module(x)
    except (ValueError, TypeError) as error:
        assert_clear_refusal(error, ("x",))
        assert "\n" not in str(error)
        for key, value in module.named_buffers():
            assert torch.equal(value, before[key]), f"{key} changed by a refused call"
        if fault == "numpy":
            assert isinstance(error, TypeError) and "torch.from_numpy(x)" in str(error)
        elif image is not None:
            assert re.search(rf"NaN or inf in image {image} of the batch", str(error))
        return
    assert fault != "numpy" and image is None, f"{fault} accepted"
    assert not (training and x.shape[0] == 0), "an empty batch accepted in training"
    assert out.shape[0] == x.shape[0] and bool(torch.isfinite(out).all())
    for key, value in module.named_buffers():
        assert bool(torch.isfinite(value).all()), key
        if not training:
            assert torch.equal(value, before[key]), f"{key} changed in eval mode"


# --- the Gaussian mixture --------------------------------------------------------------------
# The estimator is being rewritten; what this property finds in it today is listed below as
# strict expected failures, each with its cause, so that a fix shows up as an XPASS.

GMM_NAMES = ("X", "n_samples", "n_components", "reg_covar")


@st.composite
def data_matrices(draw):
    """X of shape (N, D), N and D from 0; sometimes another number of dimensions or no array."""
    shape = (draw(st.integers(0, 6)), draw(st.integers(0, 3)))
    if draw(st.integers(0, 7)) == 0:
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if draw(st.integers(0, 9)) == 0:
        return draw(NOT_ARRAYS)
    return draw(arrays(shape))


def check_fit_predict(X, n_components):
    from em_tutorial.gmm import GaussianMixture

    X_before = _snapshot(X)
    try:
        model = GaussianMixture(n_components, random_state=0, max_iter=20).fit(X)
        labels = model.predict(X)
    except Exception as error:  # noqa: BLE001 -- the property: only a clear refusal
        assert_clear_refusal(error, GMM_NAMES)
        assert _unchanged(X, X_before)
        return
    assert np.isfinite(model.means_).all() and np.isfinite(model.covariances_).all()
    assert ((0 <= labels) & (labels < n_components)).all()
    assert _unchanged(X, X_before)


def check_sample(n_samples):
    from em_tutorial.gmm import GaussianMixture

    model = GaussianMixture(2, random_state=0).fit(np.random.default_rng(0).normal(size=(20, 2)))
    try:
        X, _ = model.sample(n_samples)
    except Exception as error:  # noqa: BLE001
        assert_clear_refusal(error, GMM_NAMES)
        return
    assert isinstance(n_samples, int) and not isinstance(n_samples, bool)
    assert X.shape == (n_samples, 2) and np.isfinite(X).all()


_GOOD = np.random.default_rng(0).normal(size=(6, 2))
# Inputs that once escaped as errors from inside scikit-learn, SciPy or NumPy, or were accepted.
BAD_MIXTURE_DATA = {
    "one sample": [[1.0, 2.0]],
    "None": None,
    "a string": "x",
    "NaN": np.where(np.eye(6, 2) > 0, np.nan, _GOOD),
    "complex": _GOOD.astype(complex),
    "N = 0": np.zeros((0, 2)),
    "D = 0": np.zeros((5, 0)),
    "3-D": np.zeros((2, 3, 2)),
    "float32 1e30": np.float32(1e30) + _GOOD.astype(np.float32),
    "float64 1e300": 1e300 * _GOOD,
}
# Once passed the overflow check, then overflowed while whitening (found by the property below).
FLOAT32_NEAR_1E16 = np.array([[1.8446745e16], [0.0], [1.0]], dtype=np.float32)
BAD_SAMPLE_COUNTS = {"2.5": 2.5, "True": True, "'2'": "2", "None": None, "1e30": 1e30,
                     "10**20": 10**20}


@pytest.mark.parametrize("X", BAD_MIXTURE_DATA.values(), ids=BAD_MIXTURE_DATA.keys())
def test_mixture_refuses_bad_data_in_one_clear_error(X):
    from em_tutorial.gmm import GaussianMixture

    with pytest.raises((ValueError, TypeError)) as caught:
        GaussianMixture(2, random_state=0, max_iter=20).fit(X)
    assert_clear_refusal(caught.value, GMM_NAMES)


@pytest.mark.parametrize("n_samples", BAD_SAMPLE_COUNTS.values(), ids=BAD_SAMPLE_COUNTS.keys())
def test_mixture_refuses_bad_sample_counts(n_samples):
    from em_tutorial.gmm import GaussianMixture

    model = GaussianMixture(2, random_state=0).fit(_GOOD)
    with pytest.raises((ValueError, TypeError)) as caught:
        model.sample(n_samples)
    assert_clear_refusal(caught.value, GMM_NAMES)


def test_mixture_float32_near_the_overflow_threshold():
    """Distances over a variance of reg_covar overflow float32 long before the scatter does."""
    check_fit_predict(FLOAT32_NEAR_1E16, 2)
    check_fit_predict(np.array([[5.3367084e15], [0.0], [1.0]], dtype=np.float32), 2)


@settings(FAST)
@given(X=data_matrices(), n_components=st.integers(1, 3))
def test_mixture_fit_predict_finite_or_one_clear_error(X, n_components):
    check_fit_predict(X, n_components)


@settings(FAST)
@given(n_samples=st.one_of(st.integers(-2, 5), st.sampled_from([2.5, "2", None, True, 1e30])))
def test_mixture_sample_finite_or_one_clear_error(n_samples):
    check_sample(n_samples)


# --- the dataset readers ---------------------------------------------------------------------

READER_ERRORS = (ValueError, TypeError, IndexError, OSError)  # OSError: a missing/corrupt file


@st.composite
def scene_arguments(draw):
    """DigitScenes keyword arguments and SceneConfig fields, each sometimes odd."""
    odd = st.sampled_from([None, "2", 1.5, -1, math.nan, math.inf, True, (1, 2, 3)])
    def maybe(good):  # noqa: E306
        return draw(st.one_of(good, odd) if draw(st.integers(0, 7)) == 0 else good)
    config = {
        "image_size": maybe(st.integers(0, 24)),
        "digits_per_scene": maybe(st.tuples(st.integers(-1, 3), st.integers(-1, 3))),
        "digit_size": maybe(st.none() | st.tuples(st.integers(0, 12), st.integers(0, 12))),
        "ink_threshold": maybe(st.floats(-0.5, 1.5)),
        "noise_std": maybe(st.floats(-0.5, 1.5)),
    }
    scenes = {"split": maybe(st.sampled_from(["train", "val", "test"])),
              "num_scenes": maybe(st.integers(0, 2)), "seed": maybe(st.integers(-1, 2**70))}
    return scenes, config, maybe(st.integers(-3, 3))


@FAST
@given(arguments=scene_arguments())
def test_digit_scenes_finite_or_one_clear_error(arguments):
    from em_tutorial.segmentation.data.digits import DigitScenes, SceneConfig

    scenes, config, index = arguments
    try:
        data = DigitScenes(**scenes, config=SceneConfig(**config))
        image, label = data[index]
    except READER_ERRORS as error:
        assert_clear_refusal(error, (*scenes, *config, "index"), READER_ERRORS)
        return
    assert image.shape == (3, config["image_size"], config["image_size"])
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert label.shape == image.shape[1:] and label.min() >= 0 and label.max() < 11


IMAGE_FILES = ["ok", "missing", "empty", "text", "greyscale", "truncated"]
LABEL_FILES = ["ok", "missing", "empty", "rgb", "wrong size", "16-bit", "jpeg"]
LIST_FILES = ["plain", "blank lines and spaces", "empty", "missing", "unlisted id"]


def _write_image(path, kind, size=(6, 5)):
    """A file at ``path`` of the given ``kind`` (a readable image only for "ok"-like kinds)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {"greyscale": rng.integers(0, 256, size[::-1], dtype=np.uint8),
              "rgb": rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8),
              "wrong size": rng.integers(0, 21, (size[1] + 1, size[0]), dtype=np.uint8),
              "16-bit": rng.integers(0, 21, size[::-1], dtype=np.uint16)}
    if kind == "missing":
        return
    if kind in ("empty", "text"):
        path.write_text("" if kind == "empty" else "not an image")
        return
    if kind == "truncated":
        _write_image(path, "ok")
        path.write_bytes(path.read_bytes()[:40])
        return
    if kind in pixels:
        Image.fromarray(pixels[kind]).save(path, format="PNG")
        return
    image_like = path.suffix == ".jpg" or kind == "jpeg"
    array = (rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8) if image_like and kind == "ok"
             else rng.integers(0, 21, size[::-1], dtype=np.uint8))
    Image.fromarray(array).save(path, format="JPEG" if image_like else "PNG")


def _write_voc(root, images, labels, list_kind):
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    ids = [f"2007_{i:06d}" for i in range(len(images))]
    for image_id, image, label in zip(ids, images, labels):
        _write_image(root / "JPEGImages" / f"{image_id}.jpg", image)
        _write_image(root / "SegmentationClass" / f"{image_id}.png", label)
    lines = {"plain": ids, "blank lines and spaces": ["", *(f"  {i}  " for i in ids), " "],
             "empty": [], "unlisted id": [*ids, "2099_000000"]}
    if list_kind != "missing":
        (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(lines[list_kind]))


@FAST
@given(images=st.lists(st.sampled_from(IMAGE_FILES), min_size=1, max_size=3),
       labels=st.lists(st.sampled_from(LABEL_FILES), min_size=3, max_size=3),
       list_kind=st.sampled_from(LIST_FILES), split=st.sampled_from(["train", "val", ""]))
def test_voc_reader_finite_or_one_clear_error(images, labels, list_kind, split):
    from em_tutorial.segmentation.data.voc import VOCSegmentation

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "VOC2012"
        _write_voc(root, images, labels, list_kind)
        try:
            data = VOCSegmentation(root, split)
            samples = [data[i] for i in range(len(data))]
        except READER_ERRORS as error:
            assert_clear_refusal(error, (str(root), "split"), READER_ERRORS)
            return
    for image, label in samples:
        assert image.dtype == np.float32 and np.isfinite(image).all()
        assert label.shape == image.shape[1:]


TRAIN_COUNTS = ("iterations", "batch_size", "image_size", "warmup_iterations",
                "checkpoint_every", "log_every", "num_workers", "threads", "stop_at")


@st.composite
def train_settings(draw):
    """TrainConfig keyword arguments for the scenes: counts in and out of range, or odd values."""
    odd = st.sampled_from(["2", 1.5, math.nan, True, -1, 0, 10**9])
    settings_ = {"dataset": draw(st.sampled_from(["digits", "context"]))}
    for name in draw(st.sets(st.sampled_from(TRAIN_COUNTS), max_size=3)):
        settings_[name] = draw(st.one_of(st.integers(-2, 40), odd))
    return settings_


@FAST
@given(settings_=train_settings())
def test_train_config_valid_or_one_clear_error(settings_):
    """A training configuration is refused, before any work, in one line naming the field."""
    from em_tutorial.segmentation import TrainConfig

    try:
        config = TrainConfig(**settings_)
    except (ValueError, TypeError) as error:
        assert_clear_refusal(error, [*settings_, "stop_at", "warmup_iterations"])
        assert "\n" not in str(error)
        return
    assert config.iterations >= 1 and config.batch_size >= 1 and config.num_workers >= 0
    assert config.image_size >= 32 and 0 <= config.warmup_iterations < config.iterations
    assert config.stop_at is None or config.stop_at <= config.iterations
