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
* What the decisions rest on (``regions``): for images with object masks and, with a
  planted cue, the cue's pixels, :func:`region_check` measures the probability each
  region's removal costs and each method's share of importance on the object, the cue
  and the rest, and says in words when the model relies on the cue or the surroundings
  more than on the object.
* Faithfulness (Petsiuk et al., RISE, BMVC 2018): :func:`perturbation_curves` removes
  (deletion) or reveals (insertion) the pixels in the order the map ranks them and
  records the class probability; :func:`curve_area` is the area under that curve. A
  map that finds the evidence makes the deletion curve fall faster than a random
  order does (smaller area) and the insertion curve rise faster (larger area).

:func:`quality_scores` runs all of it for a batch of images and returns one row per
image and method; ``QualityResult.intervals`` adds, per method and measure, the number
of images and a bootstrap interval of the mean (:func:`bootstrap_interval`, the images
resampled).

The parts: ``maps`` (which maps a model offers and making them through the method
registry, ``visualize.methods``), ``truth``, ``curves`` (and the rank statistics),
``randomisation``, ``intervals``, ``regions``, ``scores`` (all of it, and the goals), ``constants``.
"""

from visualize.compute import occlusion_importance
from visualize.methods import MEASURED, MEASURED_MAPS, SALIENCY_VARIANTS, ExplainSettings
from visualize.occlusion import default_patch
from visualize.quality.constants import (
    CURVE_BATCH,
    CURVE_STEPS,
    MEASURES,
    MIN_STATISTICS,
    POINTING_GOAL,
    POINTING_METHODS,
    POINTING_TOLERANCE,
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
from visualize.quality.intervals import BOOTSTRAP_RESAMPLES, CONFIDENCE, bootstrap_interval, interval_table
from visualize.quality.maps import available_methods, explanation_maps, gradcam_method_layers
from visualize.quality.randomisation import (
    TooFewImages,
    cascade_correlations,
    cascade_stages,
    correlations_with,
    randomized_model,
)
from visualize.quality.regions import (
    REGIONS,
    RELIANCE_MARGIN,
    RegionResult,
    region_check,
    region_masks,
    region_shares,
)
from visualize.quality.scores import QualityResult, failed_checks, quality_scores
from visualize.quality.truth import dilate, mask_mass, pointing_game

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "CONFIDENCE",
    "CURVE_BATCH",
    "CURVE_MODES",
    "CURVE_STEPS",
    "MEASURED",
    "MEASURED_MAPS",
    "MEASURES",
    "MIN_STATISTICS",
    "POINTING_GOAL",
    "POINTING_METHODS",
    "POINTING_TOLERANCE",
    "RANDOM_MODELS",
    "RANDOM_ORDERS",
    "REGIONS",
    "RELIANCE_MARGIN",
    "SALIENCY_VARIANTS",
    "SANITY_LIMIT",
    "ExplainSettings",
    "QualityResult",
    "RegionResult",
    "TooFewImages",
    "available_methods",
    "bootstrap_interval",
    "cascade_correlations",
    "cascade_stages",
    "correlations_with",
    "curve_area",
    "default_patch",
    "dilate",
    "explanation_maps",
    "failed_checks",
    "gradcam_method_layers",
    "interval_table",
    "mask_mass",
    "occlusion_importance",
    "perturbation_curves",
    "pixel_order",
    "pointing_game",
    "quality_scores",
    "random_order",
    "randomized_model",
    "region_check",
    "region_masks",
    "region_shares",
    "rank_correlation",
]
