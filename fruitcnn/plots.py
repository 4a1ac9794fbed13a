"""Figures of a run: learning curves, confusion matrices and image grids.

Drawing only: the numbers come from ``fruitcnn.evaluation`` and ``history.csv``.
Every function returns a :class:`matplotlib.figure.Figure` made without pyplot (no
global state, nothing shown, safe in threads and servers); :func:`png_bytes` renders
one to PNG and releases it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

# Colours of the splits in every curve, so figures read alike.
SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
SPLIT_LABELS = {"train": "train", "val": "validation", "test": "test"}
# Confusion matrices: cell numbers are written up to this many classes.
ANNOTATE_CLASSES = 25
# Confusion-matrix tick labels: font size in points, shrinking with the class count
# from LABEL_POINTS_MAX (few classes) to LABEL_POINTS_MIN (about 120 classes).
LABEL_POINTS_MAX, LABEL_POINTS_MIN = 9.0, 5.0
# Without names, every INDEX_TICK_STEP-th class is labelled by its index.
INDEX_TICK_STEP = 10
# Longest class name drawn in full on a figure axis (tables show every name in full).
LABEL_CHARS = 28
# Image grids, in pixels of the PNG: image cell, its coloured frame, caption band,
# gap between the right and the wrong half, and the class-name column.
GRID_CELL, GRID_BORDER, GRID_CAPTION, GRID_GAP, GRID_LABEL = 96, 3, 24, 36, 150
GRID_COLOURS = ((44, 160, 44), (214, 39, 40))  # frame of right and of wrong images


def png_bytes(figure: Figure, *, dpi: int = 100, tight: bool = True) -> bytes:
    """The figure as PNG bytes; ``tight`` crops it to what is drawn (one more layout
    pass, so figures that place everything themselves skip it)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    if tight:
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08)
    else:
        figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def short_name(name: str, limit: int = LABEL_CHARS) -> str:
    """``name``, cut to ``limit`` characters with an ellipsis when longer."""
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _series(history: Sequence[Mapping], column: str) -> np.ndarray:
    """A history column as floats; empty cells (a test split not evaluated) are NaN."""
    values = [row.get(column, "") for row in history]
    return np.array([float(value) if value not in ("", None) else np.nan for value in values])


def learning_curves(
    history: Sequence[Mapping],
    *,
    heads: Sequence[str] = (),
    x: str = "epoch",
    best_epoch: int | None = None,
) -> Figure:
    """Loss and accuracy per epoch for train, validation and test.

    Args:
        history: the rows of history.csv.
        heads: for a multi-head run, the head names: a third panel shows each head's
            validation (solid) and test (dashed) accuracy.
        x: ``epoch``, or ``time`` for the wall-clock time since the run started
            (``elapsed_s``, in minutes when the run took more than two).
        best_epoch: marked with a dotted line (the epoch model.keras comes from).
    """
    if x not in ("epoch", "time"):
        raise ValueError(f"x must be 'epoch' or 'time', got {x!r}.")
    if not history:
        raise ValueError("history.csv has no finished epoch; there are no curves to draw.")
    epochs = _series(history, "epoch")
    if x == "epoch":
        positions, label = epochs, "epoch"
    else:
        seconds = _series(history, "elapsed_s")
        minutes = np.nanmax(seconds) > 120
        positions = seconds / 60 if minutes else seconds
        label = f"wall-clock time since the start ({'min' if minutes else 's'})"
    panels = 3 if heads else 2
    figure = Figure(figsize=(4.6 * panels, 3.6), layout="constrained")
    axes = figure.subplots(1, panels)
    accuracy_name = "accuracy (all heads right)" if heads else "accuracy"
    for axis, metric, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", accuracy_name)):
        for split in ("train", "val", "test"):
            values = _series(history, f"{split}_{metric}")
            if np.isfinite(values).any():
                axis.plot(positions, values, "o-", markersize=3, color=SPLIT_COLOURS[split])
                axis.lines[-1].set_label(SPLIT_LABELS[split])
        axis.set_title(title)
    for index, head in enumerate(heads):
        colour = f"C{index}"
        for split, style in (("val", "o-"), ("test", "s--")):
            values = _series(history, f"{split}_{head}_accuracy")
            if np.isfinite(values).any():
                axes[2].plot(positions, values, style, markersize=3, color=colour, label=f"{head} ({split})")
        axes[2].set_title("accuracy per head")
    for axis in axes:
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
        if best_epoch is not None and best_epoch in epochs:
            axis.axvline(positions[list(epochs).index(best_epoch)], color="grey", linestyle=":", linewidth=1)
        axis.legend(fontsize=7)
    if x == "epoch":
        for axis in axes:
            axis.xaxis.get_major_locator().set_params(integer=True)
    return figure


