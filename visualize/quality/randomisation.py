"""Sanity checks (Adebayo et al., NeurIPS 2018): randomised copies of a model and the
rank correlation of their maps with the trained model's."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd

from fruitcnn.layers import is_batch_norm
from visualize.methods import MEASURED, MEASURED_MAPS, ExplainSettings
from visualize.quality.constants import (
    MIN_STATISTICS,
    RANDOM_MODELS,
)
from visualize.quality.curves import rank_correlation
from visualize.quality.maps import explanation_maps
from visualize.targets import (
    LOGITS_SUFFIX,
    as_images,
    resolve_head,
    resolve_targets,
)

# ---------------------------------------------------------------- randomisation


def _ancestors(model: keras.Model, head: str) -> list[str]:
    """Names of the layers the head's logits depend on, in model order."""
    sub = keras.Model(model.inputs, model.get_layer(head + LOGITS_SUFFIX).output)
    inside = {layer.name for layer in sub.layers}
    return [layer.name for layer in model.layers if layer.name in inside]


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
            and is_batch_norm(model.get_layer(name))
            and not is_batch_norm(model.get_layer(blocks[-1][0]))
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
            if is_batch_norm(copy.get_layer(name)):
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
    settings: ExplainSettings,
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
    methods: Sequence[str] = MEASURED_MAPS,
    settings: ExplainSettings | None = None,
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
    settings = settings or MEASURED
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
