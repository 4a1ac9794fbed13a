"""Filter visualisation: images that excite one filter most, found by gradient ascent.

Each chosen filter of a conv layer starts from a blank grey image; the image climbs the
gradient of the filter's mean activation (``tf.GradientTape``, normalised steps),
with jitter (a random shift before each step), an occasional box blur and an L2 pull
back to grey as regularisers, kept within 0-255. All filters climb together as one
batch. :func:`first_layer_weights` shows the first conv layer's kernels as images.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from visualize.gradcam import check_layer, conv_layers

GRAY = 128.0
DEFAULT_STEPS = 64
# Pixels moved per step (the gradient is normalised to unit RMS first).
DEFAULT_STEP_SIZE = 4.0
DEFAULT_JITTER = 2  # pixels
DEFAULT_BLUR_EVERY = 8  # steps; 0 never
DEFAULT_DECAY = 0.01  # share of the distance to grey removed per step
_TINY = 1e-8  # keeps the step finite where the gradient is zero


def filter_patterns(
    model: keras.Model,
    *,
    layer: str,
    filters=None,
    steps: int = DEFAULT_STEPS,
    step_size: float = DEFAULT_STEP_SIZE,
    jitter: int = DEFAULT_JITTER,
    blur_every: int = DEFAULT_BLUR_EVERY,
    decay: float = DEFAULT_DECAY,
    seed: int = 0,
) -> np.ndarray:
    """Images (F, H, W, C) in pixel units that maximise each chosen filter's mean activation.

    Args:
        model: a fruitcnn model.
        layer: a conv layer's name.
        filters: filter indices (default: all filters of the layer).
        steps: gradient-ascent steps.
        step_size: pixels per step after normalising the gradient.
        jitter: largest random shift in pixels before each step (0: none).
        blur_every: a 3x3 box blur every this many steps (0: never).
        decay: L2 pull towards grey per step.
        seed: seed of the jitter.
    """
    check_layer(model, layer)
    count = int(model.get_layer(layer).output.shape[-1])
    chosen = np.arange(count) if filters is None else np.asarray(filters, np.int64).reshape(-1)
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= count:
        raise ValueError(f"layer {layer!r} has filters 0..{count - 1}; got {list(chosen)}.")
    shape = tuple(int(size) for size in model.inputs[0].shape[1:])
    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    picks = tf.one_hot(chosen, count)  # (F, filters): which filter each image serves

    @tf.function
    def ascend(images, shift):
        moved = tf.roll(images, shift, axis=[1, 2])
        with tf.GradientTape() as tape:
            tape.watch(moved)
            outputs = probe(moved, training=False)
            score = tf.reduce_sum(tf.reduce_mean(outputs, axis=[1, 2]) * picks)
        gradient = tf.roll(tape.gradient(score, moved), -shift, axis=[1, 2])
        gradient /= tf.sqrt(tf.reduce_mean(tf.square(gradient), axis=[1, 2, 3], keepdims=True)) + _TINY
        images = images + step_size * gradient
        images = GRAY + (images - GRAY) * (1.0 - decay)
        return tf.clip_by_value(images, 0.0, 255.0)

    rng = np.random.default_rng(seed)
    images = tf.fill((len(chosen), *shape), GRAY)
    for step in range(1, steps + 1):
        shift = rng.integers(-jitter, jitter + 1, 2) if jitter else np.zeros(2, int)
        images = ascend(images, tf.constant(shift, tf.int32))
        if blur_every and step % blur_every == 0:
            images = tf.nn.avg_pool2d(images, ksize=3, strides=1, padding="SAME")
    return images.numpy().astype(np.float32)


def first_layer_weights(model: keras.Model) -> np.ndarray:
    """The first conv layer's kernels as (filters, k, k, input channels) float32."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError("this model has no conv layer.")
    kernel = keras.ops.convert_to_numpy(model.get_layer(convs[0]).kernel)
    return np.transpose(kernel, (3, 0, 1, 2)).astype(np.float32)
