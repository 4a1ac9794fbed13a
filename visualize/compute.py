"""The computations of the registry's heatmap methods (``visualize.methods.METHODS``).

One function per method, named ``<method>_method``, in one form:
``(model, images, *, head, targets, settings, progress=None) -> MethodMaps``. They call
the method modules (``visualize.occlusion``, ``visualize.saliency``,
``visualize.integrated``, ``visualize.rise``, ``visualize.gradcam``) with the options ``settings`` gives,
and return the maps as drawn and as importance (higher = more important). Run them
through :func:`visualize.methods.compute`.
"""

from __future__ import annotations

import time

import numpy as np

from visualize.gradcam import gradcam, gradcam_plus_plus, layercam
from visualize.integrated import integrated_gradients
from visualize.methods import ExplainSettings, MethodMaps
from visualize.occlusion import occlusion, training_mean_colour
from visualize.rise import rise
from visualize.saliency import saliency


def occlusion_method(model, images, *, head, targets, settings: ExplainSettings, progress=None) -> MethodMaps:
    """``occlusion_prob`` and ``occlusion_loss``: drawn as the class probability and its
    loss with a square hidden (per pixel the mean over the squares that hide it, or the
    square centred on it: ``settings.occlusion_spread``); as importance, the
    probability's drop and the loss's rise."""
    notes = []
    if settings.fill == "mean" and training_mean_colour(model) is None:
        notes.append("occlusion: this model stores no training mean colour; the squares are mid-grey (128)")
    start = time.perf_counter()
    result = occlusion(
        model,
        images,
        head=head,
        target=targets,
        patch=settings.patch,
        stride=settings.stride,
        fill=settings.fill,
        engine=settings.occlusion_engine,
        spread=settings.occlusion_spread,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    how = "incremental engine" if result.engine == "incremental" else "batched re-inference"
    if result.fallback_reason:
        how += f" (the incremental engine does not apply: {result.fallback_reason})"
    images = np.asarray(images)
    positions = len(images) * len(range(0, images.shape[1], settings.stride))
    positions *= len(range(0, images.shape[2], settings.stride))
    notes.append(f"occlusion: {how}, {positions} positions in {seconds:.2f} s")
    drop, rise = occlusion_importance(result)
    return MethodMaps(
        drawn={"occlusion_prob": result.probability, "occlusion_loss": result.loss},
        importance={"occlusion_prob": drop, "occlusion_loss": rise},
        notes=notes,
    )


def occlusion_importance(result) -> tuple[np.ndarray, np.ndarray]:
    """Occlusion maps (``visualize.occlusion.OcclusionMaps``) as importance: the drop of
    the class probability and the rise of its loss when the square is hidden."""
    clean = np.asarray(result.baseline_probability, np.float64)
    if result.baseline_loss is not None:
        clean_loss = np.asarray(result.baseline_loss, np.float64)
    else:  # maps made without it: -log p (inexact only where p rounds to 1)
        clean_loss = -np.log(np.maximum(clean, np.finfo(np.float32).tiny))
    drop = clean[:, None, None] - result.probability
    rise = result.loss - clean_loss[:, None, None]
    return drop.astype(np.float32), rise.astype(np.float32)


def _gradient(name: str, model, images, head, targets, **options) -> MethodMaps:
    values = saliency(model, images, head=head, target=targets, **options)
    return MethodMaps(drawn={name: values}, importance={name: values})


def saliency_method(model, images, *, head, targets, settings: ExplainSettings, progress=None) -> MethodMaps:
    """max |d loss (or logit) / d pixel| over channels, with SmoothGrad and x input as
    ``settings`` says (``saliency_of``, ``saliency_smoothgrad``, ``times_input``)."""
    return _gradient(
        "saliency",
        model,
        images,
        head,
        targets,
        of=settings.saliency_of,
        smoothgrad=settings.saliency_smoothgrad,
        times_input=settings.times_input,
    )


def smoothgrad_method(
    model, images, *, head, targets, settings: ExplainSettings, progress=None
) -> MethodMaps:
    """SmoothGrad of the loss over ``settings.smoothgrad`` noisy copies."""
    return _gradient("smoothgrad", model, images, head, targets, smoothgrad=settings.smoothgrad)


def saliency_logit_method(
    model, images, *, head, targets, settings: ExplainSettings, progress=None
) -> MethodMaps:
    """The plain gradient of the class's logit."""
    return _gradient("saliency_logit", model, images, head, targets, of="logit")


def gradient_x_input_method(
    model, images, *, head, targets, settings: ExplainSettings, progress=None
) -> MethodMaps:
    """|gradient of the loss x pixel value|."""
    return _gradient("gradient_x_input", model, images, head, targets, times_input=True)


def integrated_gradients_method(
    model, images, *, head, targets, settings: ExplainSettings, progress=None
) -> MethodMaps:
    """Integrated Gradients of the class's logit from ``settings.ig_baseline`` in
    ``settings.ig_steps`` points, summed over the colour channels (signed)."""
    values = integrated_gradients(
        model, images, head=head, target=targets, baseline=settings.ig_baseline, steps=settings.ig_steps
    )
    return MethodMaps(drawn={"integrated_gradients": values}, importance={"integrated_gradients": values})


def rise_method(model, images, *, head, targets, settings: ExplainSettings, progress=None) -> MethodMaps:
    """RISE over ``settings.rise_masks`` random masks, hidden pixels showing ``settings.fill``."""
    values = rise(model, images, head=head, target=targets, masks=settings.rise_masks, fill=settings.fill)
    return MethodMaps(drawn={"rise": values}, importance={"rise": values})


def _class_activation(name, function, model, images, head, targets, settings) -> MethodMaps:
    """A class activation map of each layer of ``settings.layers`` (none: the default
    layer): the map ``<name>`` for one layer, ``<name>_<layer>`` each for several."""
    layers = settings.layers or (None,)
    maps = {}
    for layer in layers:
        key = name if len(layers) <= 1 else f"{name}_{layer}"
        maps[key] = function(model, images, head=head, target=targets, layer=layer)
    return MethodMaps(drawn=maps, importance=dict(maps))


def gradcam_method(model, images, *, head, targets, settings: ExplainSettings, progress=None) -> MethodMaps:
    """Grad-CAM (``visualize.gradcam.gradcam``) of each layer of ``settings.layers``."""
    return _class_activation("gradcam", gradcam, model, images, head, targets, settings)


def gradcampp_method(model, images, *, head, targets, settings: ExplainSettings, progress=None) -> MethodMaps:
    """Grad-CAM++ (``visualize.gradcam.gradcam_plus_plus``) of each layer of ``settings.layers``."""
    return _class_activation("gradcampp", gradcam_plus_plus, model, images, head, targets, settings)


def layercam_method(model, images, *, head, targets, settings: ExplainSettings, progress=None) -> MethodMaps:
    """LayerCAM (``visualize.gradcam.layercam``) of each layer of ``settings.layers``."""
    return _class_activation("layercam", layercam, model, images, head, targets, settings)
