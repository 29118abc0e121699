"""Confusion-matrix pictures for TensorBoard's Images tab (used by the builtin ``review-tensorboard``
plugin; a plugin reaches :func:`confusion_picture` through :mod:`mtbert.api`).

With matplotlib installed (``pip install 'mtbert[plot]'``; the dev extra has it) the picture
is a labelled figure: axis titles ("true class", "predicted class"), the task's class names
(``TaskSpec.class_names``, else the class ids) on the ticks, each cell's count written in it
and shaded by the fraction of its row (the class's recall), a title naming the task and the
step. Without matplotlib it is a plain heat map drawn here with a built-in digit font (class
ids in the margins, counts in the cells), so the review needs no extra package.
"""

from __future__ import annotations

from typing import Sequence

import torch

# 3x5 glyphs of the digits (rows top to bottom, "1" = ink).
_DIGITS = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
}
_GLYPH = {d: torch.tensor([[c == "1" for c in row] for row in rows]) for d, rows in _DIGITS.items()}

WHITE = torch.tensor([255.0, 255.0, 255.0])
DARK_BLUE = torch.tensor([8.0, 48.0, 107.0])
MARGIN_COLOUR = torch.tensor([235, 235, 235], dtype=torch.uint8)


def text_mask(text: str, scale: int) -> torch.Tensor:
    """A boolean ``[5*scale, (4*len-1)*scale]`` mask of ``text`` (digits only), one blank column apart."""
    columns = []
    for i, char in enumerate(text):
        if i:
            columns.append(torch.zeros(5, 1, dtype=torch.bool))
        columns.append(_GLYPH[char])
    mask = torch.cat(columns, dim=1)
    return mask.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)


def _stamp(image: torch.Tensor, text: str, top: int, left: int, height: int, width: int, colour: torch.Tensor,
           scale: int) -> None:
    """Draw ``text`` centred in the box ``(top, left, height, width)`` of an HWC uint8 image."""
    mask = text_mask(text, scale)
    h, w = mask.shape
    y = top + (height - h) // 2
    x = left + (width - w) // 2
    region = image[y:y + h, x:x + w]
    region[mask] = colour


def cell_colour(fraction: float) -> torch.Tensor:
    """White (0) to dark blue (1), as uint8 RGB."""
    f = min(max(float(fraction), 0.0), 1.0)
    return (WHITE + (DARK_BLUE - WHITE) * f).round().to(torch.uint8)


def confusion_image(matrix: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """An HWC uint8 heat map of a ``[true, predicted]`` count matrix, counts written in the cells.

    Cell ``(i, j)`` occupies rows ``margin + i*cell ..`` and columns ``margin + j*cell ..``; its
    colour is :func:`cell_colour` of ``matrix[i, j] / matrix[i].sum()`` (0 for an empty row).
    The top margin holds the predicted class ids, the left margin the true ones.
    """
    matrix = torch.as_tensor(matrix).long().cpu()
    classes = matrix.shape[0]
    longest = max(len(str(int(matrix.max()))) if matrix.numel() else 1, len(str(classes - 1)))
    cell = max(36, (4 * longest - 1) * scale + 8)
    margin = cell // 2 + 4
    size = margin + classes * cell
    image = torch.empty(size, size, 3, dtype=torch.uint8)
    image[:] = MARGIN_COLOUR
    rows = matrix.sum(dim=1)
    black = torch.tensor([0, 0, 0], dtype=torch.uint8)
    white = torch.tensor([255, 255, 255], dtype=torch.uint8)
    for i in range(classes):
        _stamp(image, str(i), margin + i * cell, 0, cell, margin, black, scale)  # true class, left
        _stamp(image, str(i), 0, margin + i * cell, margin, cell, black, scale)  # predicted class, top
        for j in range(classes):
            fraction = float(matrix[i, j]) / float(rows[i]) if rows[i] > 0 else 0.0
            top, left = margin + i * cell, margin + j * cell
            image[top:top + cell, left:left + cell] = cell_colour(fraction)
            image[top:top + cell, left] = MARGIN_COLOUR  # thin grid lines
            image[top, left:left + cell] = MARGIN_COLOUR
            _stamp(image, str(int(matrix[i, j])), top, left, cell, cell, white if fraction > 0.5 else black, scale)
    return image


def class_labels(classes: int, names: Sequence[str] | None) -> list[str]:
    """Tick labels: ``"0 very negative"`` with names, the bare id without."""
    if names is None or len(names) != classes:
        return [str(i) for i in range(classes)]
    return [f"{i} {name}" for i, name in enumerate(names)]


def confusion_figure(matrix: torch.Tensor, names: Sequence[str] | None = None, title: str = "") -> "object":
    """A matplotlib Figure of a ``[true, predicted]`` count matrix (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = torch.as_tensor(matrix).long().cpu()
    classes = matrix.shape[0]
    rows = matrix.sum(dim=1, keepdim=True).clamp(min=1)
    fractions = (matrix.double() / rows.double()).numpy()
    labels = class_labels(classes, names)
    side = 3.2 + 0.6 * classes
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(classes):
        for j in range(classes):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if fractions[i, j] > 0.5 else "black", fontsize=10)
    ax.set_xticks(range(classes), labels, rotation=30, ha="right")
    ax.set_yticks(range(classes), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def figure_pixels(fig: "object") -> torch.Tensor:
    """An HWC uint8 RGB tensor of a Figure drawn on its Agg canvas."""
    import numpy as np

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy())


def confusion_picture(matrix: torch.Tensor, names: Sequence[str] | None = None, title: str = "") -> torch.Tensor:
    """The labelled figure when matplotlib is installed, else :func:`confusion_image`; HWC uint8."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return confusion_image(matrix)
    return figure_pixels(confusion_figure(matrix, names, title))
