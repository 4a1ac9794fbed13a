"""Faithfulness: deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018) and
the rank statistics the sanity checks use."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from visualize.occlusion import DEFAULT_FILL, default_patch, fill_image
from visualize.quality.constants import (
    CURVE_BATCH,
    CURVE_STEPS,
)
from visualize.targets import (
    as_images,
    class_probability,
    compiled,
    logits_model,
    resolve_head,
    resolve_targets,
)

# ---------------------------------------------------------------- rank correlation


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..P-1 of each row, ties given their mean rank (as Spearman needs)."""
    ranks = np.empty(values.shape, np.float64)
    for row, line in enumerate(values):
        order = np.argsort(line, kind="stable")
        ordered = line[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], ordered.size]
        mean_rank = np.repeat((starts + ends - 1) / 2.0, ends - starts)
        ranks[row, order] = mean_rank
    return ranks


def rank_correlation(first, second) -> np.ndarray:
    """Spearman rank correlation of each pair of maps, float (N,), in -1..1.

    A constant map has no ranking to agree with: its correlation is 0.
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape or first.ndim < 2:
        raise ValueError(
            f"maps to compare must have the same shape (N, H, W), got {first.shape} and {second.shape}."
        )
    first = _average_ranks(first.reshape(first.shape[0], -1))
    second = _average_ranks(second.reshape(second.shape[0], -1))
    first -= first.mean(axis=1, keepdims=True)
    second -= second.mean(axis=1, keepdims=True)
    norms = np.sqrt((first**2).sum(axis=1) * (second**2).sum(axis=1))
    covariance = (first * second).sum(axis=1)
    return np.where(norms > 0, covariance / np.where(norms > 0, norms, 1.0), 0.0)


# ---------------------------------------------------------------- deletion and insertion

CURVE_MODES = ("deletion", "insertion")


def pixel_order(maps, *, seed: int = 0) -> np.ndarray:
    """Each pixel's place when the map's pixels are sorted by importance, int (N, H, W):
    0 for the most important; equal values in a seeded random order (so a flat map
    gives a random order, not the raster scan)."""
    maps = np.asarray(maps, np.float64)
    places = np.empty(maps.shape, np.int64)
    count = maps.shape[1] * maps.shape[2]
    for index, values in enumerate(maps.reshape(maps.shape[0], -1)):
        ties = np.random.default_rng([seed, index]).permutation(count)
        order = np.lexsort((ties, -values))
        places[index].reshape(-1)[order] = np.arange(count)
    return places


def random_order(count: int, shape: Sequence[int], *, seed: int, repeat: int = 0) -> np.ndarray:
    """Random pixel places, int (N, H, W), one seeded permutation per image (``repeat``
    numbers further orders of the same seed)."""
    height, width = shape
    return np.stack(
        [
            np.random.default_rng([seed, repeat, index]).permutation(height * width).reshape(height, width)
            for index in range(count)
        ]
    )


def class_scores_function(model: keras.Model, head: str, shape):
    """The compiled ``(images, targets) -> (probability of each target, predicted class)``
    of ``model``'s ``head`` for images of ``shape``, made once per model, head and shape
    (the deletion curves and ``regions`` share it)."""

    def build():
        explained = logits_model(model, head)

        @tf.function(
            input_signature=[tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec([None], tf.int32)],
            autograph=False,  # no Python control flow inside; autograph tripped on the closure
        )
        def scores(images, targets):
            logits = explained(images, training=False)
            if logits.shape[-1] > 1:
                predicted = tf.argmax(logits, axis=-1)
            else:
                predicted = tf.cast(logits[:, 0] > 0, tf.int64)
            return class_probability(logits, targets), predicted

        return scores

    return compiled(model, ("class-scores", head, tuple(shape)), build)


def perturbation_curves(
    model: keras.Model,
    images,
    places: np.ndarray,
    *,
    head: str | None = None,
    target=None,
    mode: str = "deletion",
    baseline=DEFAULT_FILL,
    patch: int | None = None,
    steps: int = CURVE_STEPS,
    batch_size: int = CURVE_BATCH,
) -> np.ndarray:
    """The class probability as pixels are removed or revealed, float32 (N, steps + 1).

    Args:
        model, images, head, target: see ``visualize.targets``.
        places: each pixel's place in the order, int (N, H, W) (:func:`pixel_order`,
            :func:`random_order`).
        mode: ``deletion`` (step k replaces the first round(k / steps x pixels)
            pixels by the baseline) or ``insertion`` (step k shows them on the
            baseline image).
        baseline: what a removed pixel shows, as occlusion's fill (``mean``: the
            training mean colour, which the model's normalisation turns into zero;
            ``blur``: the image averaged over ``patch`` x ``patch``).
        patch: the ``blur`` baseline's window (None: ``occlusion.default_patch``).
        steps: number of steps from the whole image to none of it.
        batch_size: images per forward pass.
    """
    if mode not in CURVE_MODES:
        raise ValueError(f"curve mode {mode!r}? expected one of {', '.join(CURVE_MODES)}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    images = as_images(images)
    head = resolve_head(model, head)
    targets = resolve_targets(model, images, head, target).astype(np.int32)
    places = np.asarray(places)
    if places.shape != images.shape[:3]:
        raise ValueError(f"places must have shape {images.shape[:3]} (one per pixel), got {places.shape}.")
    shape = tuple(images.shape[1:])
    scores = class_scores_function(model, head, shape)
    pixels = shape[0] * shape[1]
    patch = default_patch(shape) if patch is None else patch
    counts = np.round(np.arange(steps + 1) * pixels / steps).astype(np.int64)
    per_batch = max(1, batch_size // (steps + 1))
    curves = []
    for start in range(0, images.shape[0], per_batch):
        variants = []
        for index in range(start, min(start + per_batch, images.shape[0])):
            image = images[index]
            filled = fill_image(model, image, baseline, patch)  # per image: blur depends on it
            changed = places[index][None] < counts[:, None, None]  # (steps + 1, H, W)
            if mode == "insertion":
                changed = ~changed
            variants.append(np.where(changed[..., None], filled[None], image[None]))
        batch = np.concatenate(variants).astype(np.float32)
        chosen = np.repeat(targets[start : start + len(variants)], steps + 1).astype(np.int32)
        values = scores(tf.constant(batch), tf.constant(chosen))[0].numpy()
        curves.append(values.reshape(len(variants), steps + 1))
    return np.concatenate(curves).astype(np.float32)


def curve_area(curves) -> np.ndarray:
    """Area under each curve over the removed (or revealed) share 0..1, trapezoids, (N,)."""
    curves = np.asarray(curves, np.float64)
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise ValueError(f"curves must have shape (N, steps + 1) with at least 2 points, got {curves.shape}.")
    steps = curves.shape[1] - 1
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2.0 * steps)
