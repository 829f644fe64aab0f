"""Block diagrams for the notebooks, drawn with matplotlib: tensors as boxes, operations, arrows.

A tensor is drawn as a rectangle whose sides are proportional to its shape, so the drawing
shows which dimension each step keeps, shrinks or creates. Coordinates are in data units of
an axis created by :func:`canvas`.
"""

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

TENSOR_COLOUR = "#cfe2f3"
BASES_COLOUR = "#f9cb9c"
ATTENTION_COLOUR = "#d9ead3"
OPERATION_COLOUR = "#f3f3f3"


def canvas(width, height, figsize, title=None):
    """A blank axis of ``width`` x ``height`` data units, without ticks or frame."""
    fig, ax = plt.subplots(figsize=figsize)
    ax.set(xlim=(0, width), ylim=(0, height), aspect="equal")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return fig, ax


def tensor(ax, x, y, width, height, name, shape, colour=TENSOR_COLOUR, shape_at="below"):
    """A tensor as a rectangle with lower-left corner (x, y); name inside, shape below it
    (``shape_at="below"``) or to its right (``"right"``)."""
    ax.add_patch(Rectangle((x, y), width, height, facecolor=colour, edgecolor="k", lw=1))
    ax.text(x + width / 2, y + height / 2, name, ha="center", va="center", fontsize=11)
    if shape_at == "right":
        ax.text(x + width + 0.2, y + height / 2, shape, ha="left", va="center", fontsize=8.5)
    else:
        ax.text(x + width / 2, y - 0.25, shape, ha="center", va="top", fontsize=8.5)
    return (x, y, width, height)


def operation(ax, x, y, width, height, text, colour=OPERATION_COLOUR, fontsize=9):
    """An operation as a rounded box centred at (x, y)."""
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.1", facecolor=colour, edgecolor="k"))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return (x - width / 2, y - height / 2, width, height)


def arrow(ax, start, end, text=None, curve=0.0, colour="k", text_offset=(0.0, 0.25)):
    """An arrow from ``start`` to ``end``; ``curve`` bends it (matplotlib's arc3 radius)."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=colour,
                                 connectionstyle=f"arc3,rad={curve}", lw=1.2))
    if text:
        middle_x = (start[0] + end[0]) / 2 + text_offset[0]
        middle_y = (start[1] + end[1]) / 2 + text_offset[1]
        ax.text(middle_x, middle_y, text, ha="center", va="bottom", fontsize=8.5, color=colour)


def right_of(box, gap=0.0):
    """The middle of a box's right side (plus ``gap``), from the tuple the drawers return."""
    x, y, width, height = box
    return (x + width + gap, y + height / 2)


def left_of(box, gap=0.0):
    x, y, _, height = box
    return (x - gap, y + height / 2)


def top_of(box, gap=0.0):
    x, y, width, height = box
    return (x + width / 2, y + height + gap)


def bottom_of(box, gap=0.0):
    x, y, width, _ = box
    return (x + width / 2, y - gap)
