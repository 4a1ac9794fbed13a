"""What explain.py does for a batch of images: run the chosen methods for the chosen
heads and write one PNG and the raw arrays (.npy) per image, method and variant."""

from __future__ import annotations

from collections.abc import Sequence
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
from visualize.targets import logits_model, predicted_classes

# Filters drawn by the filters method (the first ones of the layer).
SHOWN_FILTERS = 32


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
    *,
    methods: Sequence[str],
    head: str | None,
    target: int | None,
    truth: dict[str, np.ndarray] | None,
    layer: str | None,
    patch: int,
    stride: int,
    fill,
    out: Path,
) -> int:
    """Run ``methods`` on ``images`` and write the files; returns how many were written."""
    out.mkdir(parents=True, exist_ok=True)
    multi = len(classes) > 1
    written = 0
    heads = [head] if head else list(classes)
    for name in heads:
        logits = logits_model(model, name).predict(images.astype(np.float32), verbose=0)
        predicted = predicted_classes(logits)
        true = truth[name] if truth else None
        targets = (
            np.full(len(images), target) if target is not None else (true if true is not None else predicted)
        )
        suffix = f"_{name}" if multi else ""
        titles = [
            _title(
                stem,
                name if multi else None,
                classes[name],
                predicted[i],
                targets[i],
                None if true is None else true[i],
            )
            for i, stem in enumerate(stems)
        ]
        written += _heatmaps(
            model, images, stems, titles, name, targets, methods, layer, patch, stride, fill, out, suffix
        )
    written += _layer_pictures(model, images, stems, methods, layer, out)
    return written


def _heatmaps(
    model, images, stems, titles, head, targets, methods, layer, patch, stride, fill, out, suffix
) -> int:
    written = 0
    maps: dict[str, np.ndarray] = {}
    if "occlusion" in methods:
        total = len(images) * len(range(0, images.shape[1], stride)) * len(range(0, images.shape[2], stride))
        bar = keras.utils.Progbar(total, unit_name="position")
        result = occlusion(model, images, head=head, target=targets, patch=patch, stride=stride, fill=fill,
                           progress=lambda done, _: bar.update(done))  # fmt: skip
        maps["occlusion_prob"], maps["occlusion_loss"] = result.probability, result.loss
    if "saliency" in methods:
        maps["saliency"] = saliency(model, images, head=head, target=targets)
    if "gradcam" in methods:
        maps["gradcam"] = gradcam(model, images, head=head, target=targets, layer=layer)
    labels = {
        "occlusion_prob": f"probability of the class, {patch}x{patch} square hidden",
        "occlusion_loss": f"loss, {patch}x{patch} square hidden",
        "saliency": "max |d loss / d pixel| over channels",
        "gradcam": f"Grad-CAM of {layer or default_layer(model)}",
    }
    for method, values in maps.items():
        for index, stem in enumerate(stems):
            figure = draw.heatmap_figure(
                images[index], values[index], title=titles[index], label=labels[method]
            )
            written += _save(out, f"{stem}_{method}{suffix}", figure, values[index])
    return written


def _layer_pictures(model, images, stems, methods, layer, out) -> int:
    written = 0
    layer = layer or default_layer(model)
    if "activations" in methods:
        maps = activations(model, images, layer=layer)
        for index, stem in enumerate(stems):
            tiles = np.moveaxis(maps[index], -1, 0) if maps.ndim == 4 else maps[index][:, None, None]
            figure = draw.tile_figure(tiles, title=f"{stem}: activations of {layer}")
            written += _save(out, f"{stem}_activations_{layer}", figure, maps[index])
    if "filters" in methods:  # the same pictures for every image, saved under each image's name
        count = int(model.get_layer(layer).output.shape[-1])
        patterns = filter_patterns(model, layer=layer, filters=range(min(count, SHOWN_FILTERS)))
        weights = first_layer_weights(model)
        for stem in stems:
            figure = draw.tile_figure(patterns, title=f"images that excite the filters of {layer} most")
            written += _save(out, f"{stem}_filters_{layer}", figure, patterns)
            figure = draw.tile_figure(weights, title="the first conv layer's kernels")
            written += _save(out, f"{stem}_filters_weights", figure, weights)
    return written
