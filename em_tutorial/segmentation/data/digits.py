"""Digit scenes: the embedded segmentation data set, built at run time from scikit-learn's digits.

Each scene is a small colour image with a textured, noisy background and a few handwritten
digits (scikit-learn's 8x8 ``load_digits``, scaled up with bilinear interpolation) in random
colours. Every pixel of a digit's ink is labelled with that digit's class; every other pixel is
background:

    label 0  = background,  label d + 1 = ink of digit d  (d = 0..9),  11 classes in all.

Why this needs context: a short piece of stroke looks the same in a 1, a 4 and a 7, and a loop
the same in a 6, an 8 and a 9. Only the whole digit (about 30 pixels across, so several cells
of an output-stride-8 feature map) tells which class its pixels belong to -- exactly what a
global attention module such as the EMAU gathers.

Nothing is downloaded: ``load_digits`` ships with scikit-learn. Scene ``i`` of a split depends
only on ``(seed, split, i)``, so any scene can be rebuilt on its own and the set is the same on
every machine and in every process.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arguments import check_index, check_integer, check_real
from .labels import check_label
from .transforms import IGNORE_INDEX, to_model_input

__all__ = [
    "DIGIT_CLASS_NAMES",
    "DIGIT_SPLITS",
    "DigitScenes",
    "SceneConfig",
    "composite_glyph",
    "digit_pool",
    "render_scene",
    "textured_background",
    "upscale_glyph",
]

DIGIT_CLASS_NAMES = ("background",) + tuple(str(d) for d in range(10))

# Each split draws its digits from its own writers' samples: validation digits are never seen
# in training. Every fifth sample of load_digits is held out (stratified: the set cycles 0..9).
_HELD_OUT_EVERY = 5
_SPLIT_CODES = {"train": 0, "val": 1}
DIGIT_SPLITS = tuple(_SPLIT_CODES)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn.

    Attributes
    ----------
    image_size : int
        Height and width of a scene in pixels.
    digits_per_scene : (int, int)
        Inclusive range of the number of digits placed (fewer when no free spot is found).
    digit_size : (int, int), optional
        Inclusive range of the side, in pixels, of a digit's upscaled 8x8 glyph. Default:
        3/8 to 1/2 of ``image_size`` (36 to 48 pixels in a 96-pixel scene), so that a digit
        spans several cells of an output-stride-8 feature map.
    ink_threshold : float
        A pixel is labelled as ink where the upscaled glyph intensity (0..1) is at least this.
    noise_std : float
        Standard deviation of the per-pixel Gaussian noise added last (image range 0..1).
    """

    image_size: int = 96
    digits_per_scene: tuple[int, int] = (2, 3)
    digit_size: tuple[int, int] | None = None
    ink_threshold: float = 0.25
    noise_std: float = 0.04

    def __post_init__(self):
        check_integer("image_size", self.image_size, 3)  # the smallest with a default digit
        check_real("ink_threshold", self.ink_threshold, 0.0, 1.0)
        check_real("noise_std", self.noise_std, 0.0, 1.0)
        if self.digit_size is None:
            size = (3 * self.image_size // 8, self.image_size // 2)
            object.__setattr__(self, "digit_size", size)
        for name, pair, minimum in (("digits_per_scene", self.digits_per_scene, 0),
                                    ("digit_size", self.digit_size, 1)):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"{name} must be a pair (low, high), got {pair!r}")
            low, high = (check_integer(name, value, minimum) for value in pair)
            if low > high:
                raise ValueError(f"{name} must satisfy low <= high, got {pair!r}")
        low, high = self.digit_size
        if not 1 <= low <= high <= self.image_size:
            raise ValueError(
                f"digit_size must satisfy 1 <= low <= high <= image_size={self.image_size}, "
                f"got {self.digit_size}"
            )


