"""Geometry of incremental occlusion: which rows (and, the same way, columns) each square
position changes and recomputes, and the gather indices that cut the windows.

:func:`_axis_plan` follows one image axis through a :class:`~visualize.incremental.analysis.Chain`'s
spatial layers for every square position (an :class:`_Axis`); :func:`_groups` sorts
positions by their box sizes. The index builders turn a batch of positions into the
window pass's gathers: the image windows with the square filled in
(:func:`_image_index`), each next layer's input window with the recomputed box spliced
in (:func:`_splice_index`), which values lie inside a map (:func:`_in_map`), and the
step to the vector: the final boxes by location of the map for flatten
(:func:`_flatten_entries`, :func:`_by_location`), their clean values for global average
pooling (:func:`_gap_index`) and the clean maxima outside each box for global max
pooling (:func:`_gmp_index`, :func:`_outside_maxima`). Everything here is NumPy, run
once per model, image size, patch and stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from visualize.incremental.analysis import Chain, _Spatial

# A map is recomputed whole when its changed intervals are on average this many times
# its length: a conv over a whole map reads the whole padded map spliced, which costs
# more per output than a delta-form box (on the photo recipe's network at 100 px, width
# 64, boxes 4% longer than an 8-px map were 0.88x as fast whole; 16% longer than a 4-px
# map, faster whole).
WHOLE_MARGIN = 1.1


@dataclass(frozen=True)
class _Axis:
    """One axis of every position: per map i, the recomputed window [start, start + size)
    and (for maps read by a next layer) that layer's input window."""

    top: np.ndarray  # (P,) first row of the square (may be negative)
    window_start: list[np.ndarray]  # per map, (P,)
    window_size: list[np.ndarray]
    input_start: list[np.ndarray]  # [i]: the input window of spatial layer i (it reads map i)
    input_size: list[np.ndarray]
    whole: list[bool]  # per map: recomputed whole for every position (see _axis_plan)


