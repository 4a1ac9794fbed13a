"""Turn an :class:`ArchConfig` into a Keras functional model: the only place that does.

The model takes raw images (float32, pixel values 0..255, shape (H, W, C)), normalises
them per channel with statistics of the training split (stored inside the model, so
any image file can be fed to a saved model), runs the feature extractor and ends in
the heads (see ``heads``). Layer names are stable and human: ``normalize``,
``conv1``, ``bn1``, ``relu1``, ``pool1``, ``dropout1``, ``fc1``, ``flatten``, ``gap``,
``gmp`` and the head names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from fruitcnn.config import PRECISIONS, ArchConfig, LayerSpec, kernel_initializer, parse_head_layers
from fruitcnn.layers import BatchNorm, Whiten
from heads import HeadSpec, build_heads

INPUT_NAME = "image"
NORMALIZE_NAME, SCALE_NAME = "normalize", "scale"
# Largest image side searched when looking for the smallest input that fits.
_MAX_SEARCH_SIZE = 4096
# The whiten layer: training images whose patches it whitens, images per chunk of that
# computation, and what is added to the eigenvalues (normalised units: the data has
# variance 1 per value, so this only tames directions without any variance).
WHITENING_IMAGES, WHITENING_CHUNK, WHITENING_EPSILON = 5000, 250, 5e-4


@dataclass(frozen=True)
class PlannedLayer:
    """A layer of the feature extractor with its name and output shape (H, W, C) or (D,)."""

    name: str
    spec: LayerSpec
    output_shape: tuple[int, ...]


def layer_names(arch: ArchConfig) -> list[str]:
    """The Keras layer name of each spec in ``arch.layers``, in order."""
    counters: dict[str, int] = {}
    names = []
    for spec in arch.layers:
        if spec.kind in ("flatten", "gap", "gmp"):
            counters[spec.kind] = counters.get(spec.kind, 0) + 1
            count = counters[spec.kind]
            names.append(spec.kind if count == 1 else f"{spec.kind}{count}")
            continue
        if spec.kind == "act":
            prefix = str(spec.params["fn"])
        else:
            prefix = {"maxpool": "pool", "avgpool": "pool"}.get(spec.kind, spec.kind)
        counters[prefix] = counters.get(prefix, 0) + 1
        names.append(f"{prefix}{counters[prefix]}")
    return names


def head_layer_names(head: str, specs: Sequence[LayerSpec]) -> list[str]:
    """Names of a head's own layers: ``<head>_fc1``, ``<head>_relu1`` ..."""
    return [f"{head}_{name}" for name in layer_names(ArchConfig(layers=list(specs)))] if specs else []


def _conv_out(size: int, kernel: int, stride: int, padding) -> int | None:
    """Output side of a conv or pool along one axis; None when it does not fit."""
    if padding == "same":
        return math.ceil(size / stride)
    if isinstance(padding, int):
        size += 2 * padding
    if size < kernel:
        return None
    return (size - kernel) // stride + 1


