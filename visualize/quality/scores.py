"""All of it for a batch of images: :func:`quality_scores` and the goals
(:func:`failed_checks`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd

from visualize.methods import MEASURED, MEASURED_MAPS, ExplainSettings
from visualize.occlusion import DEFAULT_FILL
from visualize.quality.constants import (
    CURVE_STEPS,
    MEASURES,
    POINTING_GOAL,
    POINTING_METHODS,
    RANDOM_MODELS,
    RANDOM_ORDERS,
    SANITY_LIMIT,
)
from visualize.quality.curves import (
    CURVE_MODES,
    curve_area,
    perturbation_curves,
    pixel_order,
    random_order,
    rank_correlation,
)
from visualize.quality.intervals import BOOTSTRAP_RESAMPLES, CONFIDENCE, interval_table
from visualize.quality.maps import explanation_maps
from visualize.quality.randomisation import TooFewImages, cascade_stages, randomized_model
from visualize.quality.truth import mask_mass, pointing_game
from visualize.targets import (
    as_images,
    check_per_image,
    resolve_head,
    resolve_targets,
)

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

    def intervals(
        self, *, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
    ) -> pd.DataFrame:
        """Per method the number of images and a percentile bootstrap interval (the
        images resampled) of each measure's mean: ``images``, ``<measure>_low``,
        ``<measure>_high`` (see :mod:`visualize.quality.intervals`)."""
        return interval_table(self.scores, MEASURES, confidence=confidence, resamples=resamples, seed=seed)


def quality_scores(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    masks=None,
    methods: Sequence[str] = MEASURED_MAPS,
    settings: ExplainSettings | None = None,
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
        settings: how the maps are made (``visualize.methods.ExplainSettings``; default:
            ``MEASURED``, the plain gradient as ``saliency``).
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
    settings = settings or MEASURED
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
