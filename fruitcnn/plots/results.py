"""Figures of a run and of a study: learning curves, confusion matrices, image grids,
the heads' branches and study panels.

Drawing only: the numbers come from ``fruitcnn.evaluation``, ``history.csv`` and
study.csv. Every function returns a :class:`matplotlib.figure.Figure` made without
pyplot; :func:`png_bytes` renders one to PNG and releases it.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from PIL import Image

# Inches per head (width) and height of the branches figure; characters per line in its boxes.
BRANCH_INCHES, BRANCH_CHARS = (2.6, 3.6), 28
# Colours of the splits in every curve, so figures read alike.
SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
SPLIT_LABELS = {"train": "train", "val": "validation", "test": "test"}
# Learning curves: inches per panel (width, height); runs longer than this many
# seconds get their time axis in minutes.
CURVE_PANEL_INCHES = (4.6, 3.6)
MINUTES_AFTER_S = 120
# Study plots: panels per row, inches per panel (width, height), and how far the
# points of trials with the same value spread sideways (in units of one value).
STUDY_COLUMNS, STUDY_PANEL_INCHES, STUDY_SPREAD = 3, (4.0, 3.2), 0.15
# A panel widens beyond its width to give each value this many inches.
STUDY_INCHES_PER_VALUE = 0.55
# Tick labels of a panel longer than this many characters in all are slanted by this angle.
STUDY_FLAT_TICK_CHARS, STUDY_TICK_DEGREES = 40, 35
# Confusion matrices: cell numbers are written up to this many classes.
ANNOTATE_CLASSES = 25
# Confusion-matrix tick labels: font size in points, falling linearly from
# LABEL_POINTS_MAX at FULL_SIZE_CLASSES classes to LABEL_POINTS_MIN at
# SMALLEST_SIZE_CLASSES (Fruits-360's 114 fit) and staying there beyond.
LABEL_POINTS_MAX, LABEL_POINTS_MIN = 9.0, 5.0
FULL_SIZE_CLASSES, SMALLEST_SIZE_CLASSES = 12, 120
# Side of a matrix cell per point of label size (labels of neighbours do not touch).
CELL_PER_LABEL_POINT = 1.5
# Average character width per point of font size, and points per inch.
CHAR_WIDTH, POINTS_PER_INCH = 0.62, 72
# Confusion-matrix layout in inches: room for an axis title beside the tick labels,
# smallest matrix side, room above for a title (or none), colour bar gap/width and the
# space reserved right of the matrix for it and its label.
AXIS_TITLE_INCHES, MIN_MATRIX_INCHES = 0.45, 3.0
TITLE_INCHES, NO_TITLE_INCHES = 0.45, 0.15
COLOURBAR_GAP_INCHES, COLOURBAR_INCHES, COLOURBAR_SPACE_INCHES = 0.15, 0.15, 1.2
COLOURBAR_FRACTION = 0.6  # of the matrix height, centred
# Counts are coloured on a power scale with this exponent (0.5: square root), so a
# single error shows next to a diagonal of hundreds.
COUNT_GAMMA = 0.5
# Cell numbers are white on cells darker than this share of the colour scale.
WHITE_TEXT_ABOVE = 0.45
# Without names, every INDEX_TICK_STEP-th class is labelled by its index.
INDEX_TICK_STEP = 10
# Longest class name drawn in full on a figure axis (tables show every name in full).
LABEL_CHARS = 28
# Image grids, in pixels of the PNG: image cell, its coloured frame, caption band,
# gap between the right and the wrong half, spacing between cells (x, y), the band
# of the two headings, the title band, and the padding of the class-name column.
GRID_CELL, GRID_BORDER, GRID_CAPTION, GRID_GAP = 96, 3, 24, 36
GRID_SPACING_X, GRID_SPACING_Y, GRID_HEADER, GRID_TITLE, GRID_LABEL_PAD = 4, 6, 22, 24, 8
# Image grids: font sizes in points and the longest class name in the name column.
GRID_LABEL_POINTS, GRID_CAPTION_POINTS, GRID_HEADING_POINTS, GRID_TITLE_POINTS = 8.0, 5.5, 8.5, 10.0
GRID_LABEL_CHARS = 30
GRID_COLOURS = ((44, 160, 44), (214, 39, 40))  # frame of right and of wrong images
GRID_HEADINGS = (
    "most confident correct (probability)",
    "most confident mistakes (predicted class, probability)",
)
GRID_EMPTY = ("no correct image", "no mistake")


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
        minutes = np.nanmax(seconds) > MINUTES_AFTER_S
        positions = seconds / 60 if minutes else seconds
        label = f"wall-clock time since the start ({'min' if minutes else 's'})"
    panels = 3 if heads else 2
    figure = Figure(figsize=(CURVE_PANEL_INCHES[0] * panels, CURVE_PANEL_INCHES[1]), layout="constrained")
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
        for split, style in (("train", "^:"), ("val", "o-"), ("test", "s--")):
            values = _series(history, f"{split}_{head}_accuracy")
            if np.isfinite(values).any():
                axes[2].plot(positions, values, style, markersize=3, color=colour, label=f"{head} ({split})")
        axes[2].set_title("accuracy per head (train dotted, validation solid, test dashed)", fontsize=9)
    for axis in axes:
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
        if best_epoch is not None and best_epoch in epochs:
            axis.axvline(positions[list(epochs).index(best_epoch)], color="grey", linestyle=":", linewidth=1)
        axis.legend(fontsize=7)
    if x == "epoch":  # whole epochs, half an epoch of margin (one epoch: a single tick at 1)
        for axis in axes:
            axis.xaxis.get_major_locator().set_params(integer=True)
            axis.set_xlim(np.nanmin(epochs) - 0.5, np.nanmax(epochs) + 0.5)
    return figure


def study_figure(parameters: Sequence[tuple[str, Sequence[str]]], rows: Sequence[Mapping]) -> Figure:
    """Accuracy against each varied parameter of a study, one panel per parameter.

    Every finished trial is a point at its value of the parameter (validation: dots,
    test: crosses, spread sideways a little so equal values stay visible); where values
    were tried more than once, a line joins the mean validation accuracy of each value,
    the parameter's main effect.

    Args:
        parameters: (name, labels in plan order) of each varied parameter.
        rows: finished rows of study.csv (``best_val_accuracy``, ``test_accuracy`` and
            each parameter's label).
    """
    if not rows:
        raise ValueError("no finished trial: there is nothing to plot yet.")
    count = len(parameters)
    columns = min(count, STUDY_COLUMNS)
    lines = math.ceil(count / columns)
    most_values = max(len(labels) for _, labels in parameters)
    panel_width = max(STUDY_PANEL_INCHES[0], STUDY_INCHES_PER_VALUE * most_values)
    figure = Figure(figsize=(panel_width * columns, STUDY_PANEL_INCHES[1] * lines), layout="constrained")
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for axis, (name, labels) in zip(axes, parameters):
        _study_panel(axis, name, list(labels), rows)
    for axis in axes[count:]:
        axis.set_visible(False)
    return figure


def _study_panel(axis, name: str, labels: list[str], rows: Sequence[Mapping]) -> None:
    """One parameter's panel: each trial's accuracies at its value, and the mean line."""
    for split, marker in (("val", "o"), ("test", "x")):
        column = "best_val_accuracy" if split == "val" else "test_accuracy"
        legend = SPLIT_LABELS[split]  # on the first points drawn only
        for position, label in enumerate(labels):
            values = [100 * float(row[column]) for row in rows if row[name] == label]
            if not values:
                continue
            offsets = np.linspace(-STUDY_SPREAD, STUDY_SPREAD, len(values)) if len(values) > 1 else [0.0]
            axis.plot(
                position + np.asarray(offsets),
                values,
                marker,
                linestyle="none",
                color=SPLIT_COLOURS[split],
                label=legend,
            )
            legend = None
    groups = [
        [100 * float(row["best_val_accuracy"]) for row in rows if row[name] == label] for label in labels
    ]
    if any(len(group) > 1 for group in groups):  # a main effect only where values were repeated
        means = [np.mean(group) if group else np.nan for group in groups]
        axis.plot(
            range(len(labels)), means, "-", color=SPLIT_COLOURS["val"], alpha=0.6, label="validation mean"
        )
    names = [short_name(label or "(none)") for label in labels]
    if sum(len(text) for text in names) > STUDY_FLAT_TICK_CHARS:  # long variant names: slanted
        axis.set_xticks(range(len(labels)), names, rotation=STUDY_TICK_DEGREES, ha="right")
    else:
        axis.set_xticks(range(len(labels)), names)
    axis.set_xlim(-0.5, len(labels) - 0.5)
    axis.set_xlabel(name)
    axis.set_ylabel("accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def _label_points(count: int) -> float:
    """Tick-label font size for a matrix of ``count`` classes."""
    return float(
        np.interp(count, [FULL_SIZE_CLASSES, SMALLEST_SIZE_CLASSES], [LABEL_POINTS_MAX, LABEL_POINTS_MIN])
    )


def _text_inches(text: str, points: float) -> float:
    """Approximate width of ``text`` at ``points`` (no measuring: that needs a draw)."""
    return len(text) * points * CHAR_WIDTH / POINTS_PER_INCH


def _matrix_axes(labels: Sequence[str], points: float, count: int, title: bool):
    """A figure with the matrix axes and the colour-bar axes, margins computed here
    rather than by a layout engine (constrained layout and a tight bounding box
    measured every tick label several times: 1.5 s for 96 classes)."""
    label_inches = max(_text_inches(label, points) for label in labels) + AXIS_TITLE_INCHES
    side = max(MIN_MATRIX_INCHES, count * _label_points(count) * CELL_PER_LABEL_POINT / POINTS_PER_INCH)
    top = TITLE_INCHES if title else NO_TITLE_INCHES
    width, height = label_inches + side + COLOURBAR_SPACE_INCHES, top + side + label_inches
    figure = Figure(figsize=(width, height))
    axis = figure.add_axes((label_inches / width, label_inches / height, side / width, side / height))
    bar_bottom = label_inches + side * (1 - COLOURBAR_FRACTION) / 2
    bar_axis = figure.add_axes(
        (
            (label_inches + side + COLOURBAR_GAP_INCHES) / width,
            bar_bottom / height,
            COLOURBAR_INCHES / width,
            side * COLOURBAR_FRACTION / height,
        )
    )
    return figure, axis, bar_axis


def _cell_numbers(axis, matrix: np.ndarray, normalise: bool, vmax: float, points: float) -> None:
    """Write each non-zero cell (and the diagonal) into the matrix."""
    count = matrix.shape[0]
    for row in range(count):
        for column in range(count):
            value = matrix[row, column]
            if value == 0 and row != column:
                continue
            axis.text(
                column,
                row,
                f"{value:.2f}" if normalise else f"{int(value)}",
                ha="center",
                va="center",
                fontsize=max(points - 1.5, LABEL_POINTS_MIN - 1),
                color="white" if value > vmax * WHITE_TEXT_ABOVE else "black",
            )


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
    ``ANNOTATE_CLASSES`` classes; tick labels shrink with the class count (see
    ``LABEL_POINTS_MIN``) and long names are shortened with an ellipsis. Names are
    drawn as plain text (a ``$`` is no math). ``names=False`` labels every tenth class
    by its index instead (for small images where names could not be read; drawing a
    hundred names is most of the figure's cost).
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
    figure, axis, bar_axis = _matrix_axes(labels, points, count, bool(title))
    vmax = 1.0 if normalise else max(float(matrix.max()), 1.0)
    image = axis.imshow(
        matrix,
        cmap="Blues",
        norm=PowerNorm(COUNT_GAMMA, vmin=0, vmax=vmax),
        interpolation="nearest",
        aspect="auto",
    )
    axis.set_xticks(ticks, labels, rotation=90, fontsize=points, parse_math=False)
    axis.set_yticks(ticks, labels, fontsize=points, parse_math=False)
    axis.set_xlabel("predicted class" + ("" if names else " (index)"))
    axis.set_ylabel("true class" + ("" if names else " (index)"))
    if title:
        axis.set_title(title, fontsize=LABEL_POINTS_MAX + 1, parse_math=False)
    if count <= ANNOTATE_CLASSES:
        _cell_numbers(axis, matrix, normalise, vmax, points)
    figure.colorbar(image, cax=bar_axis, label="share of the true class" if normalise else "images")
    return figure


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 image fitted into a white ``size`` x ``size`` square: enlarged by
    repeating pixels (small images stay sharp), reduced by averaging."""
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


@dataclass(frozen=True)
class GridRow:
    """One class of a :func:`confident_grid`.

    Attributes:
        name: the true class.
        right: ``(image index, probability)`` of its most confident correct images.
        wrong: ``(image index, predicted class, probability)`` of its most confident
            mistakes.
    """

    name: str
    right: Sequence[tuple[int, float]]
    wrong: Sequence[tuple[int, str, float]]


@dataclass(frozen=True)
class _GridGeometry:
    """Pixel positions of a grid mosaic."""

    columns: int
    pitch_x: int = GRID_CELL + 2 * GRID_BORDER + GRID_SPACING_X
    pitch_y: int = GRID_CAPTION + GRID_CELL + 2 * GRID_BORDER + GRID_SPACING_Y

    def side_start(self, side: int) -> int:
        return side * (self.columns * self.pitch_x + GRID_GAP)

    @property
    def width(self) -> int:
        return 2 * self.columns * self.pitch_x + GRID_GAP

    def height(self, rows: int) -> int:
        return GRID_HEADER + self.pitch_y * rows

    def cell_top(self, row: int) -> int:
        return GRID_HEADER + row * self.pitch_y + GRID_CAPTION


def _caption_chars(dpi: int) -> int:
    """Characters of a caption that fit in the width of a cell."""
    return int(GRID_CELL / (GRID_CAPTION_POINTS * CHAR_WIDTH * dpi / POINTS_PER_INCH))


def _grid_cells(images, rows, geometry: _GridGeometry, dpi: int):
    """The mosaic and its texts ``(x, y, text, style)`` in mosaic pixels."""
    mosaic = np.full((geometry.height(len(rows)), geometry.width, 3), 255, np.uint8)
    texts: list[tuple[float, float, str, dict]] = []
    border, cell = GRID_BORDER, GRID_CELL
    name_chars = _caption_chars(dpi)
    for row, grid_row in enumerate(rows):
        top = geometry.cell_top(row)
        middle = top + border + cell / 2
        name = short_name(grid_row.name, GRID_LABEL_CHARS)
        texts.append(
            (-GRID_LABEL_PAD, middle, name, {"ha": "right", "va": "center", "fontsize": GRID_LABEL_POINTS})
        )
        right = [(index, f"{probability:.3f}") for index, probability in grid_row.right]
        wrong = [
            (index, f"{short_name(predicted, name_chars)}\n{probability:.3f}")
            for index, predicted, probability in grid_row.wrong
        ]
        for side, items in enumerate((right, wrong)):
            start = geometry.side_start(side)
            if not items:
                style = {"ha": "center", "va": "center", "fontsize": GRID_CAPTION_POINTS, "color": "grey"}
                texts.append((start + geometry.pitch_x / 2, middle, GRID_EMPTY[side], style))
            for column, (index, caption) in enumerate(items[: geometry.columns]):
                left = start + column * geometry.pitch_x
                mosaic[top : top + cell + 2 * border, left : left + cell + 2 * border] = GRID_COLOURS[side]
                inner = (slice(top + border, top + border + cell), slice(left + border, left + border + cell))
                mosaic[inner] = _thumbnail(images[index], cell)
                style = {"ha": "center", "va": "bottom", "fontsize": GRID_CAPTION_POINTS}
                texts.append((left + border + cell / 2, top - 1, caption, style))
    for side, heading in enumerate(GRID_HEADINGS):
        centre = geometry.side_start(side) + geometry.columns * geometry.pitch_x / 2
        style = {"ha": "center", "va": "bottom", "fontsize": GRID_HEADING_POINTS, "weight": "bold"}
        texts.append((centre, GRID_HEADER - GRID_SPACING_Y, heading, style))
    return mosaic, texts


def confident_grid(
    images: np.ndarray,
    rows: Sequence[GridRow],
    *,
    columns: int,
    title: str = "",
    dpi: int = 100,
) -> Figure:
    """Per class: its most confident correct images, then its most confident mistakes.

    The images are laid out as one mosaic (one axes: a figure of hundreds of small
    axes took seconds to draw), framed green (right, captioned with the probability)
    or red (wrong, captioned with the predicted class and its probability). Render it
    with ``png_bytes(figure, dpi=dpi, tight=False)`` for one mosaic pixel per PNG pixel.

    Args:
        images: the split's uint8 images (N, H, W, C).
        rows: one :class:`GridRow` per class, each list at most ``columns`` long.
        columns: images per side (the top-k).
        title: figure title.
        dpi: the resolution the figure is meant to be saved with.
    """
    geometry = _GridGeometry(columns)
    mosaic, texts = _grid_cells(images, rows, geometry, dpi)
    longest = max((len(short_name(row.name, GRID_LABEL_CHARS)) for row in rows), default=1)
    label = int(longest * GRID_LABEL_POINTS * CHAR_WIDTH * dpi / POINTS_PER_INCH) + 2 * GRID_LABEL_PAD
    height, width = mosaic.shape[:2]
    title_px = GRID_TITLE if title else 0
    figure = Figure(figsize=((width + label) / dpi, (height + title_px) / dpi), dpi=dpi)
    axis = figure.add_axes(
        (label / (width + label), 0, width / (width + label), height / (height + title_px))
    )
    axis.imshow(mosaic, interpolation="nearest", extent=(0, width, height, 0))
    axis.set_axis_off()
    for x, y, text, style in texts:
        axis.text(x, y, text, clip_on=False, parse_math=False, **style)
    if title:
        top = 1 - GRID_SPACING_X / (height + title_px)
        figure.text(0.5, top, title, ha="center", va="top", fontsize=GRID_TITLE_POINTS, parse_math=False)
    return figure


def branches_figure(trunk: Sequence[str], heads: Mapping[str, Sequence[str]], *, title: str) -> Figure:
    """The shared feature extractor and each head's own layers as boxes with arrows.

    Args:
        trunk: the shared layers, input to the branch point, as short labels.
        heads: for every head, its own layers after the branch point (down to its output).
        title: the figure's title.
    """
    count = max(1, len(heads))
    width = max(BRANCH_INCHES[0] * count, BRANCH_INCHES[0] * 2)
    figure = Figure(figsize=(width, BRANCH_INCHES[1]), layout="constrained")
    axis = figure.subplots()
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.axis("off")
    box = {"boxstyle": "round,pad=0.4", "facecolor": "#eef3fb", "edgecolor": "#4c72b0"}
    trunk_text = textwrap.fill(" > ".join(trunk), width=int(BRANCH_CHARS * width / BRANCH_INCHES[0]))
    axis.text(0.5, 0.88, trunk_text, ha="center", va="top", fontsize=7, bbox=box, family="monospace")
    for index, (head, layers) in enumerate(heads.items()):
        x = (index + 0.5) / count
        text = head + "\n" + "\n".join(textwrap.fill(layer, BRANCH_CHARS) for layer in layers)
        axis.text(x, 0.08, text, ha="center", va="bottom", fontsize=7, bbox={**box, "facecolor": "#fdf1e6"})
        axis.annotate("", xy=(x, 0.42), xytext=(0.5, 0.6), arrowprops={"arrowstyle": "->", "color": "#555"})
    figure.suptitle(title, fontsize=10, parse_math=False)
    return figure
