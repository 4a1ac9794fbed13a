"""Occlusion sensitivity: what the prediction loses when a square of the image is hidden.

For each evaluated pixel (i, j) the N x N square centred on it (rows i - N//2 ...
i - N//2 + N - 1, likewise columns, clipped at the border) is filled, and the
target class's probability and cross-entropy loss are recorded for that square. With
stride s only every s-th row and column is a centre. How the squares' values become a
map of pixels (``spread``, one of :data:`~visualize.methods.SPREADS`):

* ``window`` (the default): each pixel gets the mean over every evaluated square that
  hides it (as Captum's ``Occlusion`` attributes); a pixel no square hides (a stride
  larger than the square) keeps the unoccluded value. The map says what hiding *this
  pixel* costs on average, so a small object is not ringed by the centres of squares
  that only graze it.
* ``centre``: each pixel gets the value of the square centred on it (Zeiler and Fergus's
  map); with stride s each evaluated value fills its s x s block.

On Fruits-360 objects pasted on CIFAR-10 photos the window map's maximum lay on the
object for 190 of 200 test images, the centre map's for 178 (``bench/run.py shortcut``).

Two engines compute the same maps:

* ``incremental`` (the default whenever it applies): the clean image's layer outputs
  are computed once, and per square only the box of each layer that the square
  changes is recomputed (:mod:`visualize.incremental`);
* ``batched``: every occluded copy goes through the whole model, built inside the
  compiled graph from the image and the centres, a batch at a time.

``engine="auto"`` uses the incremental engine and falls back to the batched one, with
the reason in :attr:`OcclusionMaps.fallback_reason`, for a model it cannot handle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import keras
import numpy as np
import tensorflow as tf

from visualize.incremental import IncrementalOccluder, Unsupported
from visualize.methods import ENGINES, FILLS, SPREADS
from visualize.targets import (
    as_images,
    check_per_image,
    class_loss,
    class_probability,
    compiled,
    logits_model,
    resolve_head,
    resolve_targets,
)

# The default square: a tenth of the image's smaller side (Zeiler and Fergus's scale:
# 10 pixels for 100x100), at least MIN_PATCH. On the 28x28 line images a 3-pixel square
# put the map's maximum on the line for 200 of 200 test images, a 10-pixel one for 98
# (it hides the whole line from centres up to 4-5 pixels off it; bench/run.py explain-quality).
PATCH_SHARE, MIN_PATCH = 10, 3
DEFAULT_FILL = "mean"
# Positions evaluated per batch by the batched engine (the incremental engine sizes
# its batches by the memory of its windows).
DEFAULT_BATCH = 256
# "gray" in pixel units.
GRAY = 128.0
NORMALIZE_LAYER = "normalize"
# Compile the occluder with XLA: 10,000 positions of the Fruits-360 model took 4.0-4.4 s
# instead of 4.7-4.9 s in one comparison (3.2 s in bench/run.py occlusion).
JIT = True


@dataclass(frozen=True)
class OcclusionMaps:
    """Both occlusion maps of a batch of images, float32 (N, H, W).

    Attributes:
        probability: the target class's probability with a square hidden: per pixel,
            the mean over the squares that hide it (``spread="window"``) or the value
            of the square centred on it (``"centre"``).
        loss: the target class's cross-entropy with a square hidden, likewise.
        baseline_probability: (N,) the probability without occlusion.
        baseline_loss: (N,) the loss without occlusion, from the logits (exact where
            the probability rounds to 1).
        targets: (N,) the class explained in each image.
        engine: ``incremental`` or ``batched``: which engine computed the maps.
        fallback_reason: why the batched engine was used when ``auto`` was asked
            for (one line naming the layer or structure), else None.
        spread: ``window`` or ``centre``: how the squares' values became pixels.
    """

    probability: np.ndarray
    loss: np.ndarray
    baseline_probability: np.ndarray
    targets: np.ndarray
    engine: str = "batched"
    fallback_reason: str | None = None
    baseline_loss: np.ndarray | None = None
    spread: str = "window"


def training_mean_colour(model: keras.Model) -> np.ndarray | None:
    """The training split's mean colour (pixel units) stored in the model's
    ``normalize`` layer (after normalisation it is exactly zero, "no information"), or
    in a Keras ``Normalization`` layer that takes the pixels of a model made elsewhere;
    None when the model stores none."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    own = [layer for layer in layers if layer.name == NORMALIZE_LAYER]
    first = layers[:1] if layers and isinstance(layers[0], keras.layers.Normalization) else []
    for layer in own or first:
        mean = getattr(layer, "mean", None)
        if mean is not None:
            return np.asarray(keras.ops.convert_to_numpy(mean), np.float32).reshape(-1)
    return None


