"""Occlusion sensitivity: what the prediction loses when a square of the image is hidden.

For each evaluated pixel (i, j) the N x N square centred on it (rows i - N//2 ...
i - N//2 + N - 1, likewise columns, clipped at the border) is filled, and the
target class's probability and cross-entropy loss are recorded at (i, j). With
stride s only every s-th row and column is evaluated, and each evaluated value fills
its s x s block (the pixels up to the next evaluated row and column).

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
from visualize.methods import ENGINES, FILLS
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
        probability: the target class's probability with the square hidden.
        loss: the target class's cross-entropy with the square hidden.
        baseline_probability: (N,) the probability without occlusion.
        baseline_loss: (N,) the loss without occlusion, from the logits (exact where
            the probability rounds to 1).
        targets: (N,) the class explained in each image.
        engine: ``incremental`` or ``batched``: which engine computed the maps.
        fallback_reason: why the batched engine was used when ``auto`` was asked
            for (one line naming the layer or structure), else None.
    """

    probability: np.ndarray
    loss: np.ndarray
    baseline_probability: np.ndarray
    targets: np.ndarray
    engine: str = "batched"
    fallback_reason: str | None = None
    baseline_loss: np.ndarray | None = None


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
    """Each pixel takes the value of the evaluated pixel at the top-left corner of its
    stride x stride block (equal blocks; no rounding ties)."""
    return coarse[np.ix_(np.arange(height) // stride, np.arange(width) // stride)]


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
        progress: called with (positions done, positions in all) after each batch.

    Returns:
        :class:`OcclusionMaps`.
    """
    for name, value in (("patch", patch), ("stride", stride), ("batch_size", batch_size)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be at least 1 pixel/position, got {value}.")
    if engine not in ENGINES:
        raise ValueError(f"unknown occlusion engine {engine!r}; expected one of {', '.join(ENGINES)}.")
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
        result = _incremental(model, images, targets, occluder, fill, patch, stride, progress)
    else:
        batch_size = batch_size or DEFAULT_BATCH
        result = _batched(model, images, targets, head, patch, stride, fill, batch_size, progress, reason)
    logits = logits_model(model, head)([images], training=False)  # its inputs are a list
    clean_loss = class_loss(logits, tf.constant(targets, tf.int32))
    return replace(result, baseline_loss=np.asarray(clean_loss, np.float32))


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


def _incremental(model, images, targets, occluder, fill, patch, stride, progress) -> OcclusionMaps:
    count, height, width = images.shape[:3]
    probability = np.zeros((count, height, width), np.float32)
    loss = np.zeros((count, height, width), np.float32)
    baseline = np.zeros(count, np.float32)
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
        probability[index] = _to_input_resolution(coarse_probability, height, width, stride)
        loss[index] = _to_input_resolution(coarse_loss, height, width, stride)
    return OcclusionMaps(probability, loss, baseline, targets, "incremental", None)


def _batched(
    model, images, targets, head, patch, stride, fill, batch_size, progress, reason
) -> OcclusionMaps:
    """Every occluded copy through the whole model, ``batch_size`` positions at a time
    (``reason``: why the incremental engine was not used, if it was asked for)."""
    count, height, width = images.shape[:3]
    shape = tuple(images.shape[1:])
    occlude = compiled(model, ("occlusion", head, patch, shape), lambda: _occluder(model, head, patch, shape))
    rows, columns = _centres(height, width, stride)
    centres = np.stack(np.meshgrid(rows, columns, indexing="ij"), axis=-1).reshape(-1, 2).astype(np.int32)
    probability = np.zeros((count, height, width), np.float32)
    loss = np.zeros((count, height, width), np.float32)
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
        grid = (len(rows), len(columns))
        coarse_probability = np.concatenate([part[0] for part in parts]).reshape(grid)
        coarse_loss = np.concatenate([part[1] for part in parts]).reshape(grid)
        probability[index] = _to_input_resolution(coarse_probability, height, width, stride)
        loss[index] = _to_input_resolution(coarse_loss, height, width, stride)
        # far outside the image nothing is hidden: the unoccluded prediction
        untouched = tf.constant([[-2 * patch - height, -2 * patch - width]], tf.int32)
        baseline[index] = occlude(image, fill_pixels, untouched, target_index)[0].numpy()[0]
    return OcclusionMaps(probability, loss, baseline, targets, "batched", reason)
