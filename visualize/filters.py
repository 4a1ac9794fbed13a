"""Filter visualisation: the input that excites one filter most, found by gradient ascent.

The objective (``objective``) is a filter's activation at the centre of its feature map
(``centre``, the default: one unit, which sees the image through its receptive field) or
its mean over the whole map (``mean``: a texture that fills the image); for a ReLU layer
its input, the same maximiser with a gradient also where the unit is still off. The input
is searched in the model's normalised space (pixel minus the training mean, divided by
the training spread, as the ``normalize`` layer computes; for other models around
mid-grey), starting from faint noise, under a bound on its energy (its L2 norm there):
the 99th percentile of the energy of real images in windows of the receptive field's size
(or an average image's energy when no images are given), so the answer is "the pattern
that drives the filter hardest at the contrast of the strongest real inputs" rather than
an image that grows without limit. Each step follows the normalised gradient
(``tf.GradientTape``) and projects back onto the energy bound; the pixel range is not
enforced (the figures scale each image to its own range). Units that see 8 pixels or
more get a random shift of up to an eighth of their receptive field before every step and
a blur that fades out over the first half of the steps (they keep the pattern from
locking onto single pixels); the first conv layer's units get neither.

For a unit of the first conv layer the objective is linear in the window it sees, so its
maximiser under an energy bound is its kernel, scaled: :func:`filter_patterns` then
reproduces the kernels (measured by :func:`window_correlation`). For every layer,
:func:`filter_measures` says how far each image drives its filter (against the 99th
percentile of that filter's activations on real images), how much spatial structure it
has, and which filters never fire on real images ("dead": not drawn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from visualize.gradcam import check_layer, conv_layers
from visualize.targets import as_images

OBJECTIVES = ("centre", "mean")
DEFAULT_STEPS = 200
# Step size of normalised-gradient ascent, in units of the normalised input's RMS per step.
DEFAULT_STEP_SIZE = 0.05
# Jitter of a unit with receptive field R: up to R / JITTER_SHARE pixels (0 below 8 pixels).
JITTER_SHARE = 8
# A blur (3x3 box, mixed in with weight BLUR_WEIGHT fading to 0) over the first half of the steps.
BLUR_WEIGHT = 0.5
# Starting noise: standard deviation in normalised units.
START_NOISE = 0.1
# Samples of noise whose gradients outline a unit's receptive field.
FIELD_PROBES = 4
# Pixel units of a model without a normalize layer: mid-grey and a typical pixel spread.
GRAY, SPREAD = 128.0, 64.0
# Percentile of a filter's activations on real images that its image should exceed.
PERCENTILE = 99.0
_TINY = 1e-12


@dataclass(frozen=True)
class InputFrame:
    """How normalised inputs map to pixels: pixel = centre + spread * z, per channel."""

    centre: np.ndarray
    spread: np.ndarray

    def to_pixels(self, z: np.ndarray) -> np.ndarray:
        return self.centre + self.spread * z

    def to_normalised(self, pixels: np.ndarray) -> np.ndarray:
        return (pixels - self.centre) / self.spread


def input_frame(model: keras.Model) -> InputFrame:
    """The model's normalised space: its ``normalize`` layer's mean and spread, or mid-grey
    and a typical pixel spread."""
    channels = int(model.inputs[0].shape[-1])
    try:
        layer = model.get_layer("normalize")
        mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float32).reshape(-1)
        spread = np.sqrt(np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float32).reshape(-1))
    except (ValueError, AttributeError):
        mean, spread = np.full(channels, GRAY, np.float32), np.full(channels, SPREAD, np.float32)
    return InputFrame(mean.astype(np.float32), np.maximum(spread, _TINY).astype(np.float32))


def receptive_field(model: keras.Model, layer: str, seed: int = 0) -> tuple[slice, slice]:
    """Rows and columns of the input that the centre unit of ``layer`` sees: where the
    gradient of one of its channels is non-zero on random inputs."""
    shape = tuple(int(size) for size in model.inputs[0].shape[1:])
    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    images = tf.constant(np.random.default_rng(seed).uniform(0, 255, (FIELD_PROBES, *shape)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = probe(images, training=False)
        centre = outputs[:, outputs.shape[1] // 2, outputs.shape[2] // 2, :]
        score = tf.reduce_sum(centre)
    seen = np.abs(tape.gradient(score, images).numpy()).sum(axis=(0, 3)) > 0
    rows, columns = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    if rows.size == 0:  # no gradient reached the input (a dead unit): the whole image
        return slice(0, shape[0]), slice(0, shape[1])
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(columns[0]), int(columns[-1]) + 1)


def filter_patterns(
    model: keras.Model,
    *,
    layer: str,
    filters=None,
    objective: str = "centre",
    steps: int = DEFAULT_STEPS,
    step_size: float = DEFAULT_STEP_SIZE,
    jitter: int | None = None,
    blur: bool | None = None,
    images=None,
    seed: int = 0,
) -> np.ndarray:
    """Images (F, H, W, C) in pixel units that maximise each chosen filter (see the module
    docstring).

    Args:
        model: a fruitcnn model (or any model with an image input).
        layer: a layer with feature maps (a conv layer, its batch norm or ReLU ...).
        filters: filter indices (default: all filters of the layer).
        objective: ``centre`` (the unit at the centre of the map) or ``mean``.
        steps: gradient-ascent steps.
        step_size: step in RMS units of the normalised input.
        jitter: largest random shift in pixels before each step (None: an eighth of the
            receptive field, 0 when it is smaller than 8 pixels).
        blur: blur over the first half of the steps (None: when jitter is on).
        images: real images (pixel units) whose strongest windows set the energy bound
            (:func:`energy_bound`); None: the energy of an average image.
        seed: seed of the starting noise and the jitter.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"filter objective {objective!r}? expected one of {', '.join(OBJECTIVES)}.")
    check_layer(model, layer)
    count = int(model.get_layer(layer).output.shape[-1])
    chosen = np.arange(count) if filters is None else np.asarray(filters, np.int64).reshape(-1)
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= count:
        raise ValueError(f"layer {layer!r} has filters 0..{count - 1}; got {list(chosen)}.")
    shape = tuple(int(size) for size in model.inputs[0].shape[1:])
    frame = input_frame(model)
    rows, columns = receptive_field(model, layer) if objective == "centre" else (slice(None), slice(None))
    field = np.zeros(shape[:2], bool)
    field[rows, columns] = True
    side = max(int(field.any(axis=1).sum()), int(field.any(axis=0).sum()))
    jitter = (side // JITTER_SHARE if side >= JITTER_SHARE else 0) if jitter is None else int(jitter)
    blur = jitter > 0 if blur is None else bool(blur)
    bound = energy_bound(frame, field, images)
    free = np.repeat(field[:, :, None], shape[2], axis=2)  # where the image may change
    ascend = _ascent(model, layer, chosen, count, objective, shape, step_size)
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, START_NOISE, (len(chosen), *shape)).astype(np.float32) * free[None]
    for step in range(steps):
        shift = rng.integers(-jitter, jitter + 1, 2) if jitter else np.zeros(2, int)
        weight = BLUR_WEIGHT * max(0.0, 1.0 - 2.0 * step / steps) if blur else 0.0
        z = ascend(tf.constant(z), tf.constant(shift, tf.int32), tf.constant(weight, tf.float32)).numpy()
        z = _project(z * free[None], bound)
    return frame.to_pixels(z).astype(np.float32)