def _plan(arch: ArchConfig, input_shape: Sequence[int]):
    """Shapes through the extractor.

    Returns:
        (planned layers, error message or None, whether a larger input could fix it).
    """
    shape = tuple(int(size) for size in input_shape)
    planned: list[PlannedLayer] = []
    previous = "the input"
    for name, spec in zip(layer_names(arch), arch.layers):
        params, kind = spec.params, spec.kind
        if kind in ("conv", "maxpool", "avgpool", "flatten", "gap", "gmp", "whiten") and len(shape) != 3:
            return (
                planned,
                (
                    f"layer {name} ({spec.to_text()}) needs an image-shaped (H, W, C) input but "
                    f"{previous} gives a vector of {shape[0]}; put image layers before "
                    "flatten/gap/gmp"
                ),
                False,
            )
        if kind == "whiten" and planned:
            return (
                planned,
                f"layer {name} (whiten) comes after {previous}; whiten must be the first layer (it whitens "
                "the image's own patches)",
                False,
            )
        if kind in ("conv", "maxpool", "avgpool", "whiten"):
            kernel = params["kernel"] if kind in ("conv", "whiten") else params["size"]
            stride = (params["stride"] or kernel) if kind != "whiten" else 1
            padding = params.get("padding", "valid")
            height = _conv_out(shape[0], kernel, stride, padding)
            width = _conv_out(shape[1], kernel, stride, padding)
            if height is None or width is None:
                return (
                    planned,
                    (
                        f"layer {name} ({spec.to_text()}, window {kernel}x{kernel}) receives a "
                        f"{shape[0]}x{shape[1]} map from {previous} but needs at least "
                        f"{kernel}x{kernel}"
                    ),
                    True,
                )
            channels = {"conv": params.get("filters"), "whiten": 2 * shape[2] * kernel * kernel}.get(
                kind, shape[2]
            )
            shape = (height, width, channels)
        elif kind == "flatten":
            shape = (int(np.prod(shape)),)
        elif kind in ("gap", "gmp"):
            shape = (shape[2],)
        elif kind == "fc":
            if len(shape) != 1:
                return (
                    planned,
                    (
                        f"layer {name} (fc) receives a {'x'.join(map(str, shape))} map from "
                        f"{previous}; put flatten, gap or gmp before the first fc layer"
                    ),
                    False,
                )
            shape = (params["units"],)
        planned.append(PlannedLayer(name, spec, shape))
        previous = name
    return planned, None, False


def plan_layers(arch: ArchConfig, input_shape: Sequence[int]) -> list[PlannedLayer]:
    """Check that ``arch`` fits ``input_shape`` and return every layer's output shape.

    Raises:
        ValueError: naming the layer that does not fit, the shapes, and the smallest
            square input that works (or why none does).
    """
    planned, error, fixable = _plan(arch, input_shape)
    if error is None:
        if len(planned[-1].output_shape) != 1:
            shape = "x".join(map(str, planned[-1].output_shape))
            raise ValueError(
                f"the feature extractor ends with a {shape} map ({planned[-1].name}); end it "
                "with flatten, gap or gmp (and optionally fc layers) before the heads."
            )
        return planned
    if not fixable:
        raise ValueError(error + ".")
    channels = int(input_shape[-1])
    smallest = next(
        (size for size in range(1, _MAX_SEARCH_SIZE + 1) if _plan(arch, (size, size, channels))[1] is None),
        None,
    )
    given = f"{int(input_shape[0])}x{int(input_shape[1])}"
    if smallest is None:
        raise ValueError(f"{error}; no input up to {_MAX_SEARCH_SIZE} pixels fits this architecture.")
    raise ValueError(
        f"{error}. The smallest input this architecture accepts is {smallest}x{smallest} "
        f"(got {given}): pass --image-size {smallest} or larger, or remove or shrink "
        "that layer."
    )


def build_model(
    arch: ArchConfig,
    *,
    input_shape: Sequence[int],
    heads: Sequence[HeadSpec],
    channel_mean: Sequence[float] | None = None,
    channel_variance: Sequence[float] | None = None,
    seed: int | None = None,
    whitening: np.ndarray | None = None,
) -> keras.Model:
    """Build the functional model that ``arch`` declares, with ``heads`` on top.

    Args:
        arch: the architecture.
        input_shape: (H, W, C) of the images.
        heads: the output heads (see ``heads``).
        channel_mean, channel_variance: per-channel statistics of the training
            images in pixel units (0..255); default: mean 0, variance 1 after scaling
            to 0..1.
        seed: seed of the weight initialisers and dropout masks.
        whitening: the kernel of a ``whiten`` first layer (:func:`whitening_filters`);
            None: its initialiser's (for summaries, or weights loaded afterwards).

    Returns:
        A Keras model mapping ``image`` to ``{head name: probabilities}``.
    """
    plan_layers(arch, input_shape)  # clear errors before Keras sees anything
    if seed is not None:
        keras.utils.set_random_seed(seed)
    channels = int(input_shape[-1])
    if channel_mean is None:
        channel_mean = [127.5] * channels
        channel_variance = [127.5**2] * channels
    inputs = keras.Input(shape=tuple(int(size) for size in input_shape), name=INPUT_NAME)
    if arch.normalize:
        x = keras.layers.Normalization(
            axis=-1, mean=list(channel_mean), variance=list(channel_variance), name=NORMALIZE_NAME
        )(inputs)
    else:  # pixels only brought to 0..1, as without a normalising transform
        x = keras.layers.Rescaling(1.0 / 255.0, name=SCALE_NAME)(inputs)
    regularizer = keras.regularizers.L2(arch.l2) if arch.l2 > 0 else None
    specs = arch.layers
    for index, (name, spec) in enumerate(zip(layer_names(arch), specs)):
        following = specs[index + 1].kind if index + 1 < len(specs) else None
        width = 2 * channels * spec.params["kernel"] ** 2 if spec.kind == "whiten" else None
        layer = _make_layer(spec, name, arch, regularizer, following, seed, width)
        x = layer(x)
        if spec.kind == "whiten" and whitening is not None:
            layer.set_weights([np.asarray(whitening, np.float32), np.zeros(width, np.float32)])
    own = parse_head_layers(arch.head_layers, [spec.name for spec in heads])

    def branch(head: str, features):
        for name, spec in zip(head_layer_names(head, own.get(head, [])), own.get(head, [])):
            features = _make_layer(spec, name, arch, regularizer, None, seed)(features)
        return features

    outputs = build_heads(x, heads, l2=arch.l2, dropout=arch.dropout, seed=seed, branch=branch)
    return keras.Model(inputs, outputs, name=arch.name.replace(" ", "_"))


