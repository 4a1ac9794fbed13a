"""Exact incremental occlusion: the maps of :mod:`visualize.occlusion` for a fraction of the work.

An occluding square changes only a box of every layer's output (after Krypton,
Nakandala, Kumar and Papakonstantinou, SIGMOD 2019). The clean image's maps are
computed once; for every square position only the changed box of each layer is
recomputed, batched across positions, from a window cut out of the clean map with the
recomputed values of the layer below spliced in. Nothing is approximated: every
recomputed value is what the full forward pass gives for the occluded image (up to
float32 rounding, well under 1e-4 in the maps), and every value not recomputed is
provably unchanged.

How it is done:

1. :func:`analyse` walks the path from the image to the explained head's logits and
   sorts its layers: *pointwise* ones (normalisation, batch norm in inference mode,
   element-wise activations, dropout), *spatial* ones (conv and max/average pooling,
   each a window, a stride and the padding before the first row and column), the step
   from maps to a vector (flatten, global average or global max pooling) and the
   vector layers after it. Anything else raises :class:`Unsupported` with the reason
   (the caller then falls back to batched re-inference and says why).
2. :func:`_axis_plan` follows one image axis through the spatial layers for every
   square position (rows and columns are independent): the changed interval of each
   map (the square, then every output whose window reads a changed input; nothing is
   clipped, so sizes depend only on the position modulo the strides) and the input
   window each layer reads to recompute it (its changed interval times the stride,
   plus the window's reach). The input window is cut from the clean map with the
   layer below's recomputed values spliced in, by one gather from the table [clean
   map; recomputed boxes; padding value]; values outside a map are what the layer's
   padding sees (zeros for convs, nothing for 'same' pooling: -inf for max, left out
   of the count for average). (Tried and dropped: boxes aligned to the pooling grid, so
   that the pooling reads the conv's box without a splice, cost 0.1 s more on the
   benchmark model: the conv work of the extra rows outweighs the gathers saved.)
3. Positions whose boxes have the same sizes in every layer form a batch (each gets
   its own tight boxes); all batches share one compiled function whose sizes are
   dynamic, traced once per model, head, image size, patch and stride. A batch norm
   right after a conv is folded into its kernel and bias, so conv, bias and activation
   run as one fused operation. The passes are traced without autograph (their Python
   control flow is on static values): the line model's first map took 1.7 s with it,
   0.3 s without.
4. Flatten: the first dense layer changes by ``sum (new - old) * W`` over the changed
   box only. The head pass gathers every changed value of all batches by location of
   the final map and multiplies each location's values by that location's weights in
   one batched product, then sums the products back per position. Global average
   pooling adds the box's change of the mean; global max pooling takes the larger of
   the box's new maximum and the clean map's maximum outside the box (from prefix and
   suffix maxima per row and column). The vector layers then run on the batch as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from visualize.targets import LOGITS_SUFFIX, class_loss, class_probability

# Element-wise activation functions (by Keras name): the same box changes.
ELEMENTWISE = frozenset(
    (
        "relu elu gelu tanh sigmoid leaky_relu swish silu linear softplus softsign selu relu6 "
        "hard_sigmoid hard_silu hard_swish exponential mish celu log_sigmoid"
    ).split()
)
# Layers that are the identity at inference (exact types: a subclass may change that).
IDENTITY_LAYERS = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)
# Element-wise layers called as they are on any window.
ELEMENTWISE_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.Rescaling)
SPATIAL_LAYERS = (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
TRANSITIONS = {
    keras.layers.Flatten: "flatten",
    keras.layers.GlobalAveragePooling2D: "gap",
    keras.layers.GlobalMaxPooling2D: "gmp",
}
# Floats (float32) of the largest layer's windows in one window-pass batch, and of the
# final boxes (times the dense layer's width) in one head pass: the batch sizes follow.
WINDOW_BUDGET = 1 << 25


class Unsupported(ValueError):
    """The model has a layer that incremental occlusion cannot handle; ``str()`` says which."""


@dataclass
class _Spatial:
    """A conv or pooling layer with the pointwise layers that follow it."""

    kind: str  # conv, maxpool or avgpool
    kernel: tuple[int, int]
    stride: tuple[int, int]
    before: tuple[int, int]  # padding rows / columns before the first
    out_size: tuple[int, int]
    pads: bool  # some output reads outside the input map (average pooling then counts)
    layer: keras.layers.Layer
    activation: keras.layers.Layer | None = None  # a conv's own activation, as a layer
    pointwise: list = field(default_factory=list)  # the model's pointwise layers after it

    @property
    def pad_value(self) -> float:
        """What the layer sees outside its input map: zeros, or nothing (-inf) for max pooling."""
        return -np.inf if self.kind == "maxpool" else 0.0


@dataclass
class Chain:
    """The path from the image to one head's logits, sorted for incremental occlusion."""

    prefix: list  # pointwise layers on the image (normalisation ...)
    spatial: list[_Spatial]
    transition: str  # flatten, gap or gmp
    transition_layer: keras.layers.Layer
    flat_pointwise: list  # flatten only: pointwise layers between flatten and the first dense
    first_dense: keras.layers.Layer | None  # flatten only: the dense layer updated by its change
    tail: list  # vector layers up to and including the logits
    map_sizes: list[tuple[int, int]]  # (rows, columns) of map 0 (the image) ... map m
    map_channels: list[int]


