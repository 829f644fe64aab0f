"""Figures: what each EMA basis attends to, predictions beside the truth, training curves.

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
    "label_palette",
    "predictions_figure",
    "training_curves_figure",
]


def label_palette() -> np.ndarray:
    """The PASCAL VOC colour map, shape (256, 3) uint8 (class 0 black, 255 cream).

    Colour of class c: the bits of c are dealt out in turn to red, green and blue, from the
    most significant bit of each channel down.
    """
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


def colorize(label) -> np.ndarray:
    """Class map (H, W) -> colour image (H, W, 3) uint8 with :func:`label_palette`."""
    return label_palette()[np.asarray(label, dtype=np.uint8)]


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
def attention_figure(
    model, image, label, path=None, class_names=None, max_bases=None, normalization="imagenet"
):
    """Image, truth, prediction, then the attention map of each of the K bases, for one image.

    Parameters
    ----------
    model : EMANet with an EMAU (``model.emau`` not None)
    image : array or Tensor, shape (3, H, W)
        A normalised image as the data sets return it.
    label : array, shape (H, W)
    path : path, optional
        Where to save the PNG.
    class_names : sequence of str, optional
        For the legend of classes present.
    max_bases : int, optional
        Show only the first ``max_bases`` maps.
    normalization : {"imagenet", "official"}
        The image's normalisation (see :func:`~em_tutorial.segmentation.data.to_model_input`).

    Returns
    -------
    matplotlib.figure.Figure
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
    num_bases = z.shape[1] if max_bases is None else min(max_bases, z.shape[1])
    maps = z[:, :num_bases].T.reshape(num_bases, h, w)  # (K, h, w): column k of z as an image

    cols = max(3, min(8, num_bases))
    rows = 1 + math.ceil(num_bases / cols)
    figure, axes = _new_figure(rows, cols)
    picture = denormalize(np.asarray(image), normalization)
    label = np.asarray(label)
    for ax, shown, title in zip(
        axes[0], (picture, colorize(label), colorize(prediction)), ("image", "truth", "prediction")
    ):
        ax.imshow(shown, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    if class_names is not None:
        for ax, title, classes in ((axes[0, 1], "truth", label), (axes[0, 2], "prediction", prediction)):
            present = [int(c) for c in np.unique(classes) if c < len(class_names)]  # 255 is not a class
            ax.set_title(f"{title}: " + ", ".join(class_names[c] for c in present), fontsize=7)
    height, width = label.shape
    top = max(float(maps.max()), 1e-12)  # one colour scale for all maps: z_nk in [0, top]
    for k in range(num_bases):
        ax = axes[1 + k // cols, k % cols]
        ax.imshow(picture, alpha=0.35, extent=(0, width, height, 0))
        ax.imshow(maps[k], cmap="magma", alpha=0.75, vmin=0.0, vmax=top,
                  extent=(0, width, height, 0), interpolation="bilinear")  # fmt: skip
        ax.set_title(f"basis {k}: z[:, {k}]", fontsize=8)
    figure.suptitle(f"EM attention maps: {num_bases} of K={z.shape[1]} bases, {h}x{w} features")
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
    figure, axes = _new_figure(len(indices), 2 + len(names))
    for row, index in enumerate(indices):
        image, _ = dataset[index]
        picture, truth = dataset.raw(index)
        axes[row, 0].imshow(picture)
        axes[row, 1].imshow(colorize(truth), interpolation="nearest")
        for col, name in enumerate(names, start=2):
            axes[row, col].imshow(colorize(_predict(models[name], image)), interpolation="nearest")
        if row == 0:
            for col, title in enumerate(["image", "truth"] + names):
                axes[0, col].set_title(title, fontsize=9)
    _class_legend(figure, getattr(dataset, "class_names", None))
    return _save(figure, path)


def _class_legend(figure, class_names):
    """A colour key of the classes below the figure."""
    if not class_names:
        return
    from matplotlib.patches import Patch

    colours = label_palette()[: len(class_names)] / 255.0
    handles = [Patch(color=c, label=name) for c, name in zip(colours, class_names)]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
                  fontsize=7, frameon=False)  # fmt: skip


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
        ax.plot([r["iteration"] for r in steps], [r["loss"] for r in steps], label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)