def _make_layer(spec: LayerSpec, name: str, arch: ArchConfig, regularizer, following, seed, filters=None):
    params, kind = spec.params, spec.kind
    if kind == "conv":
        padding = params["padding"]
        use_bias = params["bias"] if params["bias"] != "auto" else following != "bn"
        conv = keras.layers.Conv2D(
            params["filters"],
            params["kernel"],
            strides=params["stride"],
            padding=padding if isinstance(padding, str) else "valid",
            use_bias=use_bias,
            kernel_initializer=kernel_initializer(arch),
            kernel_regularizer=regularizer,
            name=name,
        )
        if isinstance(padding, int) and padding > 0:
            pad = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")
            return lambda tensor: conv(pad(tensor))
        return conv
    if kind == "bn":
        momentum = params["momentum"] if params["momentum"] is not None else arch.bn_momentum
        if arch.bn_layer == "keras":
            return keras.layers.BatchNormalization(momentum=momentum, epsilon=params["epsilon"], name=name)
        return BatchNorm(
            momentum=momentum,
            epsilon=params["epsilon"],
            batch_stats_at_inference=arch.bn_batch_stats_at_inference,
            name=name,
        )
    if kind == "act":
        return keras.layers.Activation(params["fn"], name=name)
    if kind == "whiten":
        return Whiten(filters, params["kernel"], padding="valid", name=name)
    if kind == "scale":
        return keras.layers.Rescaling(float(params["factor"]), name=name)
    if kind in ("maxpool", "avgpool"):
        layer = keras.layers.MaxPooling2D if kind == "maxpool" else keras.layers.AveragePooling2D
        return layer(params["size"], strides=params["stride"], padding=params["padding"], name=name)
    if kind == "dropout":
        return keras.layers.Dropout(params["rate"], seed=seed, name=name)
    if kind == "flatten":
        return keras.layers.Flatten(name=name)
    if kind == "gap":
        return keras.layers.GlobalAveragePooling2D(name=name)
    if kind == "gmp":
        return keras.layers.GlobalMaxPooling2D(name=name)
    return keras.layers.Dense(
        params["units"],
        kernel_initializer=kernel_initializer(arch),
        kernel_regularizer=regularizer,
        name=name,
    )