def _path(model: keras.Model, head: str) -> list[keras.layers.Layer]:
    """The layers from the input (excluded) to ``<head>_logits`` (included), found
    through each layer's (public) input and output tensors."""
    producers = {}
    for layer in model.layers:
        try:
            producers.setdefault(id(layer.output), layer)
        except (AttributeError, ValueError):  # a layer called several times has no one output
            continue
    image = model.inputs[0]
    layer = model.get_layer(head + LOGITS_SUFFIX)
    path = []
    while type(layer) is not keras.layers.InputLayer:
        path.append(layer)
        try:
            source = layer.input
        except (AttributeError, ValueError):
            raise Unsupported(f"layer {layer.name} is called more than once in the model") from None
        if isinstance(source, (list, tuple, dict)):
            raise Unsupported(f"layer {layer.name} has {len(source)} inputs (only chains are handled)")
        if source is image:  # (a Sequential model lists no input layer)
            break
        if id(source) not in producers:
            raise Unsupported(f"the input of layer {layer.name} comes from no single layer")
        layer = producers[id(source)]
    return path[::-1]


def _activation_name(function) -> str:
    return getattr(function, "__name__", type(function).__name__)


def _is_identity(layer) -> bool:
    return type(layer) in IDENTITY_LAYERS


def _is_batch_norm(layer) -> bool:
    from fruitcnn.layers import BatchNorm

    return type(layer) in (BatchNorm, keras.layers.BatchNormalization)


def _is_pointwise(layer) -> bool:
    """Does the layer map each value (per channel) on its own, the same at every location?
    Exact types only: a subclass may compute something else."""
    if _is_identity(layer) or type(layer) in ELEMENTWISE_LAYERS:
        return True
    if type(layer) is keras.layers.Activation:
        return _activation_name(layer.activation) in ELEMENTWISE
    if _is_batch_norm(layer) or type(layer) is keras.layers.Normalization:
        if getattr(layer, "batch_stats_at_inference", False) or getattr(layer, "renorm", False):
            return False
        axis = getattr(layer, "axis", -1)  # fruitcnn's BatchNorm: always the last
        axes = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        return axes in ((-1,), (len(layer.input.shape) - 1,))  # per channel
    return False


def _check_weights(layer) -> None:
    if getattr(layer, "lora_enabled", False):
        raise Unsupported(f"layer {layer.name} has LoRA weights")