def _label_points(count: int) -> float:
    """Tick-label font size for a matrix of ``count`` classes."""
    return float(np.clip(LABEL_POINTS_MAX * 12 / max(count, 1), LABEL_POINTS_MIN, LABEL_POINTS_MAX))


def confusion_figure(
    confusion: np.ndarray,
    class_names: Sequence[str],
    *,
    normalise: bool = False,
    order: Sequence[int] | None = None,
    title: str = "",
    names: bool = True,
) -> Figure:
    """A confusion matrix (rows true, columns predicted) sized for its class count.

    Counts use a square-root colour scale so single errors stay visible next to a
    full diagonal; ``normalise`` divides each row by its class's images (recall on
    the diagonal; an empty row stays 0). Cells carry numbers up to
    ``ANNOTATE_CLASSES`` classes; tick labels shrink with the class count and long
    names are shortened with an ellipsis. ``names=False`` labels every tenth class
    by its index instead (for small images where names could not be read; drawing
    a hundred names is most of the figure's cost).
    """
    count = len(class_names)
    order = np.arange(count) if order is None else np.asarray(order)
    matrix = np.asarray(confusion, np.float64)[np.ix_(order, order)]
    if normalise:
        rows = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    if names:
        ticks, labels = list(range(count)), [short_name(str(class_names[index])) for index in order]
    else:
        ticks = list(range(0, count, INDEX_TICK_STEP))
        labels = [str(int(order[position])) for position in ticks]
    points = _label_points(count) if names else LABEL_POINTS_MAX
    # Margins computed here, not by a layout engine: constrained layout and a tight
    # bounding box measured every tick label several times (1.5 s for 96 classes).
    label_inches = max(len(label) for label in labels) * points * 0.62 / 72 + 0.45
    side = max(3.0, count * _label_points(count) * 1.5 / 72)
    title_inches = 0.45 if title else 0.15
    colourbar_inches = 1.2
    width = label_inches + side + colourbar_inches
    height = title_inches + side + label_inches
    figure = Figure(figsize=(width, height))
    axis = figure.add_axes((label_inches / width, label_inches / height, side / width, side / height))
    bar_axis = figure.add_axes(
        (
            (label_inches + side + 0.15) / width,
            (label_inches + side * 0.2) / height,
            0.15 / width,
            side * 0.6 / height,
        )
    )
    norm = PowerNorm(0.5, vmin=0, vmax=1 if normalise else max(matrix.max(), 1))
    image = axis.imshow(matrix, cmap="Blues", norm=norm, interpolation="nearest", aspect="auto")
    axis.set_xticks(ticks, labels, rotation=90, fontsize=points)
    axis.set_yticks(ticks, labels, fontsize=points)
    axis.set_xlabel("predicted class" + ("" if names else " (index)"))
    axis.set_ylabel("true class" + ("" if names else " (index)"))
    if title:
        axis.set_title(title, fontsize=10)
    if count <= ANNOTATE_CLASSES:
        threshold = norm.vmax * 0.45
        for row in range(count):
            for column in range(count):
                value = matrix[row, column]
                if value == 0 and row != column:
                    continue
                text = f"{value:.2f}" if normalise else f"{int(value)}"
                axis.text(
                    column,
                    row,
                    text,
                    ha="center",
                    va="center",
                    fontsize=max(points - 1.5, 4),
                    color="white" if value > threshold else "black",
                )
    figure.colorbar(image, cax=bar_axis, label="share of the true class" if normalise else "images")
    return figure


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 image fitted into a white ``size`` x ``size`` square: enlarged by
    repeating pixels (small images stay sharp), reduced by averaging."""
    from PIL import Image

    picture = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    height, width = picture.shape[:2]
    scale = size / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    method = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(picture)).resize(new_size, method))
    square = np.full((size, size, 3), 255, np.uint8)
    top, left = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    square[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return square


def confident_grid(
    images: np.ndarray,
    rows: Sequence[tuple[str, Sequence[tuple[int, str]], Sequence[tuple[int, str]]]],
    *,
    columns: int,
    title: str = "",
    dpi: int = 100,
) -> Figure:
    """Per class: its most confident correct images, then its most confident mistakes.

    The images are laid out as one mosaic (one axes: a figure of hundreds of small
    axes took seconds to draw), framed green (right) or red (wrong), captioned above.
    Render it with ``png_bytes(figure, dpi=dpi)`` for one mosaic pixel per PNG pixel.

    Args:
        images: the split's uint8 images (N, H, W, C).
        rows: ``(class name, [(image index, caption)] right, [(image index,
            caption)] wrong)`` per class, each list at most ``columns`` long.
        columns: images per side (the top-k).
        title: figure title.
        dpi: the resolution the figure is meant to be saved with.
    """
    cell, border, caption, gap, label = GRID_CELL, GRID_BORDER, GRID_CAPTION, GRID_GAP, GRID_LABEL
    pitch_x = cell + 2 * border + 4
    pitch_y = caption + cell + 2 * border + 6
    header = 22
    width = 2 * columns * pitch_x + gap
    height = header + pitch_y * len(rows)
    mosaic = np.full((height, width, 3), 255, np.uint8)
    texts: list[tuple[float, float, str, dict]] = []
    for row, (name, right, wrong) in enumerate(rows):
        top = header + row * pitch_y + caption
        texts.append(
            (
                -8,
                top + border + cell / 2,
                short_name(name, 24),
                {"ha": "right", "va": "center", "fontsize": 8},
            )
        )
        for side, items in enumerate((right, wrong)):
            start = side * (columns * pitch_x + gap)
            colour = GRID_COLOURS[side]
            if not items:
                empty = "no correct image" if side == 0 else "no mistake"
                texts.append(
                    (
                        start + pitch_x / 2,
                        top + border + cell / 2,
                        empty,
                        {"ha": "center", "va": "center", "fontsize": 7, "color": "grey"},
                    )
                )
            for column, (index, text) in enumerate(items[:columns]):
                left = start + column * pitch_x
                mosaic[top : top + cell + 2 * border, left : left + cell + 2 * border] = colour
                mosaic[top + border : top + border + cell, left + border : left + border + cell] = _thumbnail(
                    images[index], cell
                )
                texts.append(
                    (
                        left + border + cell / 2,
                        top - 2,
                        text,
                        {"ha": "center", "va": "bottom", "fontsize": 6.5},
                    )
                )
    for side, heading in enumerate(("most confident correct", "most confident mistakes (→ predicted)")):
        start = side * (columns * pitch_x + gap)
        texts.append(
            (
                start + columns * pitch_x / 2,
                header - 6,
                heading,
                {"ha": "center", "va": "bottom", "fontsize": 8.5, "weight": "bold"},
            )
        )
    title_px = 24 if title else 0
    figure = Figure(figsize=((width + label) / dpi, (height + title_px) / dpi), dpi=dpi)
    axis = figure.add_axes(
        (label / (width + label), 0, width / (width + label), height / (height + title_px))
    )
    axis.imshow(mosaic, interpolation="nearest", extent=(0, width, height, 0))
    axis.set_axis_off()
    for x, y, text, style in texts:
        axis.text(x, y, text, clip_on=False, **style)
    if title:
        figure.text(0.5, 1 - 4 / (height + title_px), title, ha="center", va="top", fontsize=10)
    return figure
