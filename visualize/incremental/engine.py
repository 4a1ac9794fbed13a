"""The incremental occlusion engine: :class:`IncrementalOccluder` plans the batches of
square positions and runs the compiled passes.

Positions whose boxes have the same sizes in every layer form a :class:`_Batch`;
batches whose final boxes fit the memory budget go through one head pass as a
:class:`_Group`. Compiled functions, traced once per model, head, image size, patch and
stride with every size dynamic: the clean pass (the image's layer outputs), the tables
of the delta-form convs (their clean pre-activations, once per image), the window pass
(every layer's recomputed box for a batch of positions, a batch norm right after a conv
folded into its kernel and bias; stride-1 convs above the image in delta form, see
:func:`_delta_form`) and the head pass (the change of the first dense layer after
flatten, the vector layers, the target's probability and loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from fruitcnn.layers import BatchNorm, is_batch_norm
from visualize.incremental.analysis import Unsupported, _is_identity, _Spatial, analyse
from visualize.incremental.indexing import (
    _axis_plan,
    _by_location,
    _change_index,
    _flatten_entries,
    _gap_index,
    _gmp_index,
    _groups,
    _image_index,
    _in_map,
    _outside_maxima,
    _splice_index,
)
from visualize.targets import LOGITS_SUFFIX, class_loss, class_probability

# Floats (float32) of the largest layer's windows in one window-pass batch, and of the
# final boxes (times the dense layer's width) in one head pass: the batch sizes follow.
WINDOW_BUDGET = 1 << 25


def _affine(layer) -> tuple[tf.Tensor, tf.Tensor]:
    """(scale, offset) of a batch-norm layer in inference mode: y = x * scale + offset."""
    if type(layer) is BatchNorm:
        scale = layer.gamma / tf.sqrt(layer.moving_variance + layer.epsilon)
        return scale, layer.beta - layer.moving_mean * scale
    inverse = tf.math.rsqrt(layer.moving_variance + layer.epsilon)
    if layer.scale:
        inverse = inverse * layer.gamma
    offset = -layer.moving_mean * inverse
    if layer.center:
        offset = offset + layer.beta
    return inverse, offset


def _apply_pointwise(layers, values):
    for layer in layers:
        if not _is_identity(layer):
            values = layer(values, training=False)
    return values


def _conv_parameters(op: _Spatial):
    """(kernel, bias or None, pointwise layers left) of a conv, with a batch norm that
    directly follows it folded in (one fused conv-bias-activation instead of three
    passes over the windows; the same values up to float32 rounding)."""
    kernel = op.layer.kernel.value
    bias = op.layer.bias.value if op.layer.use_bias else None
    rest = [op.activation] if op.activation is not None else []
    rest += [layer for layer in op.pointwise if not _is_identity(layer)]
    if rest and is_batch_norm(rest[0]):
        scale, offset = _affine(rest.pop(0))
        kernel = kernel * scale
        bias = offset if bias is None else bias * scale + offset
    return kernel, bias, rest


def _delta_form(index: int, op: _Spatial) -> bool:
    """Does this spatial layer run in delta form? Stride-1 convs wider than 1x1 whose
    input is a recomputed map. A conv is linear, conv(new) = conv(old) + conv(new - old),
    and the change (new - old) is zero outside the changed input box: the output box is
    the clean pre-activations (computed once per image) plus a transposed conv of the
    changed box alone, which needs that box times the kernel in products instead of the
    output box times it (at patch 10 on the occlusion benchmark's model 2.8 M instead of
    5.0 M per position). oneDNN runs the transposed conv about as fast as the dense
    one, so the time saved is mostly the wider input window no longer gathered and the
    recomputed values no longer copied into a splice table (measured in the README).
    Not on the image: with its few channels the gather of the wide output box costs
    more than the window (measured 10% slower on the same model)."""
    return op.kind == "conv" and op.stride == (1, 1) and op.kernel != (1, 1) and index > 0


@dataclass
class _Batch:
    """Positions that run through the window pass together (same box sizes)."""

    rows: np.ndarray  # (B,) index of each position's row among the evaluated rows
    columns: np.ndarray
    geometry: tuple  # the window pass's index and mask tensors
    entries: tuple | None  # flatten: the final boxes' values inside the map (see _flatten_entries)
    final_box: int  # values per position and channel in the final map's box
    multiply_adds: int  # of its conv boxes and the dense layer's change


@dataclass
class _Group:
    """Batches whose final boxes go through one head pass."""

    batches: list[_Batch]
    rows: np.ndarray
    columns: np.ndarray
    geometry: tuple  # flatten: (gather, owner, positions) of _by_location


class IncrementalOccluder:
    """Incremental occlusion of one model head, image size, patch and stride.

    Build once (the geometry of every position), then call per image:
    ``occluder(image, fill, target) -> (probability, loss, baseline)`` with the maps on
    the grid of evaluated centres. Three compiled functions, traced at the first call
    and then reused for every image (their window sizes are dynamic, so all batches share
    one trace): the clean pass (the image's layer outputs), the window pass of a batch of
    positions, and the head pass (the change of the first dense layer after flatten, the
    vector layers and the target's probability and loss) of many batches at once.

    Attributes:
        multiply_adds: multiply-adds of one image's maps (convs and the first dense
            layer's change), for throughput figures.
    """

    def __init__(
        self,
        model: keras.Model,
        head: str,
        shape: Sequence[int],
        patch: int,
        stride: int,
        batch_size: int | None = None,
    ):
        self.chain = chain = analyse(model, head)
        if tuple(chain.map_sizes[0]) != tuple(shape[:2]):
            raise Unsupported(
                f"the model's image size {chain.map_sizes[0]} is not the image's {tuple(shape[:2])}"
            )
        self.patch, self.stride = int(patch), int(stride)
        height, width = chain.map_sizes[0]
        self.rows = np.arange(0, height, self.stride)
        self.columns = np.arange(0, width, self.stride)
        self._axes = (
            _axis_plan(chain.spatial, 0, self.rows, self.patch),
            _axis_plan(chain.spatial, 1, self.columns, self.patch),
        )
        # which convs run in delta form (see _delta_form; not those whose output map is
        # recomputed whole: their output box is not the changed box widened by the kernel)
        self.delta = [
            _delta_form(index, op) and not any(axis.whole[index + 1] for axis in self._axes)
            for index, op in enumerate(chain.spatial)
        ]
        # flatten: the first dense layer's input (its clean output is computed from it);
        # global pooling: the pooled vector
        flatten = chain.transition == "flatten"
        vector = chain.first_dense.input if flatten else chain.transition_layer.output
        outputs = [*self._map_tensors(model), vector, model.get_layer(head + LOGITS_SUFFIX).output]
        self._clean = keras.Model(model.inputs, outputs)
        self._clean_pass = tf.function(lambda images: self._clean(images, training=False), autograph=False)
        batches = self._plan_batches(batch_size)
        self.multiply_adds = sum(batch.multiply_adds for batch in batches)
        self.groups = self._head_groups(batches, batch_size)
        # width of the vector the tail layers read: the first dense layer's output, or the pooled map
        self._vector_width = int(chain.first_dense.kernel.shape[-1]) if flatten else chain.map_channels[-1]
        self._passes: dict = {}  # the window and head passes, compiled at their first call

    def _plan_batches(self, batch_size: int | None) -> list[_Batch]:
        """Positions grouped by their box sizes, cut into batches that fit the memory
        budget (or of ``batch_size``), with their geometry."""
        chain = self.chain
        y_axis, x_axis = self._axes
        flatten = chain.transition == "flatten"
        units = int(chain.first_dense.kernel.shape[-1]) if flatten else 0
        batches = []
        for row_sizes, row_positions in _groups(y_axis).items():
            for column_sizes, column_positions in _groups(x_axis).items():
                size = batch_size or max(
                    1, WINDOW_BUDGET // self._floats_per_position(row_sizes, column_sizes)
                )
                rows, columns = np.meshgrid(row_positions, column_positions, indexing="ij")
                rows, columns = rows.ravel(), columns.ravel()
                for start in range(0, len(rows), size):
                    chunk = (rows[start : start + size], columns[start : start + size])
                    entries = _flatten_entries(chain, *chunk, y_axis, x_axis) if flatten else None
                    work = len(chunk[0]) * self._conv_multiply_adds(row_sizes, column_sizes)
                    if flatten:  # the dense layer's change: one product per value inside the map
                        work += len(entries[0]) * chain.map_channels[-1] * units
                    geometry = self._geometry(*chunk, y_axis, x_axis)
                    batches.append(_Batch(*chunk, geometry, entries, row_sizes[-1] * column_sizes[-1], work))
        return batches

    def _conv_multiply_adds(self, row_sizes, column_sizes) -> int:
        """Multiply-adds of one position's recomputed conv boxes (a delta-form conv: its
        changed input box times the kernel, a window-form one: its output box times it)."""
        total = 0
        for index, op in enumerate(self.chain.spatial):
            if op.kind == "conv":
                inputs = self.chain.map_channels[index]
                outputs = self.chain.map_channels[index + 1]
                if not self.delta[index]:
                    box = row_sizes[index + 1] * column_sizes[index + 1]
                else:
                    box = row_sizes[index] * column_sizes[index]
                total += box * outputs * op.kernel[0] * op.kernel[1] * inputs
        return int(total)

    def _head_groups(self, batches: list[_Batch], batch_size: int | None) -> list[_Group]:
        """Consecutive batches whose final boxes fit the memory budget go through one
        head pass (with ``batch_size`` set: each batch on its own)."""
        chain = self.chain
        width = chain.map_channels[-1]
        if chain.transition == "flatten":  # the products per location are units wide
            width = max(width, int(chain.first_dense.kernel.shape[-1]))
        groups: list[list[_Batch]] = []
        floats = 0
        for batch in batches:
            size = len(batch.rows) * batch.final_box * width
            if not groups or batch_size is not None or floats + size > WINDOW_BUDGET:
                groups.append([])
                floats = 0
            groups[-1].append(batch)
            floats += size
        return [
            _Group(
                group,
                np.concatenate([batch.rows for batch in group]),
                np.concatenate([batch.columns for batch in group]),
                self._flatten_geometry(group) if chain.transition == "flatten" else (),
            )
            for group in groups
        ]

    def _flatten_geometry(self, group: list[_Batch]) -> tuple:
        """The head pass's (gather, owner, positions) for the batches of a group, whose
        final boxes arrive concatenated."""
        entries, owners, places, entry_offset, position_offset = [], [], [], 0, 0
        for batch in group:
            entry, owner, place = batch.entries
            entries.append(entry + entry_offset)
            owners.append(owner + position_offset)
            places.append(place)
            entry_offset += len(batch.rows) * batch.final_box
            position_offset += len(batch.rows)
        locations = self.chain.map_sizes[-1][0] * self.chain.map_sizes[-1][1]
        arranged = _by_location(
            np.concatenate(entries),
            np.concatenate(owners),
            np.concatenate(places),
            locations,
            position_offset,
            entry_offset,
        )
        return (*(tf.constant(part) for part in arranged), tf.constant(position_offset, tf.int32))

    def _map_tensors(self, model) -> list:
        """The tensor of each map: map 0 (the image after the pointwise layers on it),
        map i after spatial layer i and its pointwise layers."""
        chain = self.chain
        tensors = [chain.prefix[-1].output if chain.prefix else model.inputs[0]]
        for op in chain.spatial:
            tensors.append((op.pointwise[-1] if op.pointwise else op.layer).output)
        if tensors[-1] is not chain.transition_layer.input:
            raise Unsupported(f"the map before {chain.transition_layer.name} is not the last spatial layer's")
        return tensors

    def _floats_per_position(self, row_sizes, column_sizes) -> int:
        """Floats of the largest layer's input and output boxes of one position."""
        channels = self.chain.map_channels
        largest = 1
        for index in range(len(row_sizes)):
            floats = row_sizes[index] * column_sizes[index] * channels[index]
            if index + 1 < len(row_sizes):
                floats += row_sizes[index + 1] * column_sizes[index + 1] * channels[index + 1] * 2
            largest = max(largest, floats)
        return largest

    def _geometry(self, rows, columns, y_axis, x_axis) -> tuple:
        """The window pass's index and mask tensors of a batch of positions, in the order
        it reads them: per spatial layer, its input windows (the image windows and whether
        they lie in the image, or the splice index of a next layer) or, in delta form,
        the index of its changed input box, whether that lies in the map and the index of
        its output box; then whether the final boxes lie in the map, and the global
        pooling's indices."""
        chain = self.chain
        parts: list = []
        for index in range(len(chain.spatial)):
            if self.delta[index]:
                parts.append(_change_index(chain, index, rows, columns, y_axis, x_axis))
                parts.append(_in_map(chain, index, rows, columns, y_axis, x_axis))
                parts.append(_change_index(chain, index + 1, rows, columns, y_axis, x_axis))
            elif index == 0:
                parts.append(_image_index(chain, rows, columns, y_axis, x_axis, self.patch))
                parts.append(_in_map(chain, 0, rows, columns, y_axis, x_axis))
            else:
                parts.append(_splice_index(chain, index, rows, columns, y_axis, x_axis))
        if not chain.spatial:  # the image itself goes to the transition
            parts.append(_image_index(chain, rows, columns, y_axis, x_axis, self.patch))
        last = len(chain.spatial)
        parts.append(_in_map(chain, last, rows, columns, y_axis, x_axis))
        if chain.transition == "gap":
            parts.append(_gap_index(chain, rows, columns, y_axis, x_axis))
        elif chain.transition == "gmp":
            parts.extend(_gmp_index(chain, rows, columns, y_axis, x_axis))
        return tuple(tf.constant(part) for part in parts)

    # -- the compiled passes ----------------------------------------------------------

    def _windows(self, maps, fill, extras, geometry, tables):
        """The window pass: every layer's recomputed box for a batch of positions.

        ``tables``: per delta-form conv, the three of :meth:`_tables`. Returns the final
        map's windows as rows of channels (flatten), or the pooled vectors (global
        pooling).
        """
        chain = self.chain
        channels = chain.map_channels
        parts, tables = iter(geometry), iter(tables)
        values = None  # the recomputed (changed) box of the map the next layer reads
        for index, op in enumerate(chain.spatial):
            if self.delta[index]:
                old, pre, flipped = next(tables), next(tables), next(tables)
                # new - old inside the map (outside it the conv sees zeros)
                change = tf.gather(old, next(parts))
                change = tf.where(next(parts)[..., None], values - change, tf.constant(0, values.dtype))
                pre = tf.gather(pre, next(parts))
                # the clean pre-activations plus the conv of the change (see _delta_form)
                values = pre + tf.nn.conv2d_transpose(change, flipped, tf.shape(pre), 1, "VALID")
                values = _apply_pointwise(_conv_parameters(op)[2], values)
                continue
            if index == 0:  # the image windows, square filled in, (B, h, w, C)
                pad = tf.fill([1, channels[0]], tf.cast(op.pad_value, fill.dtype))
                inputs = tf.gather(tf.concat([maps[0], fill, pad], axis=0), next(parts))
                inside = next(parts)
            else:  # splice the recomputed boxes into the clean map's input windows
                flat = tf.reshape(values, [-1, channels[index]])
                pad = tf.fill([1, channels[index]], tf.cast(op.pad_value, values.dtype))
                splice = next(parts)
                inputs = tf.gather(tf.concat([maps[index], flat, pad], axis=0), splice)
                inside = splice < tf.shape(maps[index])[0] + tf.shape(flat)[0]
            values = self._spatial_op(op, inputs, inside)
        if not chain.spatial:  # the image windows themselves
            pad = tf.zeros([1, channels[0]], fill.dtype)
            values = tf.gather(tf.concat([maps[0], fill, pad], axis=0), next(parts))
        last = len(chain.spatial)
        in_map, rest, clean = next(parts), list(parts), maps[last]
        if chain.transition == "flatten":
            return tf.reshape(values, [-1, channels[last]])
        if chain.transition == "gap":
            area = float(chain.map_sizes[last][0] * chain.map_sizes[last][1])
            # the box's new values inside the map (a masked sum as one product) minus its old ones
            new = tf.einsum("bhwc,bhw->bc", values, tf.cast(in_map, values.dtype))
            old = tf.gather(tf.concat([clean, tf.zeros([1, channels[last]], clean.dtype)], 0), rest[0])
            return extras[0][None, :] + (new - tf.reduce_sum(old, axis=[1, 2])) / area
        before, after, left, right = extras
        first_row, end_row, left_index, right_index = rest
        lowest = tf.constant(-np.inf, values.dtype)
        inside = tf.reduce_max(tf.where(in_map[..., None], values, lowest), axis=[1, 2])
        outside = tf.maximum(tf.gather(before, first_row), tf.gather(after, end_row))
        outside = tf.maximum(outside, tf.reduce_max(tf.gather(left, left_index), axis=1))
        outside = tf.maximum(outside, tf.reduce_max(tf.gather(right, right_index), axis=1))
        return tf.maximum(inside, outside)

    @staticmethod
    def _spatial_op(op: _Spatial, inputs, inside):
        """One conv or pooling layer and its pointwise layers on a batch of input windows
        (``inside``: (B, h, w) whether each input value lies inside the map)."""
        strides = [1, op.stride[0], op.stride[1], 1]
        if op.kind == "conv":
            kernel, bias, rest = _conv_parameters(op)
            values = tf.nn.conv2d(inputs, kernel, strides, "VALID")
            if bias is not None:
                values = tf.nn.bias_add(values, bias)
            return _apply_pointwise(rest, values)
        window = [1, op.kernel[0], op.kernel[1], 1]
        if op.kind == "maxpool":
            values = tf.nn.max_pool2d(inputs, window, strides, "VALID")
        else:
            values = tf.nn.avg_pool2d(inputs, window, strides, "VALID")
            if op.pads:  # 'same' average pooling divides by the values inside the map only
                share = tf.nn.avg_pool2d(tf.cast(inside[..., None], inputs.dtype), window, strides, "VALID")
                values = values / tf.maximum(share, tf.constant(1e-30, inputs.dtype))
        return _apply_pointwise(op.pointwise, values)

    def _head(self, clean, extras, target, collected, geometry):
        """The head pass: probability and loss of ``target`` for every position of a group."""
        chain = self.chain
        if chain.transition == "flatten":
            vector = self._flatten_change(clean, collected, *geometry, extras[0])
        else:
            vector = collected
        logits = _apply_pointwise(chain.tail, tf.ensure_shape(vector, [None, self._vector_width]))
        targets = tf.fill(tf.shape(logits)[:1], target)
        return class_probability(logits, targets), class_loss(logits, targets)

    def _flatten_change(self, clean, entries, gather, owner, positions, dense_out):
        """The first dense layer's output for every position: the clean output plus the
        change of its inputs times the weights, summed per location of the final map."""
        chain = self.chain
        last = len(chain.spatial)
        height, width = chain.map_sizes[last]
        channels = chain.map_channels[last]
        new = tf.gather(tf.concat([entries, tf.zeros([1, channels], entries.dtype)], 0), gather)  # (L, K, C)
        old = clean[:, None, :]  # (L, 1, C)
        for layer in chain.flat_pointwise:
            if _is_identity(layer):
                continue
            if is_batch_norm(layer):  # per-feature parameters: one per location and channel
                scale, offset = _affine(layer)
                scale = tf.reshape(scale, [height * width, 1, channels])
                offset = tf.reshape(offset, [height * width, 1, channels])
                new, old = new * scale + offset, old * scale + offset
            else:
                new, old = layer(new), layer(old)
        kernel = tf.reshape(chain.first_dense.kernel.value, [height * width, channels, -1])
        per_location = tf.linalg.matmul(new - old, kernel)  # (L, K, U)
        # padded slots belong to the one past the last position
        summed = tf.math.unsorted_segment_sum(
            tf.reshape(per_location, [-1, tf.shape(per_location)[-1]]), tf.reshape(owner, [-1]), positions + 1
        )
        return dense_out[None, :] + summed[:positions]

    # -- per image --------------------------------------------------------------------

    def _tables(self, clean_maps):
        """What the delta-form convs read, for one image (``clean_maps``: each map of
        the image and of the fill image, (2, h, w, C)). Per delta-form conv: the table of
        its input's old values ([clean map; zero]), the table of its clean
        pre-activations ([output before the pointwise layers; zero], a batch norm right
        after it folded in), and its kernel flipped for the transposed conv (kh, kw, C', C)."""

        def with_zero(values):
            rows = tf.reshape(values, [-1, values.shape[-1]])
            return tf.concat([rows, tf.zeros_like(rows[:1])], 0)

        tables = []
        for index, op in enumerate(self.chain.spatial):
            if not self.delta[index]:
                continue
            source = clean_maps[index][:1]
            kernel, bias, _ = _conv_parameters(op)
            height, width = self.chain.map_sizes[index]
            (top, left), (rows, columns) = op.before, op.out_size
            padding = [  # the layer's own: 'same', 'valid' or explicit
                [0, 0],
                [top, rows - 1 + op.kernel[0] - top - height],
                [left, columns - 1 + op.kernel[1] - left - width],
                [0, 0],
            ]
            pre = tf.nn.conv2d(tf.pad(source, padding), kernel, 1, "VALID")
            if bias is not None:
                pre = tf.nn.bias_add(pre, bias)
            flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
            tables += [with_zero(source), with_zero(pre), flipped]
        return tables

    def _extras(self, last_map: tf.Tensor, vector) -> tuple:
        """Per-image values of the head pass: the first dense layer's clean output
        (flatten), the clean pooled vector (gap) or the tables of maxima (gmp)."""
        chain = self.chain
        if chain.transition == "flatten":
            dense = chain.first_dense
            output = tf.linalg.matmul(vector[:1], dense.kernel.value)
            if dense.use_bias:
                output = output + dense.bias.value
            return (output[0],)
        if chain.transition == "gap":
            return (vector[0],)
        return tuple(tf.constant(table) for table in _outside_maxima(last_map.numpy()))

    @staticmethod
    def _specs(structure):
        """Input signature with every size dynamic but the channels of float tensors."""

        def spec(tensor):
            if tensor.dtype.is_floating:
                return tf.TensorSpec([None] * (tensor.shape.rank - 1) + [tensor.shape[-1]], tensor.dtype)
            return tf.TensorSpec([None] * tensor.shape.rank, tensor.dtype)

        return tf.nest.map_structure(spec, structure)

    def _run(self, function, *arguments):
        """``function`` (a pass), compiled at its first call with every size dynamic."""
        name = function.__name__
        if name not in self._passes:
            self._passes[name] = tf.function(
                function, input_signature=self._specs(arguments), autograph=False
            )
        return self._passes[name](*arguments)

    @property
    def positions(self) -> int:
        """Square positions per image."""
        return len(self.rows) * len(self.columns)

    def __call__(self, image: np.ndarray, fill: np.ndarray, target: int, progress=None):
        """Maps of one (H, W, C) image in pixel units with the (H, W, C) fill image.

        Returns:
            (probability, loss) on the grid of evaluated centres (rows, columns), and the
            unoccluded probability; ``progress(positions)`` is called after each batch
            with the number of positions it held.
        """
        chain = self.chain
        outputs = self._clean_pass(tf.constant(np.stack([image, fill]).astype(np.float32)))
        clean_maps = outputs[: len(chain.spatial) + 1]
        vector, logits = outputs[-2], outputs[-1]
        maps = [tf.reshape(values[0], [-1, values.shape[-1]]) for values in clean_maps]
        fill_values = tf.reshape(clean_maps[0][1], [-1, clean_maps[0].shape[-1]])
        extras = self._extras(clean_maps[-1][0], vector)
        tables = self._run(self._tables, list(clean_maps)) if any(self.delta) else []
        target_tensor = tf.constant(int(target), tf.int32)
        probability = np.zeros((len(self.rows), len(self.columns)), np.float32)
        loss = np.zeros_like(probability)
        for group in self.groups:
            collected = []
            for batch in group.batches:
                collected.append(
                    self._run(
                        self._windows, maps, fill_values, list(extras), list(batch.geometry), list(tables)
                    )
                )
                if progress is not None:
                    progress(len(batch.rows))
            collected = collected[0] if len(collected) == 1 else tf.concat(collected, axis=0)
            values = self._run(
                self._head, maps[-1], list(extras), target_tensor, collected, list(group.geometry)
            )
            probability[group.rows, group.columns] = values[0].numpy()
            loss[group.rows, group.columns] = values[1].numpy()
        baseline = class_probability(logits[:1], tf.constant([int(target)]))
        return probability, loss, float(baseline.numpy()[0])