def _axis_plan(spatial: Sequence[_Spatial], axis: int, centres: np.ndarray, patch: int) -> _Axis:
    """Changed intervals and recomputed windows along one axis (see the package notes).

    A map whose changed intervals are on average longer than the map (by
    :data:`WHOLE_MARGIN`) is recomputed whole, [0, size), for every position: a
    superset of its changed values (so still exact), shorter than the boxes it replaces
    on average, and one size for all positions; every map after it is then whole too
    (the rest of the network runs as plain batched inference from there)."""
    top = centres.astype(np.int64) - patch // 2
    low, high, whole = [top], [top + patch - 1], [False]
    for op in spatial:
        kernel, stride, before = op.kernel[axis], op.stride[axis], op.before[axis]
        # outputs o whose window [o*s - before, o*s - before + k - 1] meets [low, high]
        new_low = -((-(low[-1] + before - kernel + 1)) // stride)
        new_high = (high[-1] + before) // stride
        # an input that no output reads (a stride longer than the window) changes nothing;
        # keep one (unchanged, recomputed exactly) output so every window has a size
        new_high = np.maximum(new_high, new_low)
        size = op.out_size[axis]
        whole.append(bool(whole[-1] or np.mean(new_high - new_low + 1) >= WHOLE_MARGIN * size))
        if whole[-1]:
            new_low, new_high = np.zeros_like(new_low), np.full_like(new_high, size - 1)
        low.append(new_low)
        high.append(new_high)
    count = len(spatial)
    start: list = [None] * (count + 1)
    size: list = [None] * (count + 1)
    in_start: list = [None] * count
    in_size: list = [None] * count
    start[count], size[count] = low[count], high[count] - low[count] + 1
    for index in range(count - 1, -1, -1):
        op = spatial[index]
        kernel, stride, before = op.kernel[axis], op.stride[axis], op.before[axis]
        in_start[index] = start[index + 1] * stride - before
        in_size[index] = (size[index + 1] - 1) * stride + kernel
        if index == 0:  # the image: cut exactly the rows the first layer reads
            start[index], size[index] = in_start[index], in_size[index]
        else:
            start[index], size[index] = low[index], high[index] - low[index] + 1
    return _Axis(top, start, size, in_start, in_size, whole)


def _signature(axis: _Axis, position: int) -> tuple[int, ...]:
    return tuple(int(sizes[position]) for sizes in axis.window_size)


def _groups(axis: _Axis) -> dict[tuple[int, ...], np.ndarray]:
    """Positions along an axis, grouped by their window sizes."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for position in range(len(axis.top)):
        groups.setdefault(_signature(axis, position), []).append(position)
    return {key: np.asarray(value) for key, value in groups.items()}


def _box(axis: _Axis, index: int, positions: np.ndarray, read: bool = False) -> tuple[np.ndarray, int]:
    """(first row per position, rows) of map ``index``'s recomputed box (``read``: of the
    window that the next layer reads); the sizes are equal within a batch."""
    starts, sizes = (axis.input_start, axis.input_size) if read else (axis.window_start, axis.window_size)
    return starts[index][positions], int(sizes[index][positions[0]])


def _frame(chain: Chain, index: int, rows, columns, y_axis: _Axis, x_axis: _Axis, read: bool = False):
    """Map ``index``'s coordinates in the boxes of a batch: y (B, h, 1), x (B, 1, w), and
    (B, h, w) whether each lies inside the map."""
    height, width = chain.map_sizes[index]
    (row_start, h), (column_start, w) = _box(y_axis, index, rows, read), _box(x_axis, index, columns, read)
    y = row_start[:, None, None] + np.arange(h)[None, :, None]
    x = column_start[:, None, None] + np.arange(w)[None, None, :]
    return y, x, (y >= 0) & (y < height) & (x >= 0) & (x < width)


def _splice_index(chain: Chain, index: int, rows, columns, y_axis: _Axis, x_axis: _Axis) -> np.ndarray:
    """Gather index of spatial layer ``index``'s input window into the table
    [clean map (rows*cols); recomputed boxes (B*h*w); padding] of map ``index``."""
    height, width = chain.map_sizes[index]
    y, x, in_map = _frame(chain, index, rows, columns, y_axis, x_axis, read=True)
    (row_start, h), (column_start, w) = _box(y_axis, index, rows), _box(x_axis, index, columns)
    box_y, box_x = y - row_start[:, None, None], x - column_start[:, None, None]
    in_box = (box_y >= 0) & (box_y < h) & (box_x >= 0) & (box_x < w)
    owner = np.arange(len(rows))[:, None, None]
    spliced = height * width + owner * h * w + box_y * w + box_x
    pad = height * width + len(rows) * h * w
    return np.where(in_map, np.where(in_box, spliced, y * width + x), pad).astype(np.int32)


def _image_index(chain: Chain, rows, columns, y_axis: _Axis, x_axis: _Axis, patch: int) -> np.ndarray:
    """Gather index of the image windows into [image (rows*cols); fill (rows*cols); padding]."""
    height, width = chain.map_sizes[0]
    y, x, in_map = _frame(chain, 0, rows, columns, y_axis, x_axis)
    top, left = y_axis.top[rows][:, None, None], x_axis.top[columns][:, None, None]
    hidden = (y >= top) & (y < top + patch) & (x >= left) & (x < left + patch)
    pixel = y * width + x
    return np.where(in_map, np.where(hidden, height * width + pixel, pixel), 2 * height * width).astype(
        np.int32
    )


def _change_index(chain: Chain, index: int, rows, columns, y_axis: _Axis, x_axis: _Axis) -> np.ndarray:
    """Gather index of map ``index``'s changed box (``index`` > 0) into the table
    [map (rows*cols); zero]: the old values a delta-form conv subtracts from its input,
    or the clean pre-activations it adds its output to (outside the map: the zero)."""
    height, width = chain.map_sizes[index]
    y, x, in_map = _frame(chain, index, rows, columns, y_axis, x_axis)
    return np.where(in_map, y * width + x, height * width).astype(np.int32)


def _in_map(chain: Chain, index: int, rows, columns, y_axis: _Axis, x_axis: _Axis) -> np.ndarray:
    """(B, h, w) whether each value of map ``index``'s boxes lies inside the map."""
    return _frame(chain, index, rows, columns, y_axis, x_axis)[2]