def _same_before(size: int, out: int, kernel: int, stride: int) -> int:
    """Rows of 'same' padding before the first (TensorFlow's rule: the smaller half)."""
    return max((out - 1) * stride + kernel - size, 0) // 2


def _spatial(layer, zero_padding) -> _Spatial:
    _check_weights(layer)
    shape_in = tuple(int(size) for size in layer.input.shape[1:3])
    shape_out = tuple(int(size) for size in layer.output.shape[1:3])
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise Unsupported(f"layer {layer.name} is {layer.data_format}; only channels_last is handled")
    if isinstance(layer, keras.layers.Conv2D):
        if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            raise Unsupported(f"conv {layer.name} is dilated or grouped")
        kind, kernel, stride = "conv", tuple(layer.kernel_size), tuple(layer.strides)
    else:
        kind = "maxpool" if isinstance(layer, keras.layers.MaxPooling2D) else "avgpool"
        kernel, stride = tuple(layer.pool_size), tuple(layer.strides)
        if zero_padding is not None:
            raise Unsupported(f"zero padding before pooling layer {layer.name}")
    before = [0, 0]
    if zero_padding is not None:
        (top, _), (left, _) = zero_padding.padding
        before = [int(top), int(left)]
        shape_in = tuple(int(size) for size in zero_padding.input.shape[1:3])
    padded = [
        shape_in[axis] + (0 if zero_padding is None else sum(zero_padding.padding[axis])) for axis in (0, 1)
    ]
    if layer.padding == "same":
        for axis in (0, 1):
            before[axis] += _same_before(padded[axis], shape_out[axis], kernel[axis], stride[axis])
    pads = any(
        before[axis] > 0
        or (shape_out[axis] - 1) * stride[axis] + kernel[axis] - before[axis] > shape_in[axis]
        for axis in (0, 1)
    )
    return _Spatial(kind, kernel, stride, tuple(before), shape_out, pads, layer)


def analyse(model: keras.Model, head: str) -> Chain:
    """Sort the path to ``head``'s logits for incremental occlusion.

    Raises:
        Unsupported: naming the first layer (or structure) it cannot handle.
    """
    if len(model.inputs) != 1 or None in tuple(model.inputs[0].shape[1:]):
        raise Unsupported("the model needs one image input of a fixed size")
    path = _path(model, head)
    prefix, spatial, index = _image_layers(path)
    transition_layer = path[index]
    if getattr(transition_layer, "data_format", "channels_last") != "channels_last":
        raise Unsupported(f"layer {transition_layer.name} is {transition_layer.data_format}")
    if getattr(transition_layer, "keepdims", False) or len(transition_layer.input.shape) != 4:
        raise Unsupported(f"layer {transition_layer.name} keeps the map's dimensions")
    transition = TRANSITIONS[type(transition_layer)]
    flat_pointwise, first_dense, tail = _vector_layers(transition, transition_layer, path[index + 1 :])
    sizes = [tuple(int(size) for size in model.inputs[0].shape[1:3])]
    channels = [int(model.inputs[0].shape[-1])]
    for op in spatial:
        sizes.append(op.out_size)
        channels.append(int(op.layer.output.shape[-1]))
    return Chain(
        prefix,
        spatial,
        transition,
        transition_layer,
        flat_pointwise,
        first_dense,
        tail,
        sizes,
        channels,
    )