def digit_pool(split: str):
    """Glyphs and classes of one split of ``sklearn.datasets.load_digits``.

    Returns
    -------
    glyphs : ndarray, shape (M, 8, 8), float64 in [0, 1]
    classes : ndarray, shape (M,), int64 in 0..9
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    images, targets = _load_digits()
    held_out = np.arange(len(targets)) % _HELD_OUT_EVERY == 0
    keep = held_out if split == "val" else ~held_out
    return images[keep] / 16.0, targets[keep].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def _bilinear_matrix(n_in: int, n_out: int):
    """Matrix ``A`` (n_out x n_in) with ``A @ v`` = bilinear resampling of ``v`` to n_out samples.

    Output sample ``i`` has its centre at input coordinate ``u = (i + 0.5) * n_in / n_out - 0.5``
    and takes ``(1 - f) v[floor(u)] + f v[floor(u) + 1]`` with ``f = u - floor(u)``; samples
    beyond either end count as 0, so strokes fade out smoothly at the border.
    """
    u = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5  # (n_out,)
    left = np.floor(u).astype(np.int64)
    frac = u - left
    matrix = np.zeros((n_out, n_in + 2))  # columns 0 and n_in + 1 stand for the zero border
    rows = np.arange(n_out)
    matrix[rows, left + 1] = 1.0 - frac
    matrix[rows, left + 2] = frac
    return matrix[:, 1:-1]


def upscale_glyph(glyph, size: int):
    """Bilinear upscaling of an 8x8 glyph to ``size x size`` pixels (pixel centres aligned).

    Returns
    -------
    ndarray, shape (size, size), float64 in [0, 1]
    """
    glyph = np.asarray(glyph, dtype=np.float64)
    rows = _bilinear_matrix(glyph.shape[0], size)  # (size, 8)
    cols = _bilinear_matrix(glyph.shape[1], size)  # (size, 8)
    return rows @ glyph @ cols.T  # (size, 8) @ (8, 8) @ (8, size) -> (size, size)


def textured_background(rng, size: int):
    """A random colour texture: base colour + an oriented grating + smooth blotches.

    Returns
    -------
    ndarray, shape (size, size, 3), float64 (roughly in [0, 1]; clipped after compositing)
    """
    base = rng.uniform(0.25, 0.75, size=3)  # (3,)
    angle = rng.uniform(0, np.pi)
    frequency = rng.uniform(0.04, 0.25)  # cycles per pixel
    phase = rng.uniform(0, 2 * np.pi)
    # sin(a x + b y + phase) = sin(a x) cos(b y + phase) + cos(a x) sin(b y + phase): two outer
    # products of length-S vectors instead of a sine per pixel.
    steps = np.arange(size, dtype=np.float64)
    along_x = 2 * np.pi * frequency * np.cos(angle) * steps  # (S,)
    along_y = 2 * np.pi * frequency * np.sin(angle) * steps + phase  # (S,)
    grating = np.outer(np.cos(along_y), np.sin(along_x)) + np.outer(np.sin(along_y), np.cos(along_x))
    grating_colour = rng.uniform(-0.12, 0.12, size=3)  # (3,)
    # Smooth blotches: coarse noise (one value per ~6 pixels) upscaled bilinearly.
    coarse = rng.standard_normal((3, size // 6 + 2, size // 6 + 2))  # (3, s, s)
    upscale = _bilinear_matrix(coarse.shape[1], size)  # (S, s)
    blotches = (upscale @ coarse @ upscale.T).transpose(1, 2, 0)  # (S, S, 3)
    blotches *= 0.08 / (blotches.std() + 1e-12)
    return base + grating[..., None] * grating_colour + blotches  # (S, S, 3)


def _ink_colour(rng, background_mean):
    """A colour whose brightness is clearly away from the background's mean."""
    darker = background_mean.mean() > 0.5
    shift = rng.uniform(0.45, 0.6) * (-1.0 if darker else 1.0)
    return np.clip(background_mean + shift + rng.uniform(-0.1, 0.1, size=3), 0.0, 1.0)