def default_patch(shape) -> int:
    """The occlusion square's side for images of ``shape`` (H, W[, C]): a tenth of the
    smaller side, rounded, at least ``MIN_PATCH`` (3 for 28x28, 10 for 100x100)."""
    return int(max(MIN_PATCH, round(min(int(shape[0]), int(shape[1])) / PATCH_SHARE)))


def fill_image(model: keras.Model, image: np.ndarray, fill, patch: int) -> np.ndarray:
    """What an occluded square shows, as a whole (H, W, C) image in pixel units.

    ``mean`` (the training mean colour; ``gray`` for a model that does not store it),
    ``gray`` (128), ``zero`` (0), a number (pixel units 0-255), or ``blur`` (the image
    averaged over ``patch`` x ``patch`` windows).
    """
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return np.full(image.shape, float(fill), np.float32)
    if fill == "mean":  # mid-grey for a model that stores no training mean
        colour = training_mean_colour(model)
        colour = np.full(image.shape[-1], GRAY, np.float32) if colour is None else colour
        return np.broadcast_to(colour, image.shape).astype(np.float32)
    if fill == "gray":
        return np.full(image.shape, GRAY, np.float32)
    if fill == "zero":
        return np.zeros(image.shape, np.float32)
    if fill == "blur":
        blurred = tf.nn.avg_pool2d(image[None], ksize=patch, strides=1, padding="SAME")
        return blurred.numpy()[0].astype(np.float32)
    raise ValueError(f"unknown fill {fill!r}; expected one of {', '.join(FILLS)} or a number of pixel units.")


def _occluder(model: keras.Model, head: str, patch: int, shape):
    """A compiled function: (image, fill, centres (B, 2), target) -> (probability, loss)."""
    explained = logits_model(model, head)
    height, width = shape[0], shape[1]
    rows, columns = tf.range(height), tf.range(width)
    before = patch // 2

    @tf.function(
        jit_compile=JIT,
        input_signature=[
            tf.TensorSpec(shape, tf.float32),
            tf.TensorSpec(shape, tf.float32),
            tf.TensorSpec([None, 2], tf.int32),
            tf.TensorSpec([], tf.int32),
        ],
    )
    def occlude(image, fill, centres, target):
        top = centres[:, 0:1] - before
        left = centres[:, 1:2] - before
        in_rows = tf.cast((rows[None] >= top) & (rows[None] < top + patch), tf.float32)  # (B, H)
        in_columns = tf.cast((columns[None] >= left) & (columns[None] < left + patch), tf.float32)  # (B, W)
        hidden = tf.einsum("bh,bw->bhw", in_rows, in_columns)[..., None] > 0  # (B, H, W, 1): inside
        batch = tf.where(hidden, fill[None], image[None])
        logits = explained(batch, training=False)
        targets = tf.fill(tf.shape(centres)[:1], target)
        return class_probability(logits, targets), class_loss(logits, targets)

    return occlude


