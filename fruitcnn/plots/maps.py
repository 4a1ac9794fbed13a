"""Figures of explanations (``visualize``): every function returns a matplotlib Figure
(no pyplot).

Heatmaps are scaled to their own range for display; a constant map (all zeros, say)
is drawn as zeros instead of dividing by a zero range.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

# Inches per panel of a heatmap figure and per tile of a grid.
PANEL_INCHES, TILE_INCHES = 3.2, 0.9
# Share of the heatmap in the overlay panel (the rest is the image).
OVERLAY_ALPHA = 0.5
# Tiles per row of activation and filter grids.
GRID_COLUMNS = 8
# Characters per line of a heatmap's label.
LABEL_WIDTH = 44


def unit_range(values: np.ndarray) -> np.ndarray:
    """``values`` scaled to 0..1 by their own minimum and maximum; 0 when constant."""
    values = np.asarray(values, np.float64)
    low, high = float(values.min()), float(values.max())
    if high - low <= 0:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _show_image(axis, image: np.ndarray) -> None:
    picture = np.clip(np.asarray(image, np.float64) / 255.0, 0, 1)
    if picture.shape[-1] == 1:
        axis.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        axis.imshow(picture, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])


def heatmap_figure(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    title: str,
    label: str,
    cmap: str = "inferno",
    clip_percentile: float | None = None,
) -> Figure:
    """The image, the heatmap with a colour bar in its own units, and their overlay.

    Args:
        image: (H, W, C) pixel units.
        heatmap: (H, W) the explanation.
        title: the figure's title (e.g. the prediction and the true label).
        label: the colour bar's label (what the map measures).
        cmap: matplotlib colour map of the heatmap.
        clip_percentile: show values above this percentile of the map as its value
            (gradient maps: a few extreme pixels would otherwise leave the rest dark);
            the colour bar and the label say so. None: the full range.
    """
    shown_map = np.asarray(heatmap, np.float64)
    if clip_percentile is not None:
        ceiling = float(np.percentile(shown_map, clip_percentile))
        if ceiling > shown_map.min():
            shown_map = np.minimum(shown_map, ceiling)
            label = f"{label}, clipped at its {clip_percentile:g}th percentile"
    figure = Figure(figsize=(3 * PANEL_INCHES, PANEL_INCHES + 0.5), layout="constrained")
    left, middle, right = figure.subplots(1, 3)
    _show_image(left, image)
    left.set_title("image", fontsize=9)
    shown = middle.imshow(shown_map, cmap=cmap, interpolation="nearest")
    middle.set_xticks([])
    middle.set_yticks([])
    middle.set_title(textwrap.fill(label, LABEL_WIDTH), fontsize=8, parse_math=False)
    figure.colorbar(shown, ax=middle, shrink=0.8)
    _show_image(right, image)
    right.imshow(
        unit_range(shown_map), cmap=cmap, alpha=OVERLAY_ALPHA, vmin=0, vmax=1, interpolation="nearest"
    )
    right.set_title("overlay (map scaled to 0..1)", fontsize=9)
    figure.suptitle(title, fontsize=10, parse_math=False)
    return figure


def tile_figure(
    tiles: np.ndarray, *, title: str, labels: Sequence[str] | None = None, cmap: str = "viridis"
) -> Figure:
    """A grid of tiles: (T, h, w) maps (each scaled to its own range, colour map) or
    (T, h, w, 3) colour images (each scaled to its own range)."""
    count = tiles.shape[0]
    columns = min(GRID_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(columns * TILE_INCHES, rows * TILE_INCHES + 0.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    for index, axis in enumerate(axes):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= count:
            axis.axis("off")
            continue
        tile = unit_range(tiles[index])
        if tile.ndim == 3 and tile.shape[-1] == 3:
            axis.imshow(tile, interpolation="nearest")
        else:
            axis.imshow(tile.reshape(tile.shape[:2]), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(labels[index] if labels else str(index), fontsize=6, parse_math=False)
    figure.suptitle(title, fontsize=10, parse_math=False)
    return figure


def filters_figure(
    patterns: np.ndarray,
    *,
    title: str,
    labels: Sequence[str],
    dead: Sequence[bool] | None = None,
    crop: tuple[slice, slice] | None = None,
) -> Figure:
    """Filter images as a grid, each scaled to its own range (a filter's pattern, not its
    contrast, is what the figure compares), cropped to ``crop`` (the receptive field of a
    centre unit); a dead filter's tile is left grey and labelled "dead"."""
    crop = crop or (slice(None), slice(None))
    shown = np.stack([pattern[crop] for pattern in np.asarray(patterns)])
    dead = list(dead) if dead is not None else [False] * len(shown)
    count = shown.shape[0]
    columns = min(GRID_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(columns * TILE_INCHES, rows * TILE_INCHES + 0.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    for index, axis in enumerate(axes):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= count:
            axis.axis("off")
            continue
        if dead[index]:
            axis.imshow(np.full(shown.shape[1:3], 0.5), cmap="gray", vmin=0, vmax=1)
            axis.text(0.5, 0.5, "dead", transform=axis.transAxes, ha="center", va="center", fontsize=7)
        else:
            tile = unit_range(shown[index])
            if tile.shape[-1] == 1:
                axis.imshow(tile[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                axis.imshow(tile, interpolation="nearest")
        axis.set_title(labels[index], fontsize=6, parse_math=False)
    figure.suptitle(title, fontsize=10, parse_math=False)
    return figure


def curves_figure(curves: dict[str, dict[str, np.ndarray]], *, title: str) -> Figure:
    """Deletion and insertion curves side by side: the class probability against the
    share of pixels removed (revealed), one line per method, ``random`` dashed.

    Args:
        curves: ``{method: {"deletion": (steps + 1,), "insertion": (steps + 1,)}}``
            (``visualize.quality.QualityResult.curves``).
        title: the figure's title.
    """
    figure = Figure(figsize=(2 * PANEL_INCHES + 2.8, PANEL_INCHES + 0.6), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for axis, mode, verb in zip(axes, ("deletion", "insertion"), ("removed", "revealed")):
        for method, found in curves.items():
            curve = np.asarray(found[mode])
            share = np.linspace(0.0, 1.0, curve.size)
            style = {"color": "black", "linestyle": "--"} if method == "random" else {}
            axis.plot(share, curve, label=method, linewidth=1.2, **style)
        axis.set_xlabel(f"share of pixels {verb}, most important first")
        axis.set_title(f"{mode} (area: {'lower' if mode == 'deletion' else 'higher'} is better)", fontsize=9)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the explained class")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(title, fontsize=10, parse_math=False)
    return figure


def cascade_figure(table, *, title: str) -> Figure:
    """Spearman correlation of trained and randomised maps per cascade stage and method
    (``visualize.quality.cascade_correlations``: columns stage, layer, method, spearman)."""
    figure = Figure(figsize=(2 * PANEL_INCHES + 1.4, PANEL_INCHES + 0.6), layout="constrained")
    axis = figure.subplots()
    layers = table.drop_duplicates("stage").sort_values("stage")
    for method, rows in table.groupby("method", sort=False):
        rows = rows.sort_values("stage")
        axis.plot(rows["stage"], rows["spearman"], marker="o", linewidth=1.2, label=method)
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_xticks(layers["stage"], [f"+{name}" for name in layers["layer"]], fontsize=7, rotation=30)
    axis.set_xlabel("layers re-initialised, from the head down (cumulative)")
    axis.set_ylabel("Spearman, trained vs randomised")
    axis.set_ylim(-1.05, 1.05)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(title, fontsize=10, parse_math=False)
    return figure