def _image_layers(path: list) -> tuple[list, list[_Spatial], int]:
    """(pointwise layers on the image, the spatial layers with their pointwise layers,
    the index of the flatten or global pooling layer in ``path``)."""
    prefix, spatial = [], []
    zero_padding = None
    for index, layer in enumerate(path):
        if type(layer) is keras.layers.ZeroPadding2D:
            if zero_padding is not None:
                raise Unsupported(f"two zero-padding layers in a row ({layer.name})")
            zero_padding = layer
        elif type(layer) in SPATIAL_LAYERS:
            op = _spatial(layer, zero_padding)
            zero_padding = None
            activation = _activation_name(layer.activation) if op.kind == "conv" else "linear"
            if activation not in ELEMENTWISE:
                raise Unsupported(f"conv {layer.name} has the activation {activation}")
            if activation != "linear":
                op.activation = keras.layers.Activation(layer.activation)
            spatial.append(op)
        elif zero_padding is not None:
            raise Unsupported(f"zero padding {zero_padding.name} is not followed by a conv")
        elif _is_pointwise(layer) and len(layer.output.shape) == 4:
            (spatial[-1].pointwise if spatial else prefix).append(layer)
        elif type(layer) in TRANSITIONS:
            return prefix, spatial, index
        else:
            raise Unsupported(f"layer {layer.name} ({type(layer).__name__}) on the image path")
    raise Unsupported("the image path has no flatten or global pooling layer")


def _vector_layers(transition: str, transition_layer, rest: list):
    """(pointwise layers between flatten and the first dense layer, that dense layer,
    the vector layers after it) for flatten; ([], None, the vector layers) otherwise."""
    for layer in rest:  # the vector layers run as they are, on the batch of vectors
        if not (type(layer) is keras.layers.Dense or _is_pointwise(layer)) or len(layer.output.shape) != 2:
            raise Unsupported(f"layer {layer.name} ({type(layer).__name__}) after {transition_layer.name}")
        _check_weights(layer)
    if transition != "flatten":
        return [], None, rest
    rest = list(rest)
    flat_pointwise = []
    while rest and type(rest[0]) is not keras.layers.Dense:
        layer = rest.pop(0)
        if type(layer) is keras.layers.Normalization:
            raise Unsupported(f"layer {layer.name} (Normalization) between flatten and dense")
        flat_pointwise.append(layer)
    if not rest:
        raise Unsupported(f"no dense layer after {transition_layer.name}")
    first_dense = rest.pop(0)
    if _activation_name(first_dense.activation) != "linear":
        rest.insert(0, keras.layers.Activation(first_dense.activation))
    return flat_pointwise, first_dense, rest


# ---------------------------------------------------------------------------------------
# Geometry: which rows (and, the same way, columns) each position changes and recomputes.


@dataclass(frozen=True)
class _Axis:
    """One axis of every position: per map i, the recomputed window [start, start + size)
    and (for maps read by a next layer) that layer's input window."""

    top: np.ndarray  # (P,) first row of the square (may be negative)
    window_start: list[np.ndarray]  # per map, (P,)
    window_size: list[np.ndarray]
    input_start: list[np.ndarray]  # [i]: the input window of spatial layer i (it reads map i)
    input_size: list[np.ndarray]