def _objective_output(model: keras.Model, layer: str):
    """The tensor whose filter values are maximised: the layer's output, or for a ReLU
    layer its input (the same maximiser, since ReLU is monotone, but a gradient also
    where the unit is still off: from faint noise most units start off)."""
    found = model.get_layer(layer)
    relu = isinstance(found, keras.layers.ReLU) or (
        isinstance(found, keras.layers.Activation) and getattr(found.activation, "__name__", "") == "relu"
    )
    return found.input if relu else found.output


def _ascent(model, layer, chosen, count, objective, shape, step_size):
    """One compiled step of normalised-gradient ascent for every chosen filter at once."""
    probe = keras.Model(model.inputs, _objective_output(model, layer))
    frame = input_frame(model)
    centre, spread = tf.constant(frame.centre), tf.constant(frame.spread)
    picks = tf.one_hot(chosen, count)  # (F, filters): which filter each image serves

    @tf.function
    def ascend(z, shift, blur_weight):
        moved = tf.roll(z, shift, axis=[1, 2])
        with tf.GradientTape() as tape:
            tape.watch(moved)
            outputs = probe(centre + spread * moved, training=False)
            if objective == "centre":
                values = outputs[:, outputs.shape[1] // 2, outputs.shape[2] // 2, :]
            else:
                values = tf.reduce_mean(outputs, axis=[1, 2])
            score = tf.reduce_sum(values * picks)
        gradient = tf.roll(tape.gradient(score, moved), -shift, axis=[1, 2])
        rms = tf.sqrt(tf.reduce_mean(tf.square(gradient), axis=[1, 2, 3], keepdims=True))
        z = z + step_size * gradient / (rms + _TINY)
        blurred = tf.nn.avg_pool2d(z, ksize=3, strides=1, padding="SAME")
        return z + blur_weight * (blurred - z)

    return ascend


def energy_bound(frame: InputFrame, field: np.ndarray, images=None) -> float:
    """The energy (L2 norm in the normalised space) a filter image may have within the
    receptive field ``field`` (bool (H, W)): the ``PERCENTILE``-th percentile of the
    energy of real ``images`` in windows of the field's size, so the image competes with
    the strongest real inputs on equal terms; without images, that of an average image
    (unit variance per value)."""
    rows, columns = np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0))
    height, width = rows.size, columns.size
    if images is None:
        return float(np.sqrt(height * width * frame.centre.size))
    squared = frame.to_normalised(as_images(images)).astype(np.float64) ** 2
    energy = squared.sum(axis=-1)  # (N, H, W)
    totals = np.lib.stride_tricks.sliding_window_view(energy, (height, width), axis=(1, 2)).sum(axis=(-1, -2))
    return float(np.sqrt(np.percentile(totals, PERCENTILE)))


