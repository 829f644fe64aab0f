"""The figures a user sees first: a short loss curve shows, the attention figure's grid has no
gap and its colour-bar labels fit, and the bases wear no class colour."""

import json

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from em_tutorial.nn import emanet_tiny
from em_tutorial.segmentation import TOUR_MODEL
from em_tutorial.segmentation.figures import attention_figure, label_palette, training_curves_figure


def _log(path, losses):
    lines = [json.dumps({"event": "start", "iteration": 0})]
    lines += [json.dumps({"event": "train", "iteration": i + 1, "loss": loss})
              for i, loss in enumerate(losses)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_loss_curve_of_one_point_is_drawn_with_a_visible_marker(tmp_path):
    # A quick run logs a point or two; a line through one point draws nothing at all.
    logs = {"one point": _log(tmp_path / "a.jsonl", [1.2]),
            "long": _log(tmp_path / "b.jsonl", list(np.linspace(2.0, 0.5, 200)))}  # fmt: skip
    figure = training_curves_figure(logs, tmp_path / "loss.png")
    short, long = figure.axes[0].lines
    assert short.get_marker() not in (None, "None", "", " ") and short.get_markersize() > 0
    assert long.get_marker() in (None, "None", "", " ")  # a long curve stays a plain line
    assert figure.axes[0].get_xlim()[0] <= 0  # the lone point is not centred on its own axis
    assert (tmp_path / "loss.png").stat().st_size > 0


@pytest.fixture(scope="module")
def attention():
    torch.manual_seed(0)
    model = emanet_tiny(11, **{**TOUR_MODEL, "num_bases": 8}).eval()
    image = torch.randn(3, 64, 64).numpy()
    label = np.zeros((64, 64), dtype=np.int64)
    names = ("background",) + tuple(str(d) for d in range(10))
    figure = attention_figure(model, image, label, class_names=names)
    FigureCanvasAgg(figure).draw()  # lay the figure out
    return figure


def _window(artist, figure):
    return artist.get_window_extent(figure.canvas.get_renderer())


def test_attention_maps_sit_on_an_even_grid(attention):
    maps = [ax for ax in attention.axes if ax.get_title().startswith("basis ")]
    assert len(maps) == 8
    lefts = np.array([_window(ax, attention).x0 for ax in maps])
    steps = np.diff(lefts)
    # One row of eight equal cells: a colour bar beside one panel used to widen its column.
    np.testing.assert_allclose(steps, steps[0], rtol=0.02)


def test_attention_colour_bar_labels_lie_inside_the_figure(attention):
    canvas = attention.bbox
    colour_bars = [ax for ax in attention.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == 2
    for bar in colour_bars:
        for label in (bar.xaxis.label, bar.yaxis.label):
            if label.get_text():
                box = _window(label, attention)
                assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1, label.get_text()
                assert canvas.y0 <= box.y0 and box.y1 <= canvas.y1, label.get_text()


def test_basis_colours_are_not_class_colours(attention):
    argmax_panel = next(ax for ax in attention.axes if ax.get_title() == "argmax_k z_nk")
    shown = argmax_panel.images[0]
    bases = np.round(shown.cmap(shown.norm(np.arange(8)))[:, :3] * 255).astype(int)  # (K, 3)
    classes = label_palette(11)[:11].astype(int)  # (11, 3)
    distance = np.abs(bases[:, None, :] - classes[None, :, :]).sum(-1)  # (K, 11)
    assert distance.min() > 30
