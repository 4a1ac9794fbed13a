"""How far an explanation can be trusted: its heatmaps measured against ground truth,
against randomised models, and by what the model loses when the pixels they rank
first are removed.

Every measure takes *importance maps*: float32 (N, H, W), higher meaning "more
important for the explained class". :func:`explanation_maps` makes them from the
methods of this package (occlusion turned into the drop it causes, so that all
methods point the same way).

* Ground truth, for images whose object pixels are known (the line dataset's masks):
  :func:`pointing_game` (the map's maximum lies on the object, within a tolerance of
  pixels) and :func:`mask_mass` (the share of the map's positive mass on the object).
* Sanity checks (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018):
  :func:`randomized_model` re-initialises chosen layers (:func:`cascade_stages`: from
  the head down), and :func:`rank_correlation` compares the maps of the trained and
  the randomised model (Spearman, per image). A method whose maps barely change when
  the weights they claim to explain are destroyed fails the check. A model trained on
  shuffled labels (data randomisation) is compared the same way.
* Faithfulness (Petsiuk et al., RISE, BMVC 2018): :func:`perturbation_curves` removes
  (deletion) or reveals (insertion) the pixels in the order the map ranks them and
  records the class probability; :func:`curve_area` is the area under that curve. A
  map that finds the evidence makes the deletion curve fall faster than a random
  order does (smaller area) and the insertion curve rise faster (larger area).

:func:`quality_scores` runs all of it for a batch of images and returns one row per
image and method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from visualize.gradcam import conv_layers, default_layer, gradcam
from visualize.occlusion import DEFAULT_FILL, default_patch, fill_image, occlusion
from visualize.saliency import saliency
from visualize.targets import (
    LOGITS_SUFFIX,
    as_images,
    check_per_image,
    class_probability,
    compiled,
    logits_model,
    resolve_head,
    resolve_targets,
)

# The methods measured by default: what explain.py draws (occlusion, saliency,
# Grad-CAM) plus SmoothGrad, the usual repair of noisy gradients.
DEFAULT_METHODS = ("occlusion_prob", "occlusion_loss", "saliency", "smoothgrad", "gradcam")
# The saliency variants measured besides (``gradcam_<layer>`` for Grad-CAM per layer).
SALIENCY_VARIANTS = ("saliency_logit", "gradient_x_input")
# Pointing game: the maximum may lie this many pixels (Chebyshev) off the object.
POINTING_TOLERANCE = 1
# Deletion/insertion: the curve has this many steps (+1 for the untouched image), each
# removing or revealing an equal share of the pixels.
CURVE_STEPS = 50
# Random orders averaged for the random baseline of the curves.
RANDOM_ORDERS = 3
# Forward passes per batch when the curves are measured.
CURVE_BATCH = 512
# SmoothGrad as measured: noisy copies per image.
SMOOTHGRAD_COPIES = 16
# Randomised models (independent draws) whose correlations are averaged: one draw is
# not enough (the fully randomised line model's Grad-CAM correlation was 0.307 with one
# seed and 0.198 with another; Fruits-360 saliency 0.22 and 0.38).
RANDOM_MODELS = 3
# A randomised batch norm's statistics are re-estimated from at least this many values
# per channel (images x positions).
MIN_STATISTICS = 8
# The sanity check: a method passes when the rank correlation of its maps with those of
# a fully randomised model stays below this (the goal set for the line dataset).
SANITY_LIMIT = 0.3
# The pointing game's goal on the line dataset: this share of maps on the line, for
# these methods (the issue's: occlusion, saliency, Grad-CAM).
POINTING_GOAL = 0.95
POINTING_METHODS = ("occlusion_prob", "occlusion_loss", "saliency", "gradcam")
MEASURES = (
    "pointing",
    "mask_mass",
    "randomization_spearman",
    "deletion_auc",
    "deletion_auc_random",
    "insertion_auc",
    "insertion_auc_random",
)


@dataclass(frozen=True)
class MapSettings:
    """How the measured maps are made (explain.py's options, in the same units).

    Attributes:
        patch: occlusion square side in pixels (None: a tenth of the image side,
            ``visualize.occlusion.default_patch``).
        stride: occlusion stride.
        fill: occlusion fill (``visualize.occlusion.FILLS`` or a pixel value).
        occlusion_engine: ``auto``, ``incremental`` or ``batched`` (the same maps).
        gradcam_layer: Grad-CAM's layer for ``gradcam`` (None: its default).
        smoothgrad: SmoothGrad's noisy copies for ``smoothgrad``.
        saliency: the options of ``visualize.saliency.saliency`` for the method
            ``saliency`` (explain.py's --saliency, --smoothgrad, --times-input;
            default: the plain gradient of the loss).
    """

    patch: int | None = None
    stride: int = 1
    fill: object = DEFAULT_FILL
    occlusion_engine: str = "auto"
    gradcam_layer: str | None = None
    smoothgrad: int = SMOOTHGRAD_COPIES
    saliency: dict = field(default_factory=dict)


def gradcam_method_layers(model: keras.Model) -> dict[str, str]:
    """``{method: layer}`` for Grad-CAM per conv block: ``gradcam_<layer>`` for the
    last layer of each conv block that keeps the conv's output shape (``relu1``,
    ``relu2`` ... for ``conv bn relu`` blocks), and ``gradcam`` for the default layer
    (``relu3`` for the line preset, which then has no ``gradcam_relu3``);
    empty for a model without conv layers."""
    names = [layer.name for layer in model.layers]
    chosen = {}
    convs = conv_layers(model)
    if not convs:
        return chosen
    for conv in convs:
        shape = tuple(model.get_layer(conv).output.shape)
        last = conv
        for name in names[names.index(conv) + 1 :]:
            if tuple(model.get_layer(name).output.shape) != shape or name in convs:
                break
            last = name
        chosen[f"gradcam_{last}"] = last
    default = default_layer(model)
    # the default layer is measured once, as "gradcam"
    chosen = {method: layer for method, layer in chosen.items() if layer != default}
    chosen["gradcam"] = default
    return chosen


def available_methods(model: keras.Model) -> tuple[str, ...]:
    """Every method :func:`explanation_maps` can measure on ``model``."""
    layers = gradcam_method_layers(model)
    plain = [method for method in DEFAULT_METHODS if method != "gradcam" or layers]
    return (*plain, *SALIENCY_VARIANTS, *[name for name in layers if name != "gradcam"])


def explanation_maps(
    model: keras.Model,
    images,
    methods: Sequence[str],
    *,
    head: str | None = None,
    target=None,
    settings: MapSettings | None = None,
) -> dict[str, np.ndarray]:
    """Importance maps (higher = more important), float32 (N, H, W), per method.

    ``occlusion_prob`` is the probability's drop when the square centred on a pixel is
    hidden, ``occlusion_loss`` the loss's rise; ``saliency`` is max |d loss / d pixel|,
    ``saliency_logit`` the same of the logit, ``smoothgrad`` SmoothGrad of the loss,
    ``gradient_x_input`` |gradient x pixel value| (``saliency`` follows
    ``settings.saliency``); ``gradcam`` Grad-CAM of the
    default (or the chosen) layer and ``gradcam_<layer>`` of that layer.
    """
    settings = settings or MapSettings()
    images = as_images(images)
    head = resolve_head(model, head)
    targets = resolve_targets(model, images, head, target)
    _check_methods(model, methods)
    maps: dict[str, np.ndarray] = {}
    if {"occlusion_prob", "occlusion_loss"} & set(methods):
        result = occlusion(
            model,
            images,
            head=head,
            target=targets,
            patch=settings.patch,
            stride=settings.stride,
            fill=settings.fill,
            engine=settings.occlusion_engine,
        )
        maps["occlusion_prob"], maps["occlusion_loss"] = occlusion_importance(result)
    gradients = {
        "saliency": dict(settings.saliency),
        "saliency_logit": {"of": "logit"},
        "smoothgrad": {"smoothgrad": settings.smoothgrad},
        "gradient_x_input": {"times_input": True},
    }
    layers = gradcam_method_layers(model)
    if settings.gradcam_layer:
        layers["gradcam"] = settings.gradcam_layer
    for method in methods:
        if method in gradients:
            maps[method] = saliency(model, images, head=head, target=targets, **gradients[method])
        elif method.startswith("gradcam"):
            maps[method] = gradcam(model, images, head=head, target=targets, layer=layers[method])
    return {method: maps[method].astype(np.float32) for method in methods}


def occlusion_importance(result) -> tuple[np.ndarray, np.ndarray]:
    """Occlusion maps (``visualize.occlusion.OcclusionMaps``) as importance: the drop of
    the class probability and the rise of its loss when the square is hidden."""
    clean = np.asarray(result.baseline_probability, np.float64)
    if result.baseline_loss is not None:
        clean_loss = np.asarray(result.baseline_loss, np.float64)
    else:  # maps made without it: -log p (inexact only where p rounds to 1)
        clean_loss = -np.log(np.maximum(clean, np.finfo(np.float32).tiny))
    drop = clean[:, None, None] - result.probability
    rise = result.loss - clean_loss[:, None, None]
    return drop.astype(np.float32), rise.astype(np.float32)


def _check_methods(model: keras.Model, methods: Sequence[str]) -> None:
    known = available_methods(model)
    if not methods:
        raise ValueError(f"no explanation method given; this model offers {', '.join(known)}.")
    unknown = [method for method in methods if method not in known]
    if unknown:
        raise ValueError(
            f"unknown explanation method {', '.join(unknown)}; this model offers {', '.join(known)}."
        )


# ---------------------------------------------------------------- ground truth


def _check_pair(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, np.float64), np.asarray(masks, bool)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None] if masks.ndim == 2 else masks
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(
            f"maps and masks must both have shape (N, H, W) and agree, got {maps.shape} and {masks.shape}."
        )
    return maps, masks


def dilate(masks: np.ndarray, pixels: int) -> np.ndarray:
    """``masks`` (N, H, W) grown by ``pixels`` in every direction (a square neighbourhood)."""
    if pixels < 0:
        raise ValueError(f"tolerance must be 0 or more pixels, got {pixels}.")
    grown = np.asarray(masks, bool).copy()
    height, width = grown.shape[1:]
    padded = np.pad(grown, ((0, 0), (pixels, pixels), (pixels, pixels)))
    for row in range(2 * pixels + 1):
        for column in range(2 * pixels + 1):
            grown |= padded[:, row : row + height, column : column + width]
    return grown


def pointing_game(maps, masks, *, tolerance: int = POINTING_TOLERANCE) -> np.ndarray:
    """Whether each map's maximum falls on the object, bool (N,).

    A hit needs every pixel that attains the maximum to lie within ``tolerance`` pixels
    of the mask, so a constant map (whose maximum is everywhere) hits only when the
    object fills the image, and a tie cannot be resolved in the map's favour.
    """
    maps, masks = _check_pair(maps, masks)
    allowed = dilate(masks, tolerance)
    top = maps >= maps.max(axis=(1, 2), keepdims=True)
    return ~np.any(top & ~allowed, axis=(1, 2))


def mask_mass(maps, masks) -> np.ndarray:
    """The share of each map's positive mass that lies on the object, float (N,).

    Negative values (pixels whose hiding helped the class) carry no mass; a map with
    no positive value has no mass to place and scores 0.
    """
    maps, masks = _check_pair(maps, masks)
    positive = np.maximum(maps, 0.0)
    total = positive.sum(axis=(1, 2))
    inside = (positive * masks).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)


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


def _probability_function(model: keras.Model, head: str, shape):
    explained = logits_model(model, head)

    @tf.function(
        input_signature=[tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec([None], tf.int32)],
        autograph=False,  # no Python control flow inside; autograph tripped on the closure
    )
    def probability(images, targets):
        return class_probability(explained(images, training=False), targets)

    return probability


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
    probability = compiled(
        model, ("probability", head, shape), lambda: _probability_function(model, head, shape)
    )
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
        values = probability(tf.constant(batch), tf.constant(chosen)).numpy()
        curves.append(values.reshape(len(variants), steps + 1))
    return np.concatenate(curves).astype(np.float32)


def curve_area(curves) -> np.ndarray:
    """Area under each curve over the removed (or revealed) share 0..1, trapezoids, (N,)."""
    curves = np.asarray(curves, np.float64)
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise ValueError(f"curves must have shape (N, steps + 1) with at least 2 points, got {curves.shape}.")
    steps = curves.shape[1] - 1
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2.0 * steps)


# ---------------------------------------------------------------- randomisation


def _ancestors(model: keras.Model, head: str) -> list[str]:
    """Names of the layers the head's logits depend on, in model order."""
    sub = keras.Model(model.inputs, model.get_layer(head + LOGITS_SUFFIX).output)
    inside = {layer.name for layer in sub.layers}
    return [layer.name for layer in model.layers if layer.name in inside]


