"""Model analysis for incremental occlusion: the path from the image to a head's logits,
sorted into a :class:`Chain`.

:func:`analyse` walks the layers from the image to ``<head>_logits`` and sorts them:
*pointwise* ones (normalisation, batch norm in inference mode, element-wise
activations, dropout), *spatial* ones (conv and max/average pooling, each a
:class:`_Spatial` with a window, a stride and the padding before the first row and
column), the step from maps to a vector (flatten, global average or global max pooling)
and the vector layers after it. Anything else raises :class:`Unsupported` with the
reason. Layers are recognised by exact type: a subclass may compute something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from fruitcnn.layers import Whiten, is_batch_norm
from visualize.targets import LOGITS_SUFFIX

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
# fruitcnn's Whiten is a Conv2D whose kernel is frozen when built: the same computation.
SPATIAL_LAYERS = (keras.layers.Conv2D, Whiten, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
TRANSITIONS = {
    keras.layers.Flatten: "flatten",
    keras.layers.GlobalAveragePooling2D: "gap",
    keras.layers.GlobalMaxPooling2D: "gmp",
}


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


def _function_name(function) -> str:
    return getattr(function, "__name__", type(function).__name__)


def _is_identity(layer) -> bool:
    return type(layer) in IDENTITY_LAYERS


def _is_pointwise(layer) -> bool:
    """Does the layer map each value (per channel) on its own, the same at every location?
    Exact types only: a subclass may compute something else."""
    if _is_identity(layer) or type(layer) in ELEMENTWISE_LAYERS:
        return True
    if type(layer) is keras.layers.Activation:
        return _function_name(layer.activation) in ELEMENTWISE
    if is_batch_norm(layer) or type(layer) is keras.layers.Normalization:
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
            activation = _function_name(layer.activation) if op.kind == "conv" else "linear"
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
    if _function_name(first_dense.activation) != "linear":
        rest.insert(0, keras.layers.Activation(first_dense.activation))
    return flat_pointwise, first_dense, rest
