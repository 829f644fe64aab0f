"""Figures: what each EMA basis attends to, predictions beside the truth, training curves, and
the receptive field of the convolutions drawn on a scene.

The attention maps come straight from the EM attention's responsibilities: after a forward
pass ``model.emau.last_z`` holds ``z`` of shape (B, h*w, K), and column k of ``z`` reshaped to
h x w shows which pixels basis mu_k explains (``z_nk``, the E-step of eq. (5)). Bases tend to
specialise -- some on the background, some on the strokes of particular digits.

Figures are drawn with ``matplotlib.figure.Figure`` (no pyplot, no GUI backend needed) and
saved as PNG; each function also returns its figure for display in a notebook.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .data.transforms import denormalize

__all__ = [
    "attention_figure",
    "colorize",
    "emau_maps",
    "label_palette",
    "predictions_figure",
    "receptive_field_figure",
    "swap_figure",
    "training_curves_figure",
]

# Background black, then matplotlib's "tab10": ten hues that stay apart for the ten digits.
_DIGIT_COLOURS = ["#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]  # fmt: skip


def label_palette(num_classes: int | None = None) -> np.ndarray:
    """Colour of each class, shape (256, 3) uint8; index 255 (ignore) is cream.

    Up to 11 classes (the embedded scenes): black background and ten distinct hues. Otherwise
    the PASCAL VOC colour map: the bits of c are dealt out in turn to red, green and blue, from
    the most significant bit of each channel down.
    """
    palette = _voc_palette()
    if num_classes is not None and num_classes <= len(_DIGIT_COLOURS):
        hexes = _DIGIT_COLOURS[:num_classes]
        palette[: len(hexes)] = [[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in hexes]
    return palette


def _voc_palette() -> np.ndarray:
    palette = np.zeros((256, 3), dtype=np.uint8)
    for c in range(256):
        value, r, g, b = c, 0, 0, 0
        for bit in range(7, -1, -1):
            r |= (value & 1) << bit
            g |= ((value >> 1) & 1) << bit
            b |= ((value >> 2) & 1) << bit
            value >>= 3
        palette[c] = (r, g, b)
    return palette


def colorize(label, num_classes: int | None = None) -> np.ndarray:
    """Class map (H, W) -> colour image (H, W, 3) uint8 with :func:`label_palette`."""
    return label_palette(num_classes)[np.asarray(label, dtype=np.uint8)]


def _new_figure(rows, cols, size=2.0):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(cols * size, rows * size), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)  # (rows, cols) array of Axes
    for ax in axes.flat:
        ax.set_axis_off()
    return figure, axes


@torch.no_grad()
def _predict(model, image) -> np.ndarray:
    """Class map (H, W) of one normalised image (3, H, W), in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        x = torch.as_tensor(np.asarray(image))[None]  # (1, 3, H, W)
        x = x.to(next(model.parameters()).device)
        return model(x).argmax(dim=1)[0].cpu().numpy()  # (H, W)
    finally:
        model.train(was_training)