def _is_batch_norm(layer) -> bool:
    return hasattr(layer, "moving_mean") and hasattr(layer, "moving_variance")


def cascade_stages(model: keras.Model, head: str | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """The cascade of a model-parameter randomisation, from the head down.

    Returns ``[(stage, layers randomised so far), ...]``: the first stage randomises
    the head's logits layer, each next one adds the next layer with trainable weights
    below it (a batch norm goes with the conv or dense layer before it), the last
    randomises every trainable layer the head depends on.
    """
    head = resolve_head(model, head)
    weighted = [name for name in _ancestors(model, head) if model.get_layer(name).trainable_weights]
    blocks: list[list[str]] = []
    for name in weighted:
        if (
            blocks
            and _is_batch_norm(model.get_layer(name))
            and not _is_batch_norm(model.get_layer(blocks[-1][0]))
        ):
            blocks[-1].append(name)
        else:
            blocks.append([name])
    stages, randomised = [], []
    for block in reversed(blocks):
        randomised += block
        stages.append((block[0], tuple(randomised)))
    return stages


def _initializer(layer, variable, seed: int):
    """A fresh initialiser of ``variable``'s kind: the layer's own (``<name>_initializer``,
    e.g. ``kernel_initializer``) reseeded, else ones for a scale (gamma), zeros for other
    vectors and Glorot-uniform for matrices."""
    short = variable.path.split("/")[-1]
    own = getattr(layer, f"{short}_initializer", None)
    if own is not None:
        config = own.get_config()
        if "seed" in config:
            config["seed"] = seed
        return type(own).from_config(config)
    if short == "gamma":
        return keras.initializers.Ones()
    if len(variable.shape) < 2:
        return keras.initializers.Zeros()
    return keras.initializers.GlorotUniform(seed=seed)


class TooFewImages(ValueError):
    """Too few images to re-estimate a randomised model's batch-norm statistics."""


def _variable_seed(seed: int, layer: int, variable: int) -> int:
    """An independent initialiser seed per (seed, layer, variable)."""
    return int(np.random.SeedSequence([seed, layer, variable]).generate_state(1)[0])


def randomized_model(
    model: keras.Model, layers: Sequence[str], images, *, seed: int = 0, batch_size: int = 256
) -> keras.Model:
    """A copy of ``model`` with the trainable weights of ``layers`` re-initialised.

    The copy is a new model (explanations compiled for ``model`` are not reused). The
    moving statistics of every batch norm from the first randomised layer on are
    re-estimated on ``images`` (their inputs changed), so the randomised network is
    well scaled rather than dead: without it, a ReLU network with mismatched statistics
    can output constant zeros, whose flat maps would pass the check for the wrong reason.

    Raises:
        TooFewImages: when a batch norm would see fewer than ``MIN_STATISTICS``
            values per channel (a batch norm after a dense layer sees one per image).
    """
    names = [layer.name for layer in model.layers]
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise ValueError(f"unknown layer {', '.join(unknown)}; this model's layers are {', '.join(names)}.")
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for offset, name in enumerate(layers):
        layer = copy.get_layer(name)
        for number, variable in enumerate(layer.trainable_weights):
            initializer = _initializer(layer, variable, _variable_seed(seed, offset, number))
            variable.assign(initializer(variable.shape, dtype=variable.dtype))
    if layers:
        first = min(names.index(name) for name in layers)
        images = as_images(images)
        for name in names[first:]:
            if _is_batch_norm(copy.get_layer(name)):
                _reestimate(copy, copy.get_layer(name), images, batch_size)
    return copy


def _reestimate(model: keras.Model, layer, images: np.ndarray, batch_size: int) -> None:
    """Set a batch norm's moving statistics to those of its inputs over ``images``."""
    probe = keras.Model(model.inputs[0], layer.input)  # one tensor in, as it is called
    # called directly, not through predict: a new model per layer would make predict
    # trace a new function each time
    inputs = np.concatenate(
        [
            keras.ops.convert_to_numpy(probe(images[start : start + batch_size], training=False))
            for start in range(0, images.shape[0], batch_size)
        ]
    ).astype(np.float64)
    values = int(np.prod(inputs.shape[:-1]))
    if values < MIN_STATISTICS:
        raise TooFewImages(
            f"re-estimating the statistics of the randomised {layer.name} needs at least {MIN_STATISTICS} "
            f"values per channel; {images.shape[0]} image(s) give {values}: measure at least "
            f"{-(-MIN_STATISTICS * images.shape[0] // values)} images (e.g. --samples)."
        )
    axes = tuple(range(inputs.ndim - 1))
    layer.moving_mean.assign(inputs.mean(axis=axes).astype(np.float32))
    layer.moving_variance.assign(inputs.var(axis=axes).astype(np.float32))


def correlations_with(
    other: keras.Model,
    images,
    maps: dict[str, np.ndarray],
    *,
    head: str,
    targets: np.ndarray,
    settings: MapSettings,
) -> dict[str, np.ndarray]:
    """Spearman correlation, per method and image, of ``maps`` (importance maps of
    some model) and the same methods' maps of ``other`` for the same classes."""
    others = explanation_maps(other, images, list(maps), head=head, target=targets, settings=settings)
    return {method: rank_correlation(maps[method], others[method]) for method in maps}


def cascade_correlations(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    methods: Sequence[str] = DEFAULT_METHODS,
    settings: MapSettings | None = None,
    maps: dict[str, np.ndarray] | None = None,
    random_models: int = RANDOM_MODELS,
    seed: int = 0,
) -> pd.DataFrame:
    """Cascading model-parameter randomisation: for each stage of
    :func:`cascade_stages` (from the head down), the Spearman correlation between the
    trained and the randomised model's maps, over the images and ``random_models``
    independent draws.

    Returns one row per stage and method: ``stage`` (1 = the head only), ``layer``
    (the layer the stage adds), ``method``, ``spearman`` (mean), ``spearman_std``
    (over images and draws). ``maps``: the trained model's maps of ``methods`` when
    already made (with the same targets and settings), else they are made here.
    """
    settings = settings or MapSettings()
    images = as_images(images)
    head = resolve_head(model, head)
    targets = resolve_targets(model, images, head, target)
    if maps is None:
        maps = explanation_maps(model, images, methods, head=head, target=targets, settings=settings)
    else:
        maps = {method: maps[method] for method in methods}
    rows = []
    for number, (layer, randomised) in enumerate(cascade_stages(model, head), start=1):
        draws = [
            correlations_with(
                randomized_model(model, randomised, images, seed=seed + draw),
                images,
                maps,
                head=head,
                targets=targets,
                settings=settings,
            )
            for draw in range(random_models)
        ]
        for method in maps:
            values = np.stack([found[method] for found in draws])
            rows.append(
                {
                    "stage": number,
                    "layer": layer,
                    "method": method,
                    "spearman": float(values.mean()),
                    "spearman_std": float(values.std()),
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- all of it


@dataclass
class QualityResult:
    """The measures of a batch of explanations.

    Attributes:
        scores: one row per image and method: ``image`` (index), ``method``, and the
            columns of ``MEASURES`` (``pointing`` and ``mask_mass`` only with masks,
            ``randomization_spearman`` only when the randomisation was run; else NaN).
        curves: ``{method: {"deletion": mean curve, "insertion": mean curve}}`` over the
            images, (steps + 1,) each, and the same for ``"random"`` (random orders).
        maps: the importance maps, ``{method: (N, H, W)}``.
        randomized_maps: the first fully randomised model's maps (empty when not run).
        randomization_note: why the randomisation was not run (too few images for
            the model's batch norms), else None.
    """

    scores: pd.DataFrame
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    randomized_maps: dict[str, np.ndarray] = field(default_factory=dict)
    randomization_note: str | None = None

    def summary(self) -> pd.DataFrame:
        """Per method the mean of every measure over the images (``pointing``: the share
        of hits), in the order the methods were given."""
        frame = self.scores.drop(columns="image").groupby("method", sort=False).mean()
        return frame.dropna(axis=1, how="all")


def quality_scores(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    masks=None,
    methods: Sequence[str] = DEFAULT_METHODS,
    settings: MapSettings | None = None,
    randomize: bool = True,
    random_models: int = RANDOM_MODELS,
    baseline=DEFAULT_FILL,
    steps: int = CURVE_STEPS,
    random_orders: int = RANDOM_ORDERS,
    maps: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> QualityResult:
    """Every measure of every method's maps of ``images``.

    Args:
        model, images, head, target: see ``visualize.targets`` (the class explained:
            ``target``, else each image's predicted class).
        masks: bool (N, H, W) object pixels, for the pointing game and the mask mass.
        methods: names from :func:`available_methods`.
        settings: how the maps are made (:class:`MapSettings`).
        randomize: compare with fully randomised copies (:func:`randomized_model` of
            the last :func:`cascade_stages` stage; ``random_models`` draws, their
            correlations averaged) for ``randomization_spearman``; when
            the images are too few for its batch norms, the column stays NaN and
            ``QualityResult.randomization_note`` says why.
        baseline: what deleted pixels show (occlusion fills).
        steps: steps of the deletion and insertion curves.
        random_orders: random orders averaged for the ``*_random`` areas.
        maps: the importance maps of ``methods`` when already made (with the same
            targets and ``settings``; e.g. explain.py's), else they are made here.
        seed: seed of tie-breaking, random orders and re-initialisation.
    """
    settings = settings or MapSettings()
    images = as_images(images)
    head = resolve_head(model, head)
    check_per_image(model)
    targets = resolve_targets(model, images, head, target)
    masks = None if masks is None else _checked(masks, images.shape[:3], "masks", bool)
    if maps is None:
        maps = explanation_maps(model, images, methods, head=head, target=targets, settings=settings)
    else:
        missing = [method for method in methods if method not in maps]
        if missing:
            raise ValueError(f"maps has no {', '.join(missing)}; it has {', '.join(maps)}.")
        maps = {
            method: _checked(maps[method], images.shape[:3], f"maps[{method!r}]", np.float32)
            for method in methods
        }
    count = images.shape[0]
    curve_options = {
        "head": head,
        "target": targets,
        "baseline": baseline,
        "patch": settings.patch,
        "steps": steps,
    }
    random_mean = {mode: [] for mode in CURVE_MODES}
    for repeat in range(random_orders):
        places = random_order(count, images.shape[1:3], seed=seed, repeat=repeat)
        for mode in CURVE_MODES:
            random_mean[mode].append(perturbation_curves(model, images, places, mode=mode, **curve_options))
    random_mean = {mode: np.mean(random_mean[mode], axis=0) for mode in CURVE_MODES}
    result = QualityResult(
        pd.DataFrame(), {"random": {mode: random_mean[mode].mean(axis=0) for mode in CURVE_MODES}}, maps
    )
    correlations = {}
    if randomize:
        try:
            result.randomized_maps, correlations = _full_randomisation(
                model, images, maps, head, targets, settings, random_models, seed
            )
        except TooFewImages as error:
            result.randomization_note = str(error)
    frames = []
    for method in methods:
        places = pixel_order(maps[method], seed=seed)
        found = {
            mode: perturbation_curves(model, images, places, mode=mode, **curve_options)
            for mode in CURVE_MODES
        }
        result.curves[method] = {mode: found[mode].mean(axis=0) for mode in CURVE_MODES}
        frames.append(
            _method_frame(method, maps[method], masks, correlations.get(method), found, random_mean)
        )
    result.scores = pd.concat(frames, ignore_index=True)
    return result


def _full_randomisation(model, images, maps, head, targets, settings, draws: int, seed: int):
    """The first fully randomised model's maps, and per method the Spearman correlation
    per image averaged over ``draws`` randomised models."""
    layers = cascade_stages(model, head)[-1][1]
    first, sums = {}, {method: 0.0 for method in maps}
    for draw in range(draws):
        other = randomized_model(model, layers, images, seed=seed + draw)
        found = explanation_maps(other, images, list(maps), head=head, target=targets, settings=settings)
        first = first or found
        for method in maps:
            sums[method] = sums[method] + rank_correlation(maps[method], found[method])
    return first, {method: total / draws for method, total in sums.items()}


def _checked(array, shape, name: str, dtype) -> np.ndarray:
    array = np.asarray(array, dtype)
    if array.shape != tuple(shape):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} (one value per image pixel), got {array.shape}."
        )
    return array


def _method_frame(method, maps, masks, correlation, found, random_mean) -> pd.DataFrame:
    """One row per image of a method's measures (NaN where not measured)."""
    missing = np.full(maps.shape[0], np.nan)
    return pd.DataFrame(
        {
            "image": np.arange(maps.shape[0]),
            "method": method,
            "pointing": missing if masks is None else pointing_game(maps, masks).astype(float),
            "mask_mass": missing if masks is None else mask_mass(maps, masks),
            "randomization_spearman": missing if correlation is None else correlation,
            "deletion_auc": curve_area(found["deletion"]),
            "deletion_auc_random": curve_area(random_mean["deletion"]),
            "insertion_auc": curve_area(found["insertion"]),
            "insertion_auc_random": curve_area(random_mean["insertion"]),
        }
    )


def failed_checks(method: str, scores: dict, *, masks: bool) -> list[str]:
    """The goals (set on the line dataset) that a method's mean scores miss, in words:
    the pointing game (for ``POINTING_METHODS``, with masks), the sanity check, and
    deletion below the random order's."""
    failed = []
    if masks and method in POINTING_METHODS and scores["pointing"] < POINTING_GOAL:
        failed.append(f"pointing {scores['pointing']:.3f} < {POINTING_GOAL}")
    spearman = scores.get("randomization_spearman", np.nan)
    if spearman == spearman and spearman >= SANITY_LIMIT:
        failed.append(f"randomization_spearman {spearman:.3f} >= {SANITY_LIMIT}")
    if scores["deletion_auc"] >= scores["deletion_auc_random"]:
        failed.append(
            f"deletion_auc {scores['deletion_auc']:.3f} >= random {scores['deletion_auc_random']:.3f}"
        )
    return failed