def _project(z: np.ndarray, bound: float) -> np.ndarray:
    """Onto the energy ball."""
    norms = np.sqrt((z**2).sum(axis=(1, 2, 3), keepdims=True))
    return (z * np.minimum(1.0, bound / np.maximum(norms, _TINY))).astype(np.float32)


def first_layer_weights(model: keras.Model) -> np.ndarray:
    """The first conv layer's kernels as (filters, k, k, input channels) float32."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError("this model has no conv layer.")
    kernel = keras.ops.convert_to_numpy(model.get_layer(convs[0]).kernel)
    return np.transpose(kernel, (3, 0, 1, 2)).astype(np.float32)


def window_correlation(image: np.ndarray, kernel: np.ndarray) -> float:
    """The best normalised cross-correlation (-1..1) of ``kernel`` (k, k, C) with any
    k x k window of ``image`` (H, W, C): how well the image shows the kernel."""
    image, kernel = np.asarray(image, np.float64), np.asarray(kernel, np.float64)
    height, width = kernel.shape[:2]
    pattern = kernel - kernel.mean()
    pattern_norm = np.sqrt((pattern**2).sum())
    windows = np.lib.stride_tricks.sliding_window_view(image, (height, width), axis=(0, 1))
    windows = np.moveaxis(windows, 2, -1)  # (rows, columns, k, k, C)
    centred = windows - windows.mean(axis=(2, 3, 4), keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=(2, 3, 4)))
    products = (centred * pattern).sum(axis=(2, 3, 4))
    scores = np.where(norms > _TINY, products / np.maximum(norms * pattern_norm, _TINY), 0.0)
    return float(scores.max())


def rectifier_after(model: keras.Model, layer: str) -> str:
    """The layer whose output says whether ``layer``'s filters fire: the first ReLU after
    it with the same shape (conv -> bn -> relu), else ``layer`` itself."""
    names = [item.name for item in model.layers]
    shape = tuple(model.get_layer(layer).output.shape)
    for name in names[names.index(layer) :]:
        candidate = model.get_layer(name)
        if tuple(candidate.output.shape) != shape:
            break
        activation = getattr(candidate, "activation", None)
        if isinstance(candidate, keras.layers.ReLU) or getattr(activation, "__name__", "") == "relu":
            return name
    return layer


@dataclass
class FilterMeasures:
    """What the filter images of a layer achieve, per filter (arrays of length F).

    Attributes:
        activation: the objective's value on the filter's image.
        percentile: the ``PERCENTILE``-th percentile of the filter's activations at
            every position of the real images measured (the same layer's output).
        dead: the filter never fires on those images (its rectifier's output is 0 at
            every position of every image).
        structure: the share of the image's energy (mean colour removed, within the
            receptive field) at spatial frequencies above zero per channel: 0 for a flat
            colour field, near 1 for a pattern.
        images: how many real images were measured.
    """

    activation: np.ndarray
    percentile: np.ndarray
    dead: np.ndarray
    structure: np.ndarray
    images: int


def filter_measures(
    model: keras.Model,
    patterns: np.ndarray,
    *,
    layer: str,
    filters: Sequence[int],
    images,
    objective: str = "centre",
    batch_size: int = 64,
) -> FilterMeasures:
    """Measure filter images (:func:`filter_patterns`) against real ``images`` (pixel units)."""
    images = as_images(images)
    patterns = as_images(patterns)
    chosen = np.asarray(filters, np.int64)
    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    rectified_name = rectifier_after(model, layer)
    rectifier = keras.Model(model.inputs, model.get_layer(rectified_name).output)
    outputs = np.concatenate(
        [
            probe.predict(images[start : start + batch_size], verbose=0)
            for start in range(0, len(images), batch_size)
        ]
    )
    fired = np.concatenate(
        [
            rectifier.predict(images[start : start + batch_size], verbose=0).max(axis=(1, 2))
            for start in range(0, len(images), batch_size)
        ]
    ).max(axis=0)
    own = probe.predict(patterns, verbose=0)
    if objective == "centre":
        values = own[:, own.shape[1] // 2, own.shape[2] // 2, :]
    else:
        values = own.mean(axis=(1, 2))
    activation = values[np.arange(len(chosen)), chosen]
    per_filter = outputs.reshape(-1, outputs.shape[-1])[:, chosen]
    rows, columns = receptive_field(model, layer) if objective == "centre" else (slice(None), slice(None))
    normalised = input_frame(model).to_normalised(patterns)
    return FilterMeasures(
        activation=activation.astype(np.float64),
        percentile=np.percentile(per_filter, PERCENTILE, axis=0),
        dead=fired[chosen] <= 0,
        structure=np.array([spatial_structure(pattern[rows, columns]) for pattern in normalised]),
        images=len(images),
    )


def spatial_structure(normalised: np.ndarray) -> float:
    """How much of an image's contrast is spatial, 0..1: the share of its energy in the
    normalised space (0 = the training mean colour) that is not each channel's own mean
    over the image. A flat colour field (the old filter images' magenta squares) scores
    0; a pattern that averages to the mean colour, such as stripes or a blob on the mean
    colour, scores 1."""
    image = np.asarray(normalised, np.float64)
    centred = image - image.mean(axis=(0, 1), keepdims=True)
    total = (image**2).sum()
    return float((centred**2).sum() / total) if total > _TINY else 0.0
