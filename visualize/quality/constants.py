"""The settings of the quality measures (the goals were set on the line dataset)."""

# Pointing game: the maximum may lie this many pixels (Chebyshev) off the object.
POINTING_TOLERANCE = 1
# Deletion/insertion: the curve has this many steps (+1 for the untouched image), each
# removing or revealing an equal share of the pixels.
CURVE_STEPS = 50
# Random orders averaged for the random baseline of the curves.
RANDOM_ORDERS = 3
# Forward passes per batch when the curves are measured.
CURVE_BATCH = 512
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
