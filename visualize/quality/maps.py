"""Importance maps of the registry's heatmap methods for the quality measures:
which maps a model offers (``available_methods``) and making them (``explanation_maps``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import keras
import numpy as np

from visualize.gradcam import conv_layers, default_layer
from visualize.methods import (
    CAM_METHODS,
    MEASURED,
    MEASURED_MAPS,
    OTHER_MAPS,
    SALIENCY_VARIANTS,
    ExplainSettings,
    method_of,
)
from visualize.methods import compute as compute_method
from visualize.targets import (
    as_images,
    resolve_head,
    resolve_targets,
)


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
    """Every map :func:`explanation_maps` measures on ``model`` by default choice: the
    measured maps, the saliency variants, Grad-CAM of every conv block, the other
    methods (:data:`~visualize.methods.OTHER_MAPS`) and LayerCAM of every conv block
    (besides, ``<cam>_<layer>`` of any layer with feature maps, as explain.py draws)."""
    layers = gradcam_method_layers(model)
    blocks = [name.removeprefix("gradcam_") for name in layers if name != "gradcam"]
    plain = [method for method in MEASURED_MAPS if method != "gradcam" or layers]
    others = [method for method in OTHER_MAPS if method not in CAM_METHODS or layers]
    per_block = [f"gradcam_{layer}" for layer in blocks] + [f"layercam_{layer}" for layer in blocks]
    return (*plain, *SALIENCY_VARIANTS, *others, *per_block)


def explanation_maps(
    model: keras.Model,
    images,
    methods: Sequence[str],
    *,
    head: str | None = None,
    target=None,
    settings: ExplainSettings | None = None,
) -> dict[str, np.ndarray]:
    """Importance maps (higher = more important), float32 (N, H, W), per method.

    ``occlusion_prob`` is the probability's drop when a square that covers the pixel is
    hidden (``settings.occlusion_spread``), ``occlusion_loss`` the loss's rise;
    ``saliency`` is max |d loss / d pixel|, ``saliency_logit`` the same of the logit,
    ``smoothgrad`` SmoothGrad of the loss, ``gradient_x_input`` |gradient x pixel value| (``saliency`` follows
    ``settings``' saliency options); ``integrated_gradients`` the attributions summed
    over channels; ``gradcam``, ``gradcampp``, ``layercam`` the class activation map of
    the default (or the first chosen) layer and ``<cam>_<layer>`` of that layer. Each is
    made by its method in the registry (``visualize.methods``).
    """
    settings = settings or MEASURED
    images = as_images(images)
    head = resolve_head(model, head)
    targets = resolve_targets(model, images, head, target)
    _check_methods(model, methods)
    maps: dict[str, np.ndarray] = {}
    for name in methods:
        if name in maps:  # occlusion makes two maps at once
            continue
        method = method_of(name)
        if method in CAM_METHODS:
            layer = _cam_layer(model, name) or settings.layer or default_layer(model)
            chosen = replace(settings, layers=(layer,))
            found = compute_method(method, model, images, head=head, targets=targets, settings=chosen)
            maps[name] = found.importance[method]
        else:
            found = compute_method(method, model, images, head=head, targets=targets, settings=settings)
            maps.update(found.importance)
    return {method: maps[method].astype(np.float32) for method in methods}


def _cam_layer(model: keras.Model, name: str) -> str | None:
    """The layer of a ``<cam>_<layer>`` map (``gradcam_relu1``; explain.py --layer draws
    any layer with feature maps), or None for another name or a layer the model does
    not have."""
    for method in CAM_METHODS:
        layer = name.removeprefix(method + "_")
        if layer != name:
            return layer if layer in {item.name for item in model.layers} else None
    return None


def _check_methods(model: keras.Model, methods: Sequence[str]) -> None:
    known = available_methods(model)
    if not methods:
        raise ValueError(f"no explanation method given; this model offers {', '.join(known)}.")
    unknown = [method for method in methods if method not in known and not _cam_layer(model, method)]
    if unknown:
        raise ValueError(
            f"unknown explanation method {', '.join(unknown)}; this model offers {', '.join(known)}."
        )


# ---------------------------------------------------------------- ground truth
