"""What explain.py does for a batch of images: run the chosen methods for the chosen
heads and write one PNG and the raw arrays (.npy) per image, method and variant, and
``explained.csv`` (per image and head: the predicted, true and explained class)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from fruitcnn import plots, runs
from visualize import draw
from visualize.activations import activations
from visualize.filters import filter_patterns, first_layer_weights
from visualize.gradcam import default_layer, gradcam
from visualize.occlusion import occlusion
from visualize.saliency import saliency

# Filters drawn by the filters method when none are chosen (the first ones of the layer).
SHOWN_FILTERS = 32
EXPLAINED_FILE = "explained.csv"


@dataclass(frozen=True)
class Options:
    """The method settings of explain.py (see its --help)."""

    layer: str | None = None
    patch: int = 10
    stride: int = 1
    fill: object = "mean"
    occlusion_engine: str = "auto"
    saliency_of: str = "loss"
    smoothgrad: int = 0
    times_input: bool = False
    filters: tuple[int, ...] | None = None


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
    options: Options,
    out: Path,
) -> int:
    """Run ``methods`` on ``images`` for ``head`` (default: every head) and write the
    files; returns how many were written. ``probabilities`` are the model's, per head
    (``visualize.targets.class_probabilities``): they give the predicted classes."""
    out.mkdir(parents=True, exist_ok=True)
    multi = len(classes) > 1
    written, rows = 0, []
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
        written += _heatmaps(model, images, stems, titles, name, targets, methods, options, out, suffix)
    written += _layer_pictures(model, images, stems, methods, options, out)
    runs.write_csv(out / EXPLAINED_FILE, rows)
    return written + 1


def _maps(model, images, head, targets, methods, options) -> dict[str, np.ndarray]:
    maps: dict[str, np.ndarray] = {}
    if "occlusion" in methods:
        rows = len(range(0, images.shape[1], options.stride))
        total = len(images) * rows * len(range(0, images.shape[2], options.stride))
        bar = keras.utils.Progbar(total, unit_name="position")
        start = time.perf_counter()
        result = occlusion(
            model,
            images,
            head=head,
            target=targets,
            patch=options.patch,
            stride=options.stride,
            fill=options.fill,
            engine=options.occlusion_engine,
            progress=lambda done, _: bar.update(done),
        )
        seconds = time.perf_counter() - start
        how = "incremental engine" if result.engine == "incremental" else "batched re-inference"
        if result.fallback_reason:
            how += f" (the incremental engine does not apply: {result.fallback_reason})"
        print(f"occlusion: {how}, {total} positions in {seconds:.2f} s")
        maps["occlusion_prob"], maps["occlusion_loss"] = result.probability, result.loss
    if "saliency" in methods:
        maps["saliency"] = saliency(
            model,
            images,
            head=head,
            target=targets,
            of=options.saliency_of,
            smoothgrad=options.smoothgrad,
            times_input=options.times_input,
        )
    if "gradcam" in methods:
        maps["gradcam"] = gradcam(model, images, head=head, target=targets, layer=options.layer)
    return maps


def _labels(model, options, gradcam_drawn: bool) -> dict[str, str]:
    """Colour-bar labels: what each map measures (Grad-CAM's names its layer, which a
    model without conv layers does not have)."""
    patch = options.patch
    saliency_label = f"max |d {options.saliency_of} / d pixel| over channels"
    if options.smoothgrad:
        saliency_label += f", SmoothGrad of {options.smoothgrad}"
    if options.times_input:
        saliency_label += ", x input"
    labels = {
        "occlusion_prob": f"probability of the class, {patch}x{patch} square hidden",
        "occlusion_loss": f"loss, {patch}x{patch} square hidden",
        "saliency": saliency_label,
    }
    if gradcam_drawn:
        labels["gradcam"] = f"Grad-CAM of {options.layer or default_layer(model)}"
    return labels


def _heatmaps(model, images, stems, titles, head, targets, methods, options, out, suffix) -> int:
    maps = _maps(model, images, head, targets, methods, options)
    if not maps:
        return 0
    labels = _labels(model, options, "gradcam" in maps)
    written = 0
    for method, values in maps.items():
        for index, stem in enumerate(stems):
            figure = draw.heatmap_figure(
                images[index], values[index], title=titles[index], label=labels[method]
            )
            written += _save(out, f"{stem}_{method}{suffix}", figure, values[index])
    return written


def _layer_pictures(model, images, stems, methods, options, out) -> int:
    if "activations" not in methods and "filters" not in methods:
        return 0
    written = 0
    layer = options.layer or default_layer(model)
    if "activations" in methods:
        maps = activations(model, images, layer=layer)
        for index, stem in enumerate(stems):
            tiles = np.moveaxis(maps[index], -1, 0) if maps.ndim == 4 else maps[index][:, None, None]
            figure = draw.tile_figure(tiles, title=f"{stem}: activations of {layer}")
            written += _save(out, f"{stem}_activations_{layer}", figure, maps[index])
    if "filters" in methods:  # the same pictures for every image, saved under each image's name
        count = int(model.get_layer(layer).output.shape[-1])
        chosen = (
            list(options.filters) if options.filters is not None else list(range(min(count, SHOWN_FILTERS)))
        )
        patterns = filter_patterns(model, layer=layer, filters=chosen)
        weights = first_layer_weights(model)
        for stem in stems:
            title = f"images that excite the filters of {layer} most"
            figure = draw.tile_figure(patterns, title=title, labels=[str(index) for index in chosen])
            written += _save(out, f"{stem}_filters_{layer}", figure, patterns)
            figure = draw.tile_figure(weights, title="the first conv layer's kernels")
            written += _save(out, f"{stem}_filters_weights", figure, weights)
    return written
