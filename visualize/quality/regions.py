"""Object, cue or surroundings: what a model's decisions rest on, for images whose object
pixels (and, with a planted cue, the cue's pixels) are known.

The image is cut into regions (``REGIONS``): the ``object`` (its mask, less any cue on
it), the ``cue`` (when one was planted: ``fruitcnn.data.composite``) and the ``rest``
(the surroundings). Two kinds of evidence, per image:

* **Removal**, from the model alone: the probability of the explained class with each
  region removed (the object and the rest replaced by the fill, the training mean colour,
  as occlusion and the deletion curves do; the cue by the clean image, exactly as it was
  before the cue was planted). The probability a removal costs is how much the decision
  rests on that region. An image **relies on** the surroundings when removing them costs
  at least ``RELIANCE_MARGIN`` of the class probability, and relies on them **more than
  on the object** when, besides, that is more than hiding the object costs.
* **Substitution**, for a cue: the probability with the cue of another class in its
  place (the median over the other classes' cues, ``substitutes``). Removal alone
  misses a model that needs neither the cue nor the object because either suffices
  (both push the probability to 1, so taking one away costs little), yet follows the cue
  when the two disagree. An image **relies on** the cue when its own cue helps the class
  against both the clean image and the other classes' cues, and removing or replacing it
  costs at least ``RELIANCE_MARGIN`` (without substitutes: when removing it does); the
  cue counts **more than the object** when that cost is also more than hiding the object.
  Requiring the cue to help against both keeps a model that was never trained with the
  cue from being flagged where any coloured square or frame shifts its probability.
* **Importance shares**, per explanation method: the share of the map's positive mass on
  each region, beside the region's share of the image's area (a map that ignores the
  image puts its mass in proportion to area).

With a cue, the images checked are the cued copies (the cue as the model saw it in
training) and the accuracy is given with the cue, without it (the clean images) and with
another class's cue (the mean over the substitutes).

Measured (``bench/run.py shortcut``, 200 test images of Fruits-360 objects pasted on
CIFAR-10 photos): with removal alone the models trained with a cue were flagged for
67.5% (patch), 95% (border) and 83.5% (hue) of the images; with substitution as well
for 94.5%, 100% and 95%; the model trained without a cue for 0-1 of the 200 images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from visualize.methods import MEASURED, MEASURED_MAPS, ExplainSettings
from visualize.occlusion import DEFAULT_FILL, default_patch, fill_image
from visualize.quality.curves import class_scores_function
from visualize.quality.maps import explanation_maps
from visualize.quality.truth import mask_mass
from visualize.targets import as_images, resolve_head, resolve_targets

REGIONS = ("object", "cue", "rest")
# A removal must cost at least this much probability to count as reliance.
RELIANCE_MARGIN = 0.1
# Images per forward pass of the removal check.
_BATCH = 256


def region_masks(masks, cue_masks=None) -> dict[str, np.ndarray]:
    """The regions of each image, ``{"object", ["cue",] "rest": bool (N, H, W)}``: they
    do not overlap and cover the image (a cue drawn over the object belongs to the cue)."""
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be bool (N, H, W), got shape {masks.shape}.")
    regions = {}
    if cue_masks is not None:
        cue = np.asarray(cue_masks, bool)
        if cue.shape != masks.shape:
            raise ValueError(
                f"cue masks {cue.shape} and object masks {masks.shape} must have the same shape."
            )
        regions["object"] = masks & ~cue
        regions["cue"] = cue
    else:
        regions["object"] = masks
    covered = np.zeros_like(masks)
    for region in regions.values():
        covered |= region
    regions["rest"] = ~covered
    return regions


def region_shares(maps, regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per region the share of each map's positive mass on it (``mask_mass`` of the
    region), ``{region: float (N,)}``: summing to 1 over the regions, all 0 for a map
    without positive values."""
    return {name: mask_mass(maps, region) for name, region in regions.items()}


def _predict(model, head, images, targets) -> tuple[np.ndarray, np.ndarray]:
    """(probability of each target, predicted class) of ``images``, in batches."""
    scores = class_scores_function(model, head, tuple(images.shape[1:]))
    found = [
        scores(tf.constant(images[start : start + _BATCH]), tf.constant(targets[start : start + _BATCH]))
        for start in range(0, len(images), _BATCH)
    ]
    return (
        np.concatenate([value[0].numpy() for value in found]).astype(np.float64),
        np.concatenate([value[1].numpy() for value in found]).astype(np.int64),
    )