def _centres(height: int, width: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(0, height, stride), np.arange(0, width, stride)


def _to_input_resolution(coarse: np.ndarray, height: int, width: int, stride: int) -> np.ndarray:
    """``centre``: each pixel takes the value of the evaluated pixel at the top-left
    corner of its stride x stride block (equal blocks; no rounding ties); (N, rows,
    columns) -> (N, H, W)."""
    return coarse[:, np.arange(height) // stride][:, :, np.arange(width) // stride]


def _hidden_by(size: int, centres: np.ndarray, patch: int) -> np.ndarray:
    """float64 (size, centres): 1 where the square centred on the centre hides the pixel."""
    pixels = np.arange(size)[:, None]
    first = centres[None] - patch // 2
    return ((pixels >= first) & (pixels < first + patch)).astype(np.float64)


def window_average(coarse: np.ndarray, height: int, width: int, patch: int, stride: int, untouched):
    """``window``: each pixel the mean of the values of every square that hides it,
    (N, rows, columns) -> (N, H, W) float32; ``untouched`` (N,) for a pixel no square
    hides. Separable: the sum over the squares hiding a pixel is R @ V @ C^T (two matrix
    products: 0.1 ms for a 100x100 image, against 160 ms for the same sum as one einsum)."""
    centre_rows, centre_columns = _centres(height, width, stride)
    rows, columns = _hidden_by(height, centre_rows, patch), _hidden_by(width, centre_columns, patch)
    total = rows @ np.asarray(coarse, np.float64) @ columns.T
    count = rows.sum(axis=1)[:, None] * columns.sum(axis=1)[None]
    untouched = np.asarray(untouched, np.float64)[:, None, None]
    mean = np.where(count > 0, total / np.maximum(count, 1), untouched)
    return mean.astype(np.float32)


def occlusion(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    patch: int | None = None,
    stride: int = 1,
    fill=DEFAULT_FILL,
    batch_size: int | None = None,
    engine: str = "auto",
    spread: str = "window",
    progress: Callable[[int, int], None] | None = None,
) -> OcclusionMaps:
    """Occlusion sensitivity maps (probability and loss) of ``images``.

    Args:
        model: a fruitcnn model (raw 0-255 images in, ``{head: probabilities}`` out).
        images: (N, H, W, C) or (H, W, C) in pixel units.
        head: the head to explain (default: the only one).
        target: class index (or one per image); default each image's predicted class.
        patch: side N of the occluded square in pixels of the input (default:
            :func:`default_patch`).
        stride: evaluate every ``stride``-th row and column.
        fill: ``mean``, ``gray``, ``zero``, ``blur`` or a number (pixel units).
        batch_size: square positions per forward pass (the maps do not depend on it);
            default 256 for the batched engine, sized by memory for the incremental one.
        engine: ``auto`` (incremental when the model allows, else batched with the
            reason in ``fallback_reason``), ``incremental`` (an error if the model does
            not allow it) or ``batched``.
        spread: ``window`` (each pixel the mean over the squares that hide it) or
            ``centre`` (the value of the square centred on it); see the module.
        progress: called with (positions done, positions in all) after each batch.

    Returns:
        :class:`OcclusionMaps`.
    """
    for name, value in (("patch", patch), ("stride", stride), ("batch_size", batch_size)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be at least 1 pixel/position, got {value}.")
    if engine not in ENGINES:
        raise ValueError(f"unknown occlusion engine {engine!r}; expected one of {', '.join(ENGINES)}.")
    if spread not in SPREADS:
        raise ValueError(f"unknown occlusion spread {spread!r}; expected one of {', '.join(SPREADS)}.")
    images = as_images(images)
    head = resolve_head(model, head)
    check_per_image(model)
    targets = resolve_targets(model, images, head, target)
    patch = default_patch(images.shape[1:]) if patch is None else int(patch)
    stride = int(stride)
    occluder, reason = None, None
    if engine != "batched":
        occluder, reason = incremental_occluder(model, head, images.shape[1:], patch, stride, batch_size)
        if occluder is None and engine == "incremental":
            raise ValueError(
                f"incremental occlusion cannot handle this model: {reason}; use the batched engine "
                "(engine='batched', --occlusion-engine batched)."
            )
    if occluder is not None:
        result = _incremental(model, images, targets, occluder, fill, patch, progress)
    else:
        batch_size = batch_size or DEFAULT_BATCH
        result = _batched(model, images, targets, head, patch, stride, fill, batch_size, progress, reason)
    logits = logits_model(model, head)([images], training=False)  # its inputs are a list
    clean_loss = np.asarray(class_loss(logits, tf.constant(targets, tf.int32)), np.float32)
    height, width = images.shape[1:3]
    if spread == "window":
        probability = window_average(
            result.probability, height, width, patch, stride, result.baseline_probability
        )
        loss = window_average(result.loss, height, width, patch, stride, clean_loss)
    else:
        probability = _to_input_resolution(result.probability, height, width, stride)
        loss = _to_input_resolution(result.loss, height, width, stride)
    return replace(result, probability=probability, loss=loss, baseline_loss=clean_loss, spread=spread)


def incremental_occluder(model: keras.Model, head: str, shape, patch: int, stride: int, batch_size=None):
    """(the model's :class:`IncrementalOccluder` for an image shape, patch, stride and
    batch size, None), built once per setting and shared with :func:`occlusion`, or
    (None, one line on why the model cannot be handled incrementally)."""
    shape = tuple(int(size) for size in shape)
    try:
        return compiled(
            model,
            ("incremental", head, patch, stride, shape, batch_size),
            lambda: IncrementalOccluder(model, head, shape, patch, stride, batch_size),
        ), None
    except Unsupported as error:
        return None, str(error)


def _incremental(model, images, targets, occluder, fill, patch, progress) -> OcclusionMaps:
    """The maps per square (N, rows, columns) by the incremental engine."""
    count = len(images)
    probability, loss, baseline = [], [], np.zeros(count, np.float32)
    total, done = count * occluder.positions, 0
    for index in range(count):

        def step(positions):
            nonlocal done
            done += positions
            if progress is not None:
                progress(done, total)

        fill_pixels = fill_image(model, images[index], fill, patch)
        coarse_probability, coarse_loss, baseline[index] = occluder(
            images[index], fill_pixels, int(targets[index]), step
        )
        probability.append(coarse_probability)
        loss.append(coarse_loss)
    return OcclusionMaps(np.stack(probability), np.stack(loss), baseline, targets, "incremental", None)


def _batched(
    model, images, targets, head, patch, stride, fill, batch_size, progress, reason
) -> OcclusionMaps:
    """The maps per square (N, rows, columns) with every occluded copy through the whole
    model, ``batch_size`` positions at a time (``reason``: why the incremental engine was
    not used, if it was asked for)."""
    count, height, width = images.shape[:3]
    shape = tuple(images.shape[1:])
    occlude = compiled(model, ("occlusion", head, patch, shape), lambda: _occluder(model, head, patch, shape))
    rows, columns = _centres(height, width, stride)
    centres = np.stack(np.meshgrid(rows, columns, indexing="ij"), axis=-1).reshape(-1, 2).astype(np.int32)
    grid = (count, len(rows), len(columns))
    probability, loss = np.zeros(grid, np.float32), np.zeros(grid, np.float32)
    baseline = np.zeros(count, np.float32)
    total, done = count * len(centres), 0
    for index in range(count):
        image = tf.constant(images[index])
        fill_pixels = tf.constant(fill_image(model, images[index], fill, patch))
        target_index = tf.constant(int(targets[index]), tf.int32)
        parts = []
        for start in range(0, len(centres), batch_size):
            chunk = tf.constant(centres[start : start + batch_size])
            parts.append([value.numpy() for value in occlude(image, fill_pixels, chunk, target_index)])
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        probability[index] = np.concatenate([part[0] for part in parts]).reshape(grid[1:])
        loss[index] = np.concatenate([part[1] for part in parts]).reshape(grid[1:])
        # far outside the image nothing is hidden: the unoccluded prediction
        untouched = tf.constant([[-2 * patch - height, -2 * patch - width]], tf.int32)
        baseline[index] = occlude(image, fill_pixels, untouched, target_index)[0].numpy()[0]
    return OcclusionMaps(probability, loss, baseline, targets, "batched", reason)