def _save(figure, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    return figure


@torch.no_grad()
def emau_maps(model, image):
    """Prediction and attention maps of one image: ``(prediction (H, W), z maps (K, h, w))``.

    Column k of the last E-step's ``z`` (B, h*w, K), reshaped to the h x w feature map, is the
    map of basis mu_k; ``maps.argmax(0)`` is the basis that explains each feature cell best.
    """
    emau = getattr(model, "emau", None)
    if emau is None:
        raise ValueError("the model has no EMAU (head='emau'), so there are no attention maps")
    shapes = []
    hook = emau.register_forward_hook(lambda module, inputs, output: shapes.append(output.shape))
    try:
        prediction = _predict(model, image)  # (H, W)
    finally:
        hook.remove()
    _, _, h, w = shapes[-1]
    z = emau.last_z[0].float().cpu().numpy()  # (h*w, K)
    return prediction, z.T.reshape(-1, h, w)  # (K, h, w)


def _show_argmax_basis(figure, ax, maps, extent):
    """The best-explaining basis of each feature cell, drawn cell by cell, with a colour bar.

    The bases get shades of one blue-to-yellow ramp (cividis), so that no basis wears a class's
    colour: the classes use ten distinct hues (:func:`label_palette`)."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap

    num_bases = len(maps)
    colours = ListedColormap(colormaps["cividis"](np.linspace(0.0, 1.0, num_bases)))
    norm = BoundaryNorm(np.arange(num_bases + 1) - 0.5, num_bases)
    shown = ax.imshow(maps.argmax(axis=0), cmap=colours, norm=norm, extent=extent,
                      interpolation="nearest")  # fmt: skip
    ticks = range(0, num_bases, max(1, num_bases // 8))
    # below the panel: a bar beside it would widen its column and open a gap in the grid
    figure.colorbar(shown, ax=ax, ticks=list(ticks), location="bottom", shrink=0.9,
                    label="basis k")  # fmt: skip
    ax.set_title("argmax_k z_nk", fontsize=9)


def attention_figure(
    model, image, label, path=None, class_names=None, max_bases=None, normalization="imagenet"
):
    """Image, truth, prediction, best basis per cell; then the map z[:, k] of each basis.

    Parameters
    ----------
    model : EMANet with an EMAU (``model.emau`` not None)
    image : array or Tensor, shape (3, H, W)
        A normalised image as the data sets return it.
    label : array, shape (H, W)
    path : path, optional
        Where to save the PNG.
    class_names : sequence of str, optional
        For the class legend (and the palette: up to 11 classes get ten distinct hues).
    max_bases : int, optional
        Show only the first ``max_bases`` maps.
    normalization : {"imagenet", "official"}
        The image's normalisation (see :func:`~em_tutorial.segmentation.data.to_model_input`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    prediction, all_maps = emau_maps(model, image)  # (H, W), (K, h, w)
    num_bases = len(all_maps) if max_bases is None else min(max_bases, len(all_maps))
    maps = all_maps[:num_bases]
    num_classes = None if class_names is None else len(class_names)
    cols = max(4, min(8, num_bases))
    figure, axes = _new_figure(1 + math.ceil(num_bases / cols), cols)
    figure.set_figheight(figure.get_figheight() + 1.5)  # room for two colour bars and the key
    picture, label = denormalize(np.asarray(image), normalization), np.asarray(label)
    extent = (0, label.shape[1], label.shape[0], 0)
    shown = (picture, colorize(label, num_classes), colorize(prediction, num_classes))
    for ax, image_shown, title in zip(axes[0], shown, ("image", "truth", "prediction")):
        ax.imshow(image_shown, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    _show_argmax_basis(figure, axes[0, 3], all_maps, extent)
    top = max(float(maps.max()), 1e-12)  # one colour scale for all maps: z_nk in [0, top]
    for k in range(num_bases):
        ax = axes[1 + k // cols, k % cols]
        ax.imshow(picture, alpha=0.35, extent=extent)
        heat = ax.imshow(maps[k], cmap="magma", alpha=0.75, vmin=0.0, vmax=top, extent=extent,
                         interpolation="nearest")  # fmt: skip
        ax.set_title(f"basis {k}: z[:, {k}]", fontsize=8)
    # horizontal: the label is longer than the rows of maps are high
    figure.colorbar(heat, ax=axes[1:, :].ravel().tolist(), location="bottom", shrink=0.5,
                    aspect=40, label="responsibility z_nk (one cell per feature position)")  # fmt: skip
    _class_legend(figure, class_names)
    shown = f"K={len(all_maps)}" if num_bases == len(all_maps) else \
        f"{num_bases} of K={len(all_maps)}"
    figure.suptitle(f"EM attention: {shown} bases, {maps.shape[1]}x{maps.shape[2]} feature "
                    "cells")  # fmt: skip
    return _save(figure, path)


@torch.no_grad()
def predictions_figure(models: dict, dataset, indices, path=None):
    """A row per image: the image, its truth, and the prediction of each model.

    Parameters
    ----------
    models : dict of name -> nn.Module
    dataset : a data set with ``raw(i)`` and ``__getitem__``
    indices : sequence of int
    """
    names = list(models)
    class_names = getattr(dataset, "class_names", None)
    num_classes = None if class_names is None else len(class_names)
    figure, axes = _new_figure(len(indices), 2 + len(names))
    for row, index in enumerate(indices):
        image, _ = dataset[index]
        picture, truth = dataset.raw(index)
        axes[row, 0].imshow(picture)
        axes[row, 1].imshow(colorize(truth, num_classes), interpolation="nearest")
        for col, name in enumerate(names, start=2):
            prediction = colorize(_predict(models[name], image), num_classes)
            axes[row, col].imshow(prediction, interpolation="nearest")
        if row == 0:
            for col, title in enumerate(["image", "truth"] + names):
                axes[0, col].set_title(title, fontsize=9)
    _class_legend(figure, class_names)
    return _save(figure, path)


def swap_figure(models: dict, kept, swapped, index: int = 0, path=None):
    """The swap test on one scene: the scene as drawn and with its far digits redrawn as another
    class (top and bottom row), and each model's prediction of both. The fragments' strips are
    outlined: a network that reads the far digits changes its fragments' class with them.

    Parameters
    ----------
    models : dict of name -> nn.Module
    kept, swapped : ContextScenes
        The same scenes with ``far_digits="keep"`` and ``"swap"``.
    index : int
    """
    names = list(models)
    num_classes = len(kept.class_names)
    figure, axes = _new_figure(2, 1 + len(names), size=2.2)
    windows = kept.fragment_windows(index)
    for row, (scenes, what) in enumerate(((kept, "far digits as drawn"),
                                          (swapped, "far digits swapped"))):  # fmt: skip
        image, _ = scenes[index]
        axes[row, 0].imshow(scenes.raw(index)[0])
        far = kept.class_names[scenes.far_classes[index] + 1]
        axes[row, 0].set_title(f"{what} (far: {far})", fontsize=8)
        for col, name in enumerate(names, start=1):
            prediction = colorize(_predict(models[name], image), num_classes)
            axes[row, col].imshow(prediction, interpolation="nearest")
            if row == 0:
                axes[row, col].set_title(name, fontsize=9)
        for ax in axes[row]:
            ax.contour(windows, levels=[0.5], colors="white", linewidths=0.8)
    _class_legend(figure, kept.class_names)
    return _save(figure, path)


def _class_legend(figure, class_names):
    """A colour key of the classes below the figure."""
    if not class_names:
        return
    from matplotlib.patches import Patch

    colours = label_palette(len(class_names))[: len(class_names)] / 255.0
    handles = [Patch(color=c, label=name) for c, name in zip(colours, class_names)]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
                  fontsize=7, frameon=False)  # fmt: skip


_MARKED_POINTS = 30
"""Loss curves of at most this many logged points are drawn with a marker at each point."""


def training_curves_figure(logs: dict, path=None):
    """Training loss against iteration for each run, from their ``log.jsonl`` files.

    Parameters
    ----------
    logs : dict of name -> path of a ``log.jsonl`` written by :func:`em_tutorial.segmentation.train`
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), layout="constrained")
    ax = figure.subplots()
    for name, log_path in logs.items():
        records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
        steps = [r for r in records if r.get("event") == "train"]
        # markers on a short log (a quick run logs a point or two): a lone point has no line
        marker = "o" if len(steps) <= _MARKED_POINTS else None
        ax.plot([r["iteration"] for r in steps], [r["loss"] for r in steps], label=name,
                marker=marker, markersize=4)  # fmt: skip
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=0)  # a lone point at the last iteration, not centred on its own axis
    ax.set_ylabel("cross-entropy loss (log scale)")
    ax.set_yscale("log")
    # plain numbers (0.1, 0.2, 0.5) on the log axis instead of powers of ten alone
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)


def receptive_field_figure(image, label, centre, theoretical, effective, path=None,
                           class_names=None):  # fmt: skip
    """A scene and its labels with the receptive fields of one output pixel drawn as squares.

    Parameters
    ----------
    image : array, shape (H, W, 3) uint8
    label : array, shape (H, W)
    centre : (int, int)
        (row, column) of the output pixel.
    theoretical, effective : int
        Sides of the squares (see :mod:`em_tutorial.segmentation.receptive_field`).
    class_names : sequence of str, optional
    """
    from matplotlib.patches import Rectangle

    figure, axes = _new_figure(1, 2, size=3.6)
    num_classes = None if class_names is None else len(class_names)
    shown = (np.asarray(image), colorize(label, num_classes))
    for ax, picture, title in zip(axes[0], shown, ("image", "labels")):
        ax.imshow(picture, interpolation="nearest")
        for side, style, name in ((theoretical, "--", "theoretical"), (effective, "-", "effective")):
            corner = (centre[1] - side / 2, centre[0] - side / 2)
            ax.add_patch(Rectangle(corner, side, side, fill=False, linestyle=style, linewidth=1.5,
                                   edgecolor="white", label=f"{name} field, {side} px"))  # fmt: skip
        ax.plot(centre[1], centre[0], "x", color="white", markersize=8)
        ax.set_xlim(-0.5, picture.shape[1] - 0.5)
        ax.set_ylim(picture.shape[0] - 0.5, -0.5)
        ax.set_title(title, fontsize=9)
    axes[0, 1].legend(loc="lower center", bbox_to_anchor=(0.5, -0.22), fontsize=7, ncol=2,
                      facecolor="0.35", labelcolor="white")  # fmt: skip
    figure.suptitle("What the convolutions see from the pixel marked x", fontsize=10)
    return _save(figure, path)