def whitening_filters(
    images: np.ndarray,
    kernel: int,
    mean: Sequence[float],
    variance: Sequence[float],
    *,
    count: int = WHITENING_IMAGES,
    epsilon: float = WHITENING_EPSILON,
    seed: int = 0,
) -> np.ndarray:
    """The kernel of a ``whiten`` layer, (k, k, C, 2 C k^2) float32: the eigenvectors of
    the covariance of the normalised training images' k x k patches (every position of
    ``count`` images drawn with ``seed``), each divided by the square root of its
    eigenvalue plus ``epsilon``, then the same negated (so a ReLU after it keeps both
    signs). Patches are accumulated a chunk of images at a time (a float64 copy of every
    patch of 5,000 CIFAR images would take 460 MB)."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(images))[:count])  # data may be sorted by class
    mean = np.asarray(mean, np.float64)
    spread = np.sqrt(np.asarray(variance, np.float64))
    channels = images.shape[-1]
    size = kernel * kernel * channels
    moments, patches_seen = np.zeros((size, size)), 0
    for start in range(0, len(chosen), WHITENING_CHUNK):
        block = (images[chosen[start : start + WHITENING_CHUNK]].astype(np.float64) - mean) / spread
        windows = np.lib.stride_tricks.sliding_window_view(block, (kernel, kernel), axis=(1, 2))
        flat = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size)  # (patches, k*k*C), kernel order
        moments += flat.T @ flat
        patches_seen += flat.shape[0]
    values, vectors = np.linalg.eigh(moments / max(patches_seen, 1))
    values, vectors = values[::-1], vectors[:, ::-1]  # strongest direction first
    filters = (vectors / np.sqrt(np.maximum(values, 0.0) + epsilon)).reshape(kernel, kernel, channels, size)
    return np.concatenate([filters, -filters], axis=3).astype(np.float32)


def conv_flops(output_shape, kernel: tuple[int, int], channels: int) -> int:
    """FLOPs (2 per multiply-add) of a conv layer: every output value is a kernel x
    kernel x ``channels`` dot product. ``output_shape``: (height, width, filters)."""
    height, width, filters = (int(size) for size in output_shape)
    return 2 * height * width * filters * int(kernel[0]) * int(kernel[1]) * int(channels)


def dense_flops(inputs: int, units: int) -> int:
    """FLOPs (2 per multiply-add) of a dense layer of ``units`` on ``inputs`` values."""
    return 2 * int(inputs) * int(units)


def flops_per_image(model: keras.Model) -> int:
    """Floating-point operations of one forward pass of a built model (2 per multiply-add).

    Counts conv and dense layers, which are all but a few per cent of the work
    (:func:`planned_flops` counts the same from a layer list before building).
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel_height, kernel_width, channels, _ = layer.kernel.shape
            total += conv_flops(layer.output.shape[1:], (kernel_height, kernel_width), channels)
        elif isinstance(layer, keras.layers.Dense):
            total += dense_flops(*layer.kernel.shape)
    return int(total)


def planned_flops(arch: ArchConfig, image_shape) -> int:
    """:func:`flops_per_image` of the feature extractor ``arch`` would build (conv,
    whiten and fc layers, by the same rules), from the planned shapes alone: no Keras
    model is built (the photo recipe compares many widths this way)."""
    total, previous = 0, tuple(int(size) for size in image_shape)
    for planned in plan_layers(arch, image_shape):
        spec, shape = planned.spec, planned.output_shape
        if spec.kind in ("conv", "whiten"):
            kernel = spec.params["kernel"]
            total += conv_flops(shape, (kernel, kernel), previous[2])
        elif spec.kind == "fc":
            total += dense_flops(math.prod(previous), shape[0])
        previous = shape
    return int(total)


def conv_layer_names(model: keras.Model) -> list[str]:
    """Names of the model's conv layers, in order (for messages and explanations)."""
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def with_precision(model: keras.Model, precision: str, keep_float32: Sequence[str] = ()) -> keras.Model:
    """A copy of the functional ``model`` whose layers compute in ``precision``
    (``float32`` or ``mixed_bfloat16``, Keras's dtype policy names), with its weights.

    Mixed-precision layers keep float32 variables, so the copy's weights equal the
    original's in either direction (``get_weights`` and ``set_weights`` move them
    exactly, in the same order). The input layer keeps its dtype, and the layers named
    in ``keep_float32`` (the heads' output activations: probabilities and the loss stay
    float32) are float32 in any precision.

    Raises:
        ValueError: for another precision name.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}.")
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            continue
        name = layer["config"].get("name")
        layer["config"]["dtype"] = "float32" if name in keep_float32 else precision
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy
