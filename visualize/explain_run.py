"""What explain.py does for a batch of images: run the chosen methods for the chosen
heads and write one PNG and the raw arrays (.npy) per image, method and variant, and
``explained.csv`` (per image and head: the predicted, true and explained class); with
``measure_quality`` also measure the heatmaps drawn (``visualize.quality``), print the
scores and write ``quality.csv``."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from fruitcnn import plots, runs
from visualize import quality
from visualize.activations import activations
from visualize.filters import (
    PERCENTILE,
    filter_measures,
    filter_patterns,
    first_layer_weights,
    receptive_field,
)
from visualize.gradcam import default_layer
from visualize.methods import CAM_METHODS, METHODS, SMOOTHGRAD_COPIES, ExplainSettings, compute, method_of
from visualize.occlusion import default_patch

# Filters drawn by the filters method when none are chosen (the first ones of the layer).
SHOWN_FILTERS = 32
# Saliency as explain.py draws it by default: SmoothGrad of the loss
# (visualize.methods.SMOOTHGRAD_COPIES), shown clipped at this percentile of each map.
DEFAULT_SMOOTHGRAD, SALIENCY_CLIP_PERCENTILE = SMOOTHGRAD_COPIES, 99.0
# Columns of filters_<layer>.csv besides the filter index.
FILTER_COLUMNS = ("dead", "activation", "percentile_99", "structure")
EXPLAINED_FILE = "explained.csv"
QUALITY_FILE = "quality.csv"
# Characters per line of the quality legend printed.
QUALITY_TEXT_WIDTH = 100


def _save(out: Path, name: str, figure=None, array=None) -> int:
    written = 0
    if array is not None:
        runs.atomic_write(out / f"{name}.npy", lambda path: np.save(path, np.asarray(array, np.float32)))
        written += 1
    if figure is not None:
        png = plots.png_bytes(figure)
        runs.atomic_write(out / f"{name}.png", lambda path: Path(path).write_bytes(png))
        written += 1
    return written


def _title(stem, head, names, predicted, target, true) -> str:
    parts = [f"{stem}: predicted {names[predicted]}"]
    if true is not None:
        parts.append(f"true {names[true]}")
    parts.append(f"explained class {names[target]}" + (f" (head {head})" if head else ""))
    return " | ".join(parts)


def explain_images(
    model: keras.Model,
    images: np.ndarray,
    stems: Sequence[str],
    classes: dict[str, list[str]],
    probabilities: dict[str, np.ndarray],
    *,
    methods: Sequence[str],
    head: str | None,
    target: int | None,
    truth: dict[str, np.ndarray] | None,
    options: ExplainSettings,
    measure_quality: bool = False,
    out: Path,
    masks: np.ndarray | None = None,
    reference: Reference | None = None,
) -> int:
    """Run ``methods`` on ``images`` for ``head`` (default: every head) and write the
    files; returns how many were written. ``probabilities`` are the model's, per head
    (``visualize.targets.class_probabilities``): they give the predicted classes.
    ``options``: how the methods run (``visualize.methods.ExplainSettings``); ``measure_quality``:
    also measure the heatmaps drawn; ``masks`` (bool (N, H, W), the object pixels, when
    known) add the ground-truth measures to them."""
    out.mkdir(parents=True, exist_ok=True)
    if options.patch is None:
        options = replace(options, patch=default_patch(images.shape[1:]))
    multi = len(classes) > 1
    written, rows, scores = 0, [], []
    for name in [head] if head else list(classes):
        names = classes[name]
        predicted = np.argmax(probabilities[name], axis=1)
        true = truth[name] if truth else None
        if target is not None:
            targets = np.full(len(images), target)
        else:
            targets = true if true is not None else predicted
        titles = []
        for index, stem in enumerate(stems):
            known = None if true is None else true[index]
            titles.append(
                _title(stem, name if multi else None, names, predicted[index], targets[index], known)
            )
            rows.append(
                {
                    "image": stem,
                    "head": name,
                    "predicted": names[predicted[index]],
                    "true": "" if known is None else names[known],
                    "explained": names[targets[index]],
                }
            )
        suffix = f"_{name}" if multi else ""
        drawn, importance = _maps(model, images, name, targets, methods, options)
        written += _heatmaps(model, images, stems, titles, drawn, options, out, suffix)
        if measure_quality and importance:
            scores.append(_quality(model, images, stems, name, targets, importance, options, masks))
    written += _layer_pictures(model, images, stems, methods, options, out, reference or Reference())
    runs.write_csv(out / EXPLAINED_FILE, rows)
    if scores:
        frame = pd.concat(scores, ignore_index=True)
        print(_quality_text(frame))
        runs.write_csv(out / QUALITY_FILE, frame.to_dict("records"))
        written += 1
    return written + 1


def _quality(model, images, stems, head, targets, importance, options, masks) -> pd.DataFrame:
    """The measures of the maps drawn for one head, one row per image and method."""
    start = time.perf_counter()
    found = quality.quality_scores(
        model,
        images,
        head=head,
        target=targets,
        masks=masks,
        methods=list(importance),
        settings=options,
        maps=importance,
    )
    print(f"quality of head {head}'s maps measured in {time.perf_counter() - start:.1f} s")
    if found.randomization_note:
        print(f"no randomisation check: {found.randomization_note}")
    frame = found.scores
    frame.insert(0, "head", head)
    frame["image"] = [stems[index] for index in frame["image"]]
    return frame


def _quality_text(frame: pd.DataFrame) -> str:
    """The scores as tables for the terminal (per image, then the mean per method when
    there are several images), after a legend of how to read them."""
    legend = (
        "quality (visualize.quality): deletion_auc / insertion_auc: area under the class probability "
        "as the pixels the map ranks first are removed / revealed (a faithful map: deletion below the "
        "random order's area, insertion above); randomization_spearman: rank correlation with the maps "
        f"of a fully randomised copy of the model (under {quality.SANITY_LIMIT} passes the sanity check)"
    )
    shown = frame.dropna(axis=1, how="all")
    if "pointing" in shown:
        legend += (
            f"; pointing: the map's maximum on the object ({quality.POINTING_TOLERANCE}-pixel tolerance); "
            "mask_mass: the share of the map's positive mass on it"
        )
    keys = ["method"] if shown["head"].nunique() == 1 else ["head", "method"]
    shown = shown.drop(columns=[] if len(keys) == 2 else ["head"])
    per_image = shown.copy()
    if "pointing" in per_image:
        per_image["pointing"] = per_image["pointing"].map({1.0: "hit", 0.0: "miss"})
    parts = [
        textwrap.fill(legend, width=QUALITY_TEXT_WIDTH),
        per_image.to_string(index=False, float_format=_three_digits),
    ]
    if shown["image"].nunique() > 1:
        means = shown.drop(columns="image").groupby(keys, sort=False).mean()
        parts += [
            f"mean over {shown['image'].nunique()} images:",
            means.to_string(float_format=_three_digits),
        ]
    return "\n".join(parts)


def _three_digits(value: float) -> str:
    return f"{value:.3f}"


def _maps(model, images, head, targets, methods, options: ExplainSettings):
    """The maps to draw, and the same as importance (higher = more important; occlusion
    as the drop it causes), ``{map: (N, H, W)}`` each, from the registry's heatmap methods."""
    maps: dict[str, np.ndarray] = {}
    importance: dict[str, np.ndarray] = {}
    for method in methods:
        if METHODS[method].kind != "map":
            continue
        progress = _progress_bar(images, options) if method == "occlusion" else None
        found = compute(
            method, model, images, head=head, targets=targets, settings=options, progress=progress
        )
        for note in found.notes:
            print(note)
        maps.update(found.drawn)
        importance.update(found.importance)
    return maps, importance


def _progress_bar(images, options: ExplainSettings):
    """A progress bar over occlusion's positions, as ``progress(done, total)``."""
    rows = len(range(0, images.shape[1], options.stride))
    bar = keras.utils.Progbar(
        len(images) * rows * len(range(0, images.shape[2], options.stride)), unit_name="position"
    )
    return lambda done, _: bar.update(done)


def map_labels(model, options: ExplainSettings, cams_drawn: bool) -> dict[str, str]:
    """What each drawn map measures, by map name (explain.py's colour bars, the inspection
    page's captions); a class activation map's (``cams_drawn``) names its layer, which a
    model without conv layers does not have."""
    patch = options.patch
    saliency_label = f"max |d {options.saliency_of} / d pixel| over channels"
    if options.saliency_smoothgrad:
        saliency_label = f"SmoothGrad ({options.saliency_smoothgrad} noisy copies) of {saliency_label}"
    if options.times_input:
        saliency_label += ", x input"
    labels = {
        "occlusion_prob": f"probability of the class, {patch}x{patch} square hidden",
        "occlusion_loss": f"loss, {patch}x{patch} square hidden",
        "saliency": saliency_label,
        "integrated_gradients": f"Integrated Gradients of the logit from the {options.ig_baseline} "
        f"baseline ({options.ig_steps} steps), summed over channels",
        "rise": f"RISE: probability of the class with the pixel shown ({options.rise_masks} random masks, "
        f"{options.fill} fill)",
    }
    if cams_drawn:
        for method, title in (("gradcam", "Grad-CAM"), ("gradcampp", "Grad-CAM++"), ("layercam", "LayerCAM")):
            labels[method] = f"{title} of {options.layer or default_layer(model)}"
            labels.update((f"{method}_{layer}", f"{title} of {layer}") for layer in options.layers)
    return labels


def _heatmaps(model, images, stems, titles, maps, options, out, suffix) -> int:
    if not maps:
        return 0
    labels = map_labels(model, options, any(method_of(name) in CAM_METHODS for name in maps))
    written = 0
    for method, values in maps.items():
        # gradients: a few extreme pixels would leave the rest of the map dark
        clip = SALIENCY_CLIP_PERCENTILE if method == "saliency" else None
        for index, stem in enumerate(stems):
            figure = plots.heatmap_figure(
                images[index], values[index], title=titles[index], label=labels[method], clip_percentile=clip
            )
            written += _save(out, f"{stem}_{method}{suffix}", figure, values[index])
    return written


def _layer_pictures(model, images, stems, methods, options, out, reference) -> int:
    """Activations per image and layer; filter images once per layer (they do not depend
    on the image), with their measures."""
    if "activations" not in methods and "filters" not in methods:
        return 0
    written = 0
    layers = options.layers or (default_layer(model),)
    for layer in layers:
        if "activations" in methods:
            maps = activations(model, images, layer=layer)
            for index, stem in enumerate(stems):
                tiles = np.moveaxis(maps[index], -1, 0) if maps.ndim == 4 else maps[index][:, None, None]
                figure = plots.tile_figure(tiles, title=f"{stem}: activations of {layer}")
                written += _save(out, f"{stem}_activations_{layer}", figure, maps[index])
        if "filters" in methods:
            written += _filter_pictures(model, layer, options, out, reference)
    if "filters" in methods:
        weights = first_layer_weights(model)
        figure = plots.tile_figure(weights, title="the first conv layer's kernels")
        written += _save(out, "filters_weights", figure, weights)
    return written


def _filter_pictures(model, layer, options, out, reference) -> int:
    """``filters_<layer>.png/.npy/.csv``: the chosen filters' images and their measures."""
    count = int(model.get_layer(layer).output.shape[-1])
    if options.filters == "all":
        chosen = list(range(count))
    else:
        chosen = (
            list(options.filters) if options.filters is not None else list(range(min(count, SHOWN_FILTERS)))
        )
    start = time.perf_counter()
    patterns = filter_patterns(
        model, layer=layer, filters=chosen, objective=options.filter_objective, images=reference.train
    )
    seconds = time.perf_counter() - start
    crop = receptive_field(model, layer) if options.filter_objective == "centre" else None
    rows = [{"filter": index} for index in chosen]
    dead = None
    if reference.test is not None:
        found = filter_measures(
            model,
            patterns,
            layer=layer,
            filters=chosen,
            images=reference.test,
            objective=options.filter_objective,
        )
        dead = found.dead
        for row, *values in zip(rows, found.dead, found.activation, found.percentile, found.structure):
            row.update(zip(FILTER_COLUMNS, values))
            row["above_percentile"] = bool(not row["dead"] and row["activation"] > row["percentile_99"])
        alive = ~found.dead
        above = int((found.activation > found.percentile)[alive].sum())
        structure = np.median(found.structure[alive]) if alive.any() else float("nan")
        print(
            f"filters of {layer}: {len(chosen)} images in {seconds:.1f} s; {int(found.dead.sum())} dead "
            f"(never active on {found.images} test images); {above} of {int(alive.sum())} living above the "
            f"{PERCENTILE:g}th percentile of their activations there; spatial structure median "
            f"{structure:.2f}"
        )
    else:
        print(f"filters of {layer}: {len(chosen)} images in {seconds:.1f} s ({reference.note})")
    what = "unit at the centre of the map" if options.filter_objective == "centre" else "mean over the map"
    title = (
        f"{layer}: the inputs that drive each filter's {what} hardest"
        + (" (cropped to its receptive field" if crop else " (")
        + ", each scaled to its own range)"
    )
    labels = [str(index) for index in chosen]
    figure = plots.filters_figure(patterns, title=title, labels=labels, dead=dead, crop=crop)
    runs.write_csv(out / f"filters_{layer}.csv", rows)
    return _save(out, f"filters_{layer}", figure, patterns) + 1


@dataclass(frozen=True)
class Reference:
    """Real images for the filter images: training images set their energy bound, test
    images the percentiles and which filters are dead (None, with ``note``, when the
    run's data cannot be read)."""

    train: np.ndarray | None = None
    test: np.ndarray | None = None
    note: str = ""