def _flatten_entries(chain: Chain, rows, columns, y_axis: _Axis, x_axis: _Axis):
    """The final boxes' values that lie inside the map: (entry index into the batch's
    flattened boxes (B*h*w), owner position, location in the final map)."""
    last = len(chain.spatial)
    width = chain.map_sizes[last][1]
    y, x, in_map = _frame(chain, last, rows, columns, y_axis, x_axis)
    inside = in_map.ravel()
    per_position = in_map[0].size
    entries = np.arange(len(rows) * per_position)[inside]
    owners = np.repeat(np.arange(len(rows)), per_position)[inside]
    return entries, owners, np.broadcast_to(y * width + x, in_map.shape).ravel()[inside]


def _by_location(entries, owners, locations, location_count: int, positions: int, entry_count: int):
    """Arrange window values by final-map location, padded to the most per location:
    (gather index (L, K) into [values (entry_count); zero], owner (L, K): the position,
    or ``positions`` (a discarded sum) for padding)."""
    order = np.argsort(locations, kind="stable")
    entries, owners, locations = entries[order], owners[order], locations[order]
    per_location = np.bincount(locations, minlength=location_count)
    slots = max(int(per_location.max()) if per_location.size else 0, 1)
    first = np.concatenate([[0], np.cumsum(per_location)[:-1]])
    rank = np.arange(len(locations)) - first[locations]
    gather = np.full((location_count, slots), entry_count, np.int32)
    owner = np.full((location_count, slots), positions, np.int32)
    gather[locations, rank] = entries
    owner[locations, rank] = owners
    return gather, owner


def _gap_index(chain: Chain, rows, columns, y_axis: _Axis, x_axis: _Axis) -> np.ndarray:
    """Gather index of the final boxes' clean values into [clean map; zero]."""
    last = len(chain.spatial)
    height, width = chain.map_sizes[last]
    y, x, in_map = _frame(chain, last, rows, columns, y_axis, x_axis)
    return np.where(in_map, y * width + x, height * width).astype(np.int32)


def _gmp_index(chain: Chain, rows, columns, y_axis: _Axis, x_axis: _Axis):
    """Indices of the clean map's maxima outside each box: (first row, end row, per box
    row the part left of the box, the part right of it) into the tables of
    :func:`_outside_maxima` (rows outside the map point at its -inf row)."""
    last = len(chain.spatial)
    height, width = chain.map_sizes[last]
    (row_start, h), (column_start, w) = _box(y_axis, last, rows), _box(x_axis, last, columns)
    first_row = np.clip(row_start, 0, height)
    end_row = np.maximum(np.clip(row_start + h, 0, height), first_row)
    first_column = np.clip(column_start, 0, width)
    end_column = np.maximum(np.clip(column_start + w, 0, width), first_column)
    y = row_start[:, None] + np.arange(h)[None, :]
    inside = (y >= 0) & (y < height)
    dummy = height * (width + 1)
    left = np.where(inside, y * (width + 1) + first_column[:, None], dummy)
    right = np.where(inside, y * (width + 1) + end_column[:, None], dummy)
    return tuple(part.astype(np.int32) for part in (first_row, end_row, left, right))


def _outside_maxima(clean: np.ndarray):
    """Tables of the clean (H, W, C) map's maxima: rows before y, rows from y, and per
    row the columns before x and from x (flattened with one -inf row at the end)."""
    height, width, channels = clean.shape
    lowest = np.full((1, channels), -np.inf, np.float32)
    row_max = clean.max(axis=1)
    before = np.concatenate([lowest, np.maximum.accumulate(row_max, axis=0)])
    after = np.concatenate([np.maximum.accumulate(row_max[::-1], axis=0)[::-1], lowest])
    left = np.concatenate(
        [np.full((height, 1, channels), -np.inf, np.float32), np.maximum.accumulate(clean, axis=1)], axis=1
    )
    right = np.concatenate(
        [
            np.maximum.accumulate(clean[:, ::-1], axis=1)[:, ::-1],
            np.full((height, 1, channels), -np.inf, np.float32),
        ],
        axis=1,
    )
    flat = lambda table: np.concatenate([table.reshape(-1, channels), lowest])  # noqa: E731
    return before, after, flat(left), flat(right)
