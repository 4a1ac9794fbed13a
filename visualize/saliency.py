"""Gradient saliency: how much each pixel moves the target class's loss or logit.

The gradient with respect to the input image (raw pixel units) is taken with
``tf.GradientTape`` inside a compiled function; the map is its largest absolute value
over the colour channels. SmoothGrad averages the gradients of noisy copies;
gradient x input multiplies the gradient by the pixel values first.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from visualize.targets import (
    as_images,
    check_per_image,
    class_logit,
    class_loss,
    compiled,
    logits_model,
    resolve_head,
    resolve_targets,
)

OBJECTIVES = ("loss", "logit")
# SmoothGrad noise: standard deviation as a share of the 0-255 pixel range.
DEFAULT_NOISE = 0.1
PIXEL_RANGE = 255.0
DEFAULT_BATCH = 64
# XLA (jit_compile) fuses the small ops of a backward pass (Fruits-360 model, steady state:
# 5.9 -> 4.4 ms for one image, 2.4 -> 1.7 ms per image in batches of 64), but compiles
# again for every new batch size, 1-2 s each: explaining 32 images with SmoothGrad took
# 1.25 s with it and 0.20 s without on the line model, 3.2 s and 1.5 s on Fruits-360. So
# off; worth it only for many same-sized batches.
JIT = False


def _gradient_function(model: keras.Model, head: str, objective: str, shape):
    explained = logits_model(model, head)

    @tf.function(
        jit_compile=JIT,
        input_signature=[tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec([None], tf.int32)],
    )
    def gradient(images, targets):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = explained(images, training=False)
            value = class_loss(logits, targets) if objective == "loss" else class_logit(logits, targets)
        return tape.gradient(value, images)

    return gradient


def saliency(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    of: str = "loss",
    smoothgrad: int = 0,
    noise: float = DEFAULT_NOISE,
    times_input: bool = False,
    batch_size: int = DEFAULT_BATCH,
    seed: int = 0,
) -> np.ndarray:
    """Pixel-gradient saliency maps, float32 (N, H, W): max |gradient| over channels.

    Args:
        model, images, head, target: see ``visualize.targets``.
        of: ``loss`` (cross-entropy of the target class) or ``logit`` (its logit).
        smoothgrad: average the gradients of this many noisy copies (0: plain gradient).
        noise: SmoothGrad's noise standard deviation as a share of 0-255.
        times_input: gradient x input (per channel, before the max over channels).
        batch_size: images per compiled call (the maps do not depend on it).
        seed: seed of SmoothGrad's noise.
    """
    if of not in OBJECTIVES:
        raise ValueError(f"saliency of {of!r}? expected one of {', '.join(OBJECTIVES)}.")
    if smoothgrad < 0:
        raise ValueError(f"smoothgrad must be 0 (off) or a number of noisy copies, got {smoothgrad}.")
    images = as_images(images)
    head = resolve_head(model, head)
    check_per_image(model)
    targets = resolve_targets(model, images, head, target).astype(np.int32)
    shape = tuple(images.shape[1:])
    gradient = compiled(
        model, ("saliency", head, of, shape), lambda: _gradient_function(model, head, of, shape)
    )
    maps = []
    for start in range(0, images.shape[0], batch_size):
        batch, chosen = images[start : start + batch_size], targets[start : start + batch_size]
        if smoothgrad:
            # each image draws its noise from its own generator: the same for any batch size
            draws = np.stack(
                [
                    np.random.default_rng([seed, start + offset]).normal(
                        0.0, noise * PIXEL_RANGE, (smoothgrad, *batch.shape[1:])
                    )
                    for offset in range(batch.shape[0])
                ],
                axis=1,
            ).astype(np.float32)  # (copies, batch, H, W, C)
            total = np.zeros_like(batch)
            for draw in draws:
                total += gradient(tf.constant(batch + draw), tf.constant(chosen)).numpy()
            grads = total / smoothgrad
        else:
            grads = gradient(tf.constant(batch), tf.constant(chosen)).numpy()
        if times_input:
            grads = grads * batch
        maps.append(np.abs(grads).max(axis=-1))
    return np.concatenate(maps).astype(np.float32)