def render_scene(background, glyphs, classes, positions, sizes, colours, ink_threshold=0.4):
    """Composite digits onto a background and label their ink (the deterministic core).

    Parameters
    ----------
    background : ndarray, shape (S, S, 3)
    glyphs : sequence of ndarray, each shape (8, 8), intensities in [0, 1]
    classes : sequence of int
        Digit class (0..9) of each glyph.
    positions : sequence of (int, int)
        Top-left corner (row, column) of each upscaled glyph.
    sizes : sequence of int
        Side in pixels of each upscaled glyph.
    colours : sequence of array_like, each shape (3,)
        Ink colour of each digit.
    ink_threshold : float
        Upscaled intensity from which a pixel is labelled as the digit's ink.

    Returns
    -------
    image : ndarray, shape (S, S, 3), float64 in [0, 1]
    label : ndarray, shape (S, S), uint8 -- 0 background, ``class + 1`` on ink
    """
    image = np.array(background, dtype=np.float64)
    label = np.zeros(image.shape[:2], dtype=np.uint8)
    for glyph, cls, position, size, colour in zip(glyphs, classes, positions, sizes, colours):
        composite_glyph(image, label, upscale_glyph(glyph, size), position, colour, cls,
                        ink_threshold)  # fmt: skip
    return np.clip(image, 0.0, 1.0), label


def composite_glyph(image, label, alpha, position, colour, cls, ink_threshold):
    """Paint one upscaled glyph into ``image`` and ``label`` in place.

    Parameters
    ----------
    image : ndarray, shape (S, S, 3), float64
    label : ndarray, shape (S, S), uint8
    alpha : ndarray, shape (h, w)
        Glyph intensity in [0, 1], used as opacity; it must fit inside the image at ``position``.
    position : (int, int)
        Top-left corner (row, column).
    colour : array_like, shape (3,)
    cls : int
        Digit class; its ink is labelled ``cls + 1``.
    ink_threshold : float
    """
    top, left = position
    window = (slice(top, top + alpha.shape[0]), slice(left, left + alpha.shape[1]))
    # x = (1 - a) * background + a * ink: the glyph's intensity is its opacity
    opacity = alpha[..., None]  # (h, w, 1)
    image[window] = (1.0 - opacity) * image[window] + opacity * np.asarray(colour, dtype=float)
    label[window][alpha >= ink_threshold] = cls + 1


def _place(rng, sizes, image_size, tries=50):
    """Top-left corners for the glyphs, their ink areas not overlapping (rejection sampling).

    The digits of ``load_digits`` leave about one of their eight pixels blank on each side, so
    the glyph squares may overlap by that margin while their ink stays apart.
    """
    placed, boxes = [], []
    for size in sizes:
        margin = size // 8
        for _ in range(tries):
            top, left = (int(v) for v in rng.integers(0, image_size - size + 1, size=2))
            box = (top + margin, left + margin, top + size - margin, left + size - margin)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]
                   for b in boxes):
                placed.append(((top, left), int(size)))
                boxes.append(box)
                break
    return placed


