"""Context scenes: an embedded task that the convolutions alone provably cannot solve.

Each scene holds ONE digit class, drawn several times in one ink colour:

* two or three **full** instances, somewhere in the scene, and
* two or three **fragments** along one border: digits of the same class (other handwriting
  samples) of which only a strip -- 35 to 50 % of the glyph's width or height -- lies inside
  the image, the rest being cut off by the border.

Every ink pixel is labelled with the scene's class (label ``d + 1`` for digit ``d``, 0 for the
background, as in :class:`~em_tutorial.segmentation.data.DigitScenes`). A strip of a digit is
ambiguous on its own (the left third of a 0, a 6 and an 8 look alike), so the label of a
fragment is decided by the full instance. The full instances are placed at least
``context_distance`` pixels (Chebyshev distance, box to box) from every fragment: with the
default 104, farther than the reach of the tiny EMANet's theoretical receptive field (a
199-px square, so a reach of 99 px, measured by
:func:`~em_tutorial.segmentation.receptive_field.theoretical_receptive_field`), so no output
pixel of a fragment even *sees* a pixel of a full instance through the convolutions. Only a
block that mixes information across the whole image -- image pooling, the non-local block,
the EMAU -- can carry the class over.

Two edits of the same scenes test that directly (``far_digits``): ``"swap"`` draws the full
instances as another class (same places, same colour, same noise; the fragments and their
labels unchanged), ``"remove"`` leaves them out, so the background texture shows where they
were. A network whose fragment predictions follow the swap reads the far digits.

The fragments' pixels are marked (:meth:`ContextScenes.fragment_windows`), so that their IoU
can be measured apart (:meth:`ContextScenes.fragments_only`). Scene ``i`` depends only on
``(seed, split, i)``; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .digits import (
    DigitScenes,
    _ink_colour,
    composite_glyph,
    textured_background,
    upscale_glyph,
)

__all__ = ["FAR_DIGITS", "ContextConfig", "ContextScenes"]

FAR_DIGITS = ("keep", "swap", "remove")
"""What :class:`ContextScenes` does with the full instances: draw, swap or leave out."""


@dataclass(frozen=True)
class ContextConfig:
    """How context scenes are drawn.

    Attributes
    ----------
    image_size : int
        Height and width of a scene in pixels (192: a 24 x 24 feature map at output stride 8).
    full_digits, fragments : (int, int)
        Inclusive ranges of the numbers of full instances and of border fragments.
    digit_size : (int, int)
        Inclusive range of a glyph's side in pixels (36 to 48: the digits of the 96-px
        digit scenes, on which the context runs' backbones learn to read).
    visible_fraction : (float, float)
        Range of the share of a fragment's glyph that lies inside the image.
    context_distance : int
        Least Chebyshev distance in pixels between a full instance's box and a fragment's
        visible box.
    ink_threshold, noise_std
        As in :class:`~em_tutorial.segmentation.data.SceneConfig`.
    """

    image_size: int = 192
    full_digits: tuple[int, int] = (2, 3)
    fragments: tuple[int, int] = (2, 3)
    digit_size: tuple[int, int] = (36, 48)
    visible_fraction: tuple[float, float] = (0.35, 0.5)
    context_distance: int = 104
    ink_threshold: float = 0.25
    noise_std: float = 0.04

    def __post_init__(self):
        strip = int(np.ceil(self.visible_fraction[1] * self.digit_size[1]))
        if strip + self.context_distance + self.digit_size[1] > self.image_size:
            raise ValueError(
                f"image_size {self.image_size} leaves no room for a full digit of "
                f"{self.digit_size[1]} px at context_distance {self.context_distance} px from a "
                f"{strip}-px fragment strip; use a larger image or a shorter distance"
            )


def _fragment_boxes(rng, cfg: ContextConfig):
    """Glyph sides and visible strips of the fragments along the left border (before rotation).

    Returns a list of ``(size, top, visible)``: the glyph's side, its top row, and how many of
    its rightmost columns lie inside the image (columns ``0 .. visible - 1``).
    """
    count = int(rng.integers(cfg.fragments[0], cfg.fragments[1] + 1))
    boxes, rows_taken = [], []
    for _ in range(20 * count):
        if len(boxes) == count:
            break
        size = int(rng.integers(cfg.digit_size[0], cfg.digit_size[1] + 1))
        top = int(rng.integers(0, cfg.image_size - size + 1))
        if any(top < end and start < top + size for start, end in rows_taken):
            continue
        visible = int(round(rng.uniform(*cfg.visible_fraction) * size))
        boxes.append((size, top, visible))
        rows_taken.append((top, top + size))
    return boxes


def _full_boxes(rng, cfg: ContextConfig, left_limit: int):
    """(size, top, left) of the full instances, right of column ``left_limit``, not overlapping."""
    count = int(rng.integers(cfg.full_digits[0], cfg.full_digits[1] + 1))
    boxes = []
    for _ in range(20 * count):
        if len(boxes) == count:
            break
        size = int(rng.integers(cfg.digit_size[0], cfg.digit_size[1] + 1))
        top = int(rng.integers(0, cfg.image_size - size + 1))
        left = int(rng.integers(left_limit, cfg.image_size - size + 1))
        if all(top + size <= t or t + s <= top or left + size <= l or l + s <= left
               for s, t, l in boxes):  # fmt: skip
            boxes.append((size, top, left))
    return boxes


class ContextScenes(DigitScenes):
    """The context-scenes segmentation data set (deterministic for a given seed).

    Parameters
    ----------
    split : {"train", "val"}
        Digits from the same held-out writers' samples as :class:`DigitScenes`.
    num_scenes : int
    seed : int
    config : ContextConfig, optional
    transform : callable, optional
        As in :class:`DigitScenes`; default :func:`to_model_input`.
    far_digits : {"keep", "swap", "remove"}
        The full instances as drawn, drawn as another class (:attr:`far_classes`), or left
        out. Everything else of scene ``i`` is the same in all three.

    Attributes
    ----------
    scene_classes : ndarray of int, shape (num_scenes,)
        The digit (0..9) of each scene's fragments.
    far_classes : ndarray of int, shape (num_scenes,)
        The digit of its full instances: ``scene_classes`` unless ``far_digits="swap"``.

    Notes
    -----
    ``raw(i)`` gives the uint8 image and label; :meth:`fragment_windows` the boolean map of
    the fragments' visible strips (``True`` inside them). Storage, label checks and indexing are
    :class:`DigitScenes`'s; only the drawing of a scene differs.
    """

    config_type = ContextConfig
    stream_key = (7,)  # keeps these streams apart from the digit scenes' (seed, split, i)
    kind = "context scene"

    rendered_arrays = ("images", "labels", "windows", "scene_classes", "far_classes")

    def __init__(self, split="train", num_scenes=1000, seed=0, config=None, transform=None,
                 far_digits="keep", cache_dir=None):  # fmt: skip
        if far_digits not in FAR_DIGITS:
            raise ValueError(f"far_digits must be one of {FAR_DIGITS}, got {far_digits!r}")
        self.far_digits = far_digits
        self._windows, self._classes = [], []  # filled by _draw, scene by scene
        super().__init__(split, num_scenes, seed, config, transform, cache_dir)
        del self._windows, self._classes

    def _finish_rendering(self):
        self.windows = np.stack(self._windows)  # (num_scenes, S, S)
        self.scene_classes, self.far_classes = np.array(self._classes).reshape(-1, 2).T

    def _cache_options(self) -> tuple:
        return (self.far_digits,)

    def _draw(self, rng, glyphs, classes):
        """One scene laid out with its fragments on the left, then turned by 0-3 quarter turns
        (the fragments' border: left, bottom, right or top); its fragments' strips go to the
        windows. The glyphs are drawn turned back by the same amount, so that every digit
        reads upright in the final scene (a 6 turned by half a turn would be a 9).

        The swap's class and glyphs come from a generator spawned from ``rng``, which leaves
        ``rng``'s stream untouched: every other draw is the same whatever ``far_digits`` is."""
        cfg = self.config
        swap_rng = rng.spawn(1)[0]
        turns = int(rng.integers(0, 4))
        background = textured_background(rng, cfg.image_size)
        colour = _ink_colour(rng, background.mean(axis=(0, 1)))
        digit = int(rng.integers(0, 10))
        samples = np.flatnonzero(classes == digit)
        image = background
        label = np.zeros((cfg.image_size,) * 2, dtype=np.uint8)
        windows = np.zeros_like(label, dtype=bool)

        def upright_glyph(size):
            return np.rot90(upscale_glyph(glyphs[rng.choice(samples)], size), -turns)

        fragments = _fragment_boxes(rng, cfg)
        for size, top, visible in fragments:
            alpha = upright_glyph(size)[:, size - visible:]  # the strip inside the image
            composite_glyph(image, label, alpha, (top, 0), colour, digit, cfg.ink_threshold)
            windows[top:top + size, :visible] = True
        strip = max(visible for _, _, visible in fragments)
        far_digit = digit
        if self.far_digits == "swap":  # any class but the fragments'
            far_digit = (digit + 1 + int(swap_rng.integers(0, 9))) % 10
        far_samples = np.flatnonzero(classes == far_digit)
        for size, top, left in _full_boxes(rng, cfg, strip + cfg.context_distance):
            glyph = upright_glyph(size)  # drawn in every mode, to keep rng's stream
            if self.far_digits == "remove":
                continue
            if self.far_digits == "swap":
                glyph = np.rot90(upscale_glyph(glyphs[swap_rng.choice(far_samples)], size), -turns)
            composite_glyph(image, label, glyph, (top, left), colour, far_digit,
                            cfg.ink_threshold)  # fmt: skip
        image += cfg.noise_std * rng.standard_normal(image.shape)
        self._windows.append(np.rot90(windows, turns))
        self._classes += [digit, far_digit]
        return np.rot90(np.clip(image, 0.0, 1.0), turns), np.rot90(label, turns)

    def fragment_windows(self, index):
        """Boolean map ``(S, S)``: True on the visible strips of the scene's fragments."""
        return self.windows[index]

    def fragments_only(self):
        """The same scenes with every label outside the fragments' strips set to ignore (255).

        Evaluating a model on it gives the IoU of the fragments alone.
        """
        return _FragmentsOnly(self)


class _FragmentsOnly:
    """View of a :class:`ContextScenes` whose labels count inside the fragments' strips only."""

    def __init__(self, scenes: ContextScenes):
        self.scenes = scenes
        self.num_classes, self.class_names = scenes.num_classes, scenes.class_names
        self.ignore_index = scenes.ignore_index

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        image, label = self.scenes[index]
        label = np.where(self.scenes.fragment_windows(index), label, self.ignore_index)
        return image, label