def _axis_plan(spatial: Sequence[_Spatial], axis: int, centres: np.ndarray, patch: int) -> _Axis:
    """Changed intervals and recomputed windows along one axis (see the module notes)."""
    top = centres.astype(np.int64) - patch // 2
    low, high = [top], [top + patch - 1]
    for op in spatial:
        kernel, stride, before = op.kernel[axis], op.stride[axis], op.before[axis]
        # outputs o whose window [o*s - before, o*s - before + k - 1] meets [low, high]
        new_low = -((-(low[-1] + before - kernel + 1)) // stride)
        new_high = (high[-1] + before) // stride
        # an input that no output reads (a stride longer than the window) changes nothing;
        # keep one (unchanged, recomputed exactly) output so every window has a size
        low.append(new_low)
        high.append(np.maximum(new_high, new_low))
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
    return _Axis(top, start, size, in_start, in_size)


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


# ---------------------------------------------------------------------------------------
# The compiled window pass.


def _affine(layer) -> tuple[tf.Tensor, tf.Tensor]:
    """(scale, offset) of a batch-norm layer in inference mode: y = x * scale + offset."""
    from fruitcnn.layers import BatchNorm

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
    if rest and _is_batch_norm(rest[0]):
        scale, offset = _affine(rest.pop(0))
        kernel = kernel * scale
        bias = offset if bias is None else bias * scale + offset
    return kernel, bias, rest


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
        y_axis = _axis_plan(chain.spatial, 0, self.rows, self.patch)
        x_axis = _axis_plan(chain.spatial, 1, self.columns, self.patch)
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
        """Multiply-adds of one position's recomputed conv boxes."""
        total = 0
        for index, op in enumerate(self.chain.spatial):
            if op.kind == "conv":
                inputs = self.chain.map_channels[index]
                outputs = self.chain.map_channels[index + 1]
                box = row_sizes[index + 1] * column_sizes[index + 1]
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
        """The window pass's index and mask tensors of a batch of positions: the image
        windows, whether they lie in the image, each next layer's splice index, whether
        the final boxes lie in the map, and the global pooling's indices."""
        chain = self.chain
        parts: list = [
            _image_index(chain, rows, columns, y_axis, x_axis, self.patch),
            _in_map(chain, 0, rows, columns, y_axis, x_axis),
        ]
        for index in range(1, len(chain.spatial)):
            parts.append(_splice_index(chain, index, rows, columns, y_axis, x_axis))
        last = len(chain.spatial)
        parts.append(_in_map(chain, last, rows, columns, y_axis, x_axis))
        if chain.transition == "gap":
            parts.append(_gap_index(chain, rows, columns, y_axis, x_axis))
        elif chain.transition == "gmp":
            parts.extend(_gmp_index(chain, rows, columns, y_axis, x_axis))
        return tuple(tf.constant(part) for part in parts)

    # -- the compiled passes ----------------------------------------------------------

    def _windows(self, maps, fill, extras, geometry):
        """The window pass: every layer's recomputed box for a batch of positions.

        Returns the final map's windows as rows of channels (flatten), or the pooled
        vectors (global pooling).
        """
        chain = self.chain
        channels = chain.map_channels
        first_pad = chain.spatial[0].pad_value if chain.spatial else 0.0
        pad = tf.fill([1, channels[0]], tf.cast(first_pad, fill.dtype))
        # the image windows, square filled in, (B, h, w, C)
        values = tf.gather(tf.concat([maps[0], fill, pad], axis=0), geometry[0])
        for index, op in enumerate(chain.spatial):
            if index == 0:  # the image windows are the first layer's input windows
                inputs, inside = values, geometry[1]
            else:  # splice the recomputed boxes into the clean map's input windows
                flat = tf.reshape(values, [-1, channels[index]])
                pad = tf.fill([1, channels[index]], tf.cast(op.pad_value, values.dtype))
                inputs = tf.gather(tf.concat([maps[index], flat, pad], axis=0), geometry[1 + index])
                inside = geometry[1 + index] < tf.shape(maps[index])[0] + tf.shape(flat)[0]
            values = self._spatial_op(op, inputs, inside)
        last = len(chain.spatial)
        final = 2 + max(last - 1, 0)  # after the image windows, their mask and the splices
        in_map, rest, clean = geometry[final], geometry[final + 1 :], maps[last]
        if chain.transition == "flatten":
            return tf.reshape(values, [-1, channels[last]])
        if chain.transition == "gap":
            area = float(chain.map_sizes[last][0] * chain.map_sizes[last][1])
            old = tf.gather(tf.concat([clean, tf.zeros([1, channels[last]], clean.dtype)], 0), rest[0])
            change = tf.where(in_map[..., None], values - old, tf.zeros_like(values))
            return extras[0][None, :] + tf.reduce_sum(change, axis=[1, 2]) / area
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
            if _is_batch_norm(layer):  # per-feature parameters: one per location and channel
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
        target_tensor = tf.constant(int(target), tf.int32)
        probability = np.zeros((len(self.rows), len(self.columns)), np.float32)
        loss = np.zeros_like(probability)
        for group in self.groups:
            collected = []
            for batch in group.batches:
                collected.append(
                    self._run(self._windows, maps, fill_values, list(extras), list(batch.geometry))
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