def _substituted(model, head, images, targets, substitutes) -> tuple[np.ndarray, float] | None:
    """(the median probability of each target over ``substitutes``, the accuracy over all
    of them), or None when there are none."""
    found, right = [], []
    for index, substitute in enumerate(substitutes):
        substitute = as_images(substitute)
        if substitute.shape != images.shape:
            raise ValueError(
                f"substitute {index} has shape {substitute.shape}; it must be like the images, "
                f"{images.shape}."
            )
        probability, predicted = _predict(model, head, substitute, targets)
        found.append(probability)
        right.append(predicted == targets)
    if not found:
        return None
    return np.median(np.stack(found), axis=0), float(np.mean(right))


@dataclass
class RegionResult:
    """What the decisions rest on (:func:`region_check`).

    Attributes:
        removal: one row per image: ``image``, ``probability`` (of the explained class),
            ``without_<region>`` (with the region removed), ``drop_<region>`` (what
            the removal cost), with substitutes ``other_cue`` (the median probability
            with another class's cue) and ``drop_other_cue``, for the cue and the rest
            ``relies_on_<region>`` and ``outweighs_<region>`` (see the module), and
            ``area_<region>``.
        shares: one row per image and method: ``image``, ``method``, ``<region>`` (the
            share of the map's positive mass on the region).
        accuracy: ``{"images": accuracy on the images checked, "clean": on the clean
            images, "other_cue": with another class's cue}`` (clean only with a cue,
            other_cue only with substitutes).
        regions: the region names measured.
    """

    removal: pd.DataFrame
    shares: pd.DataFrame
    accuracy: dict[str, float]
    regions: tuple[str, ...]

    @property
    def cue(self) -> bool:
        """Whether a cue was checked."""
        return "cue" in self.regions

    def summary(self) -> pd.DataFrame:
        """Per method the mean share on each region and the share of images whose map
        puts more mass on the cue (or the rest) than on the object (``more_on_<region>``);
        a row ``removal`` gives the mean drops, the share of images that rely on the region
        (``relies_on_<region>``) and that rely on it more than on the object
        (``more_on_<region>``); a row ``area`` the regions' mean area shares."""
        others = [region for region in self.regions if region != "object"]
        rows = {}
        removal = self.removal
        rows["area"] = {region: removal[f"area_{region}"].mean() for region in self.regions}
        rows["removal"] = {region: removal[f"drop_{region}"].mean() for region in self.regions}
        if self.substituted:
            rows["removal"]["other_cue"] = removal["drop_other_cue"].mean()
        for region in others:
            rows["removal"][f"relies_on_{region}"] = removal[f"relies_on_{region}"].mean()
            rows["removal"][f"more_on_{region}"] = removal[f"outweighs_{region}"].mean()
        for method, frame in self.shares.groupby("method", sort=False):
            rows[method] = {region: frame[region].mean() for region in self.regions}
            for region in others:
                rows[method][f"more_on_{region}"] = float((frame[region] > frame["object"]).mean())
        return pd.DataFrame.from_dict(rows, orient="index")

    @property
    def substituted(self) -> bool:
        """Whether other classes' cues were put in the cue's place."""
        return "drop_other_cue" in self.removal

    @property
    def relies(self) -> bool:
        """Whether the verdict is a warning: most images rely on the cue, or on the
        surroundings more than on the object."""
        removal = self.removal
        return bool(
            (self.cue and removal["relies_on_cue"].mean() >= 0.5)
            or (removal["area_rest"].any() and removal["outweighs_rest"].mean() >= 0.5)
        )

    def verdict(self) -> list[str]:
        """In words, with the numbers behind them: whether the model relies on the cue,
        and whether on the surroundings more than on the object."""
        removal, lines = self.removal, []
        count = len(removal)
        drop_object = removal["drop_object"].mean()
        if self.cue:
            share, drop_cue = removal["relies_on_cue"].mean(), removal["drop_cue"].mean()
            flagged = int(removal["relies_on_cue"].sum())
            more = removal["outweighs_cue"].mean()
            with_cue, without = self.accuracy["images"], self.accuracy["clean"]
            what, averages, accuracies = "removing the cue", f"{drop_cue:.2f}", ""
            if self.substituted:
                what = "the cue helps the class and removing it or putting another class's cue in its place"
                averages += f" and {removal['drop_other_cue'].mean():.2f}"
                accuracies = f", {self.accuracy['other_cue']:.1%} with another class's cue"
            numbers = (
                f"for {flagged} of the {count} images checked ({share:.1%}) {what} costs at least "
                f"{RELIANCE_MARGIN:g} of the class probability (on average {averages}; hiding the object "
                f"{drop_object:.2f}), for {more:.0%} more than hiding the object; accuracy {with_cue:.1%} "
                f"with the cue, {without:.1%} without it{accuracies}"
            )
            if share >= 0.5:
                lines.append(f"The model relies on the planted cue: {numbers}.")
            elif flagged:
                lines.append(f"The model does not rely on the planted cue for most images: {numbers}.")
            else:
                lines.append(f"No reliance on the planted cue found: {numbers}.")
        if not removal["area_rest"].any():  # a cue over all the surroundings (hue): said above
            return lines
        share = removal["outweighs_rest"].mean()
        words = (
            "relies on the surroundings more than on the object" if share >= 0.5 else "looks at the object"
        )
        lines.append(
            f"The model {words}: hiding the surroundings costs more than hiding the object for {share:.0%} "
            f"of the images (mean drops {removal['drop_rest'].mean():.2f} and {drop_object:.2f}; the object "
            f"covers {removal['area_object'].mean():.0%} of an image on average)."
        )
        return lines


