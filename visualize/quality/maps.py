"""Importance maps of the registry's heatmap methods for the quality measures:
which maps a model offers (``available_methods``) and making them (``explanation_maps``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import keras
import numpy as np

from visualize.gradcam import conv_layers, default_layer
from visualize.methods import (
    MEASURED,
    MEASURED_MAPS,
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
    """Every method :func:`explanation_maps` measures on ``model`` by default choice
    (besides, ``gradcam_<layer>`` of any layer with feature maps, as explain.py draws)."""
    layers = gradcam_method_layers(model)
    plain = [method for method in MEASURED_MAPS if method != "gradcam" or layers]
    return (*plain, *SALIENCY_VARIANTS, *[name for name in layers if name != "gradcam"])


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

    ``occlusion_prob`` is the probability's drop when the square centred on a pixel is
    hidden, ``occlusion_loss`` the loss's rise; ``saliency`` is max |d loss / d pixel|,
    ``saliency_logit`` the same of the logit, ``smoothgrad`` SmoothGrad of the loss,
    ``gradient_x_input`` |gradient x pixel value| (``saliency`` follows
    ``settings``' saliency options); ``gradcam`` Grad-CAM of the default (or the first
    chosen) layer and ``gradcam_<layer>`` of that layer. Each is made by its method in
    the registry (``visualize.methods``).
    """
    settings = settings or MEASURED
    images = as_images(images)
    head = resolve_head(model, head)
    targets = resolve_targets(model, images, head, target)
    _check_methods(model, methods)
    layers = gradcam_method_layers(model)
    if settings.layer:
        layers["gradcam"] = settings.layer
    maps: dict[str, np.ndarray] = {}
    for name in methods:
        if name in maps:  # occlusion makes two maps at once
            continue
        method = method_of(name)
        layer = layers.get(name) or _gradcam_layer(model, name)
        chosen = replace(settings, layers=(layer,)) if method == "gradcam" else settings
        found = compute_method(method, model, images, head=head, targets=targets, settings=chosen).importance
        maps.update({name: found["gradcam"]} if method == "gradcam" else found)
    return {method: maps[method].astype(np.float32) for method in methods}


def _gradcam_layer(model: keras.Model, name: str) -> str | None:
    """The layer of a ``gradcam_<layer>`` map (explain.py --layer draws any layer with
    feature maps), or None for another name or a layer the model does not have."""
    layer = name.removeprefix("gradcam_")
    if layer == name or layer not in {item.name for item in model.layers}:
        return None
    return layer


def _check_methods(model: keras.Model, methods: Sequence[str]) -> None:
    known = available_methods(model)
    if not methods:
        raise ValueError(f"no explanation method given; this model offers {', '.join(known)}.")
    unknown = [method for method in methods if method not in known and not _gradcam_layer(model, method)]
    if unknown:
        raise ValueError(
            f"unknown explanation method {', '.join(unknown)}; this model offers {', '.join(known)}."
        )


# ---------------------------------------------------------------- ground truth
