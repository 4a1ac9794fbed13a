"""Integrated Gradients (Sundararajan, Taly and Yan, ICML 2017): how much each pixel
contributes to the target logit, relative to a baseline image.

attribution(x)_p = (x_p - x'_p) * mean over alpha of dS/dx_p (x' + alpha (x - x')),
with ``steps`` values of alpha at the midpoints of equal intervals (the midpoint rule)
and ``S`` the target class's logit. The attributions of all pixels and channels add up
to about S(x) - S(x') (*completeness*; exactly for a model linear in its input); the map
is their sum over the colour channels, signed: positive where the pixel's difference
from the baseline speaks for the class.

The baseline is what "no evidence" looks like. The default is the training mean colour
(the same fill as occlusion's ``mean``): a black baseline leaves every black pixel
without attribution, which on the line dataset's black background would credit the line
whatever the model does (as gradient x input does); ``gray``, ``zero``, ``blur`` or a
pixel value 0-255 may be chosen instead (``visualize.occlusion.fill_image``).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from visualize.methods import IG_BASELINE, IG_STEPS
from visualize.occlusion import default_patch, fill_image
from visualize.targets import (
    as_images,
    check_per_image,
    class_logit,
    compiled,
    logits_model,
    resolve_head,
    resolve_targets,
)

# Points on the path (visualize.methods.IG_STEPS) and the baseline (IG_BASELINE).
DEFAULT_STEPS, DEFAULT_BASELINE = IG_STEPS, IG_BASELINE
DEFAULT_BATCH = 16  # images per compiled call (times the steps' points on their paths)


def _path_gradient_function(model: keras.Model, head: str, shape, steps: int):
    explained = logits_model(model, head)
    alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps  # midpoints

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, *shape), tf.float32),
            tf.TensorSpec((None, *shape), tf.float32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def attributions(images, baselines, targets):
        difference = images - baselines
        points = baselines[None] + alphas[:, None, None, None, None] * difference[None]  # (S, B, H, W, C)
        flat = tf.reshape(points, [-1, *shape])
        repeated = tf.tile(targets, [steps])
        with tf.GradientTape() as tape:
            tape.watch(flat)
            score = class_logit(explained(flat, training=False), repeated)
        gradients = tf.reshape(tape.gradient(score, flat), tf.shape(points))
        return difference * tf.reduce_mean(gradients, axis=0)

    return attributions


def integrated_gradients(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    baseline=DEFAULT_BASELINE,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
    channels: bool = False,
) -> np.ndarray:
    """Integrated Gradients maps, float32 (N, H, W): the attributions summed over the
    colour channels (signed); with ``channels``, (N, H, W, C) unsummed.

    Args:
        model, images, head, target: see ``visualize.targets``.
        baseline: the image the path starts from, per image: ``mean``, ``gray``,
            ``zero``, ``blur`` or a pixel value (see the module notes).
        steps: points on the path (midpoint rule).
        batch_size: images per compiled call (the maps do not depend on it).
        channels: return the attributions per colour channel, not summed.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1 (e.g. {DEFAULT_STEPS}), got {steps!r}.")
    images = as_images(images)
    head = resolve_head(model, head)
    check_per_image(model)
    targets = resolve_targets(model, images, head, target).astype(np.int32)
    shape = tuple(images.shape[1:])
    function = compiled(
        model,
        ("integrated_gradients", head, shape, int(steps)),
        lambda: _path_gradient_function(model, head, shape, int(steps)),
    )
    patch = default_patch(shape)  # the blur baseline's window: occlusion's default square
    parts = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        baselines = np.stack([fill_image(model, image, baseline, patch) for image in batch])
        values = function(
            tf.constant(batch), tf.constant(baselines), tf.constant(targets[start : start + batch_size])
        )
        parts.append(values.numpy())
    found = np.concatenate(parts).astype(np.float32)
    return found if channels else found.sum(axis=-1)