def region_check(
    model: keras.Model,
    images,
    masks,
    *,
    cue_masks=None,
    clean=None,
    substitutes=None,
    head: str | None = None,
    target=None,
    methods: Sequence[str] = MEASURED_MAPS,
    settings: ExplainSettings | None = None,
    maps: dict[str, np.ndarray] | None = None,
    baseline=DEFAULT_FILL,
) -> RegionResult:
    """What the model's decisions on ``images`` rest on: the object, a cue, or the rest.

    Args:
        model, images, head, target: see ``visualize.targets`` (the class explained:
            ``target``, else each image's predicted class).
        masks: bool (N, H, W) object pixels.
        cue_masks: bool (N, H, W) where a planted cue lies, with ``clean``: the same
            images without the cue (uint8 or float, as ``images``).
        substitutes: with a cue, image arrays like ``images`` with the cue of another
            class in its place, one array per other class
            (``fruitcnn.data.composite.cue_substitutes``); None: removal only.
        methods, settings: the explanation methods whose importance shares are measured
            (``maps``: their maps when already made, with the same targets).
        baseline: what a removed object or surroundings show (occlusion's fills).
    """
    images = as_images(images)
    head = resolve_head(model, head)
    if (cue_masks is None) != (clean is None):
        raise ValueError("a cue needs both cue_masks (where it lies) and clean (the images without it).")
    if substitutes is not None and cue_masks is None:
        raise ValueError("substitutes (other classes' cues) need a cue: pass cue_masks and clean too.")
    regions = region_masks(masks, cue_masks)
    if regions["object"].shape != images.shape[:3]:
        raise ValueError(f"masks must have shape {images.shape[:3]}, got {regions['object'].shape}.")
    clean = None if clean is None else as_images(clean)
    if clean is not None and clean.shape != images.shape:
        raise ValueError(f"clean images {clean.shape} and images {images.shape} must have the same shape.")
    targets = resolve_targets(model, images, head, target).astype(np.int32)
    patch = settings.patch if settings and settings.patch else default_patch(images.shape[1:])
    fills = np.stack([fill_image(model, image, baseline, patch) for image in images])
    probability, predicted = _predict(model, head, images, targets)
    removal = {"image": np.arange(len(images)), "probability": probability}
    accuracy = {"images": float((predicted == targets).mean())}
    for name, region in regions.items():
        if name == "cue":
            removed = clean
        else:
            removed = np.where(region[..., None], fills, images).astype(np.float32)
        without, other_predicted = _predict(model, head, removed, targets)
        if name == "cue":
            accuracy["clean"] = float((other_predicted == targets).mean())
        removal[f"without_{name}"] = without
        removal[f"drop_{name}"] = probability - without
        removal[f"area_{name}"] = region.mean(axis=(1, 2))
    other = None if substitutes is None else _substituted(model, head, images, targets, substitutes)
    if other is not None:
        removal["other_cue"], accuracy["other_cue"] = other
        removal["drop_other_cue"] = probability - other[0]
    for name in regions:
        if name == "object":
            continue
        drop = removal[f"drop_{name}"]
        if name == "cue" and other is not None:  # the own cue helps against both, by the margin once
            helps = (drop > 0) & (removal["drop_other_cue"] > 0)
            drop = np.maximum(drop, removal["drop_other_cue"])
            relies = helps & (drop >= RELIANCE_MARGIN)
        else:
            relies = drop >= RELIANCE_MARGIN
        removal[f"relies_on_{name}"] = relies
        removal[f"outweighs_{name}"] = relies & (drop > removal["drop_object"])
    if maps is None and methods:
        maps = explanation_maps(
            model, images, methods, head=head, target=targets, settings=settings or MEASURED
        )
    missing = [method for method in methods if method not in (maps or {})]
    if missing:
        raise ValueError(f"maps has no {', '.join(missing)}; it has {', '.join(maps or {}) or 'nothing'}.")
    frames = [
        pd.DataFrame(
            {"image": np.arange(len(images)), "method": method, **region_shares(maps[method], regions)}
        )
        for method in methods
    ]
    shares = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["image", "method", *regions])
    )
    return RegionResult(pd.DataFrame(removal), shares, accuracy, tuple(regions))