class DigitScenes:
    """The digit-scenes segmentation data set (deterministic for a given seed).

    Parameters
    ----------
    split : {"train", "val"}
        Training scenes use 4/5 of ``load_digits``, validation scenes the other 1/5.
    num_scenes : int
        Number of scenes in this split.
    seed : int
        Scene ``i`` is drawn from ``numpy.random.default_rng((seed, split, i))``.
    config : SceneConfig, optional
    transform : callable, optional
        ``transform(image_uint8 (S,S,3), label (S,S), rng=None) -> (image, label)``; by default
        :func:`em_tutorial.segmentation.data.transforms.to_model_input` (ImageNet normalisation, CHW float32).
    cache_dir : path, optional
        A folder where the rendered scenes are kept (one ``.npz`` per set, named by what it
        depends on), so that runs that need the same scenes render them once.

    Notes
    -----
    All scenes are rendered once, at construction, into uint8 arrays (a 96x96 scene: 27 KiB
    of image, 9 KiB of label). ``dataset[i]`` returns the transformed pair; ``dataset.raw(i)``
    the uint8 image and label for display.
    """

    num_classes = len(DIGIT_CLASS_NAMES)
    class_names = DIGIT_CLASS_NAMES
    ignore_index = IGNORE_INDEX
    config_type = SceneConfig
    stream_key = ()
    """Appended to each scene's random-stream key (seed, split, i); other scene sets set
    their own."""
    kind = "digit scene"

    def __init__(self, split="train", num_scenes=2000, seed=0, config=None, transform=None,
                 cache_dir=None):  # fmt: skip
        check_integer("num_scenes", num_scenes, 1)
        self.split = split
        self.seed = check_integer("seed", seed, 0)  # numpy's seeds are non-negative
        if config is not None and not isinstance(config, self.config_type):
            raise TypeError(
                f"config must be a {self.config_type.__name__}, got {type(config).__name__}"
            )
        self.config = config or self.config_type()
        self.transform = transform or to_model_input
        cached = None if cache_dir is None else Path(cache_dir) / f"{self._cache_name(num_scenes)}.npz"
        if cached is not None and cached.exists():
            with np.load(cached) as arrays:
                for name in self.rendered_arrays:
                    setattr(self, name, arrays[name])
            return
        glyphs, classes = digit_pool(split)
        size = self.config.image_size
        self.images = np.empty((num_scenes, size, size, 3), dtype=np.uint8)
        self.labels = np.empty((num_scenes, size, size), dtype=np.uint8)
        for i in range(num_scenes):
            rng = np.random.default_rng((self.seed, _SPLIT_CODES[split], i, *self.stream_key))
            image, label = self._draw(rng, glyphs, classes)
            self.images[i] = np.round(image * 255).astype(np.uint8)
            self.labels[i] = label
        self._finish_rendering()
        if cached is not None:  # written whole, then renamed: a reader never sees half a file
            cached.parent.mkdir(parents=True, exist_ok=True)
            temporary = cached.with_name(f".{cached.stem}.{os.getpid()}.tmp.npz")
            np.savez(temporary, **{name: getattr(self, name) for name in self.rendered_arrays})
            os.replace(temporary, cached)

    rendered_arrays = ("images", "labels")
    """The arrays that rendering fills (and a cache keeps)."""

    def _finish_rendering(self):
        """Called once all scenes are drawn (subclasses gather what ``_draw`` collected)."""

    def _cache_name(self, num_scenes: int) -> str:
        """What the scenes depend on, hashed: class, split, seed, count, config and options."""
        key = repr((type(self).__name__, self.split, self.seed, num_scenes, self.config,
                    self._cache_options()))  # fmt: skip
        return f"{self.kind.replace(' ', '_')}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    def _cache_options(self) -> tuple:
        return ()

    def _draw(self, rng, glyphs, classes):
        cfg = self.config
        background = textured_background(rng, cfg.image_size)
        count = rng.integers(cfg.digits_per_scene[0], cfg.digits_per_scene[1] + 1)
        sizes = rng.integers(cfg.digit_size[0], cfg.digit_size[1] + 1, size=count)
        placed = _place(rng, sizes, cfg.image_size)
        picks = rng.integers(0, len(classes), size=len(placed))
        background_mean = background.mean(axis=(0, 1))  # (3,)
        colours = [_ink_colour(rng, background_mean) for _ in placed]
        image, label = render_scene(
            background,
            glyphs[picks],
            classes[picks],
            [p for p, _ in placed],
            [s for _, s in placed],
            colours,
            cfg.ink_threshold,
        )
        image += cfg.noise_std * rng.standard_normal(image.shape, dtype=np.float32)
        return np.clip(image, 0.0, 1.0, out=image), label

    def __len__(self):
        return len(self.images)

    def raw(self, index):
        """The scene as stored: image ``(S, S, 3)`` uint8 and label ``(S, S)`` uint8.

        The label is checked like a file read from disk (class indices or 255), so every
        reader keeps the same promise.
        """
        where = f"of {self.kind} {index} of the {self.split!r} split"
        label = check_label(self.labels[index], self.num_classes, self.ignore_index, where)
        return self.images[index], label

    def __getitem__(self, key):
        # The sampler may pass (index, augmentation seed); digit scenes need no augmentation.
        index = check_index(key[0] if isinstance(key, tuple) else key, len(self))
        return self.transform(*self.raw(index), rng=None)
