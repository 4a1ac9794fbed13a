"""The explanation methods in one registry, and the one settings type they share.

explain.py (``--method``, its ``--help`` and flag checks), the report's quality section
(``app.report.build.measure_explanations``), the quality measures (``visualize.quality``),
the quality bench and the inspection page (``app.page``) choose their methods from
:data:`METHODS` and describe how to run them with :class:`ExplainSettings`;
:func:`compute` runs one.

Three kinds of method:

* ``map``: a heatmap per image for one head and class (occlusion, RISE, saliency and
  its variants, Integrated Gradients, and the class activation maps of a layer: Grad-CAM,
  Grad-CAM++, LayerCAM). Each is one function of :mod:`visualize.compute`
  (``<name>_method``) with the form
  ``(model, images, *, head, targets, settings, progress=None) -> MethodMaps``: the
  maps as drawn and the same as *importance* (higher = more important; occlusion as
  the drop it causes), which is what the quality measures take.
* ``layer``: per image and layer (activations).
* ``model``: per layer, with no image (filter visualisation).

Measured maps have names of their own: a method's name, except occlusion (two maps:
``occlusion_prob`` and ``occlusion_loss``) and a class activation map of a chosen layer
(``gradcam_<layer>``, ``gradcampp_<layer>``, ``layercam_<layer>``); :func:`method_of`
maps a map's name back to its method.

This module imports no TensorFlow (nor NumPy): explain.py's ``--help`` and flag
checks read it and stay at 0.3 s instead of about 8 s with TensorFlow (both measured on
2026-12-03); :func:`compute` imports the computations on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Occlusion: what fills the hidden square, and how the maps are computed (the same maps).
FILLS = ("mean", "gray", "zero", "blur")
ENGINES = ("auto", "incremental", "batched")
# How the squares' values become a map of pixels (visualize.occlusion): the mean over
# every square that hides the pixel, or the value of the square centred on it.
SPREADS = ("window", "centre")
# Saliency: the gradient of the class's loss or of its logit.
SALIENCY_OF = ("loss", "logit")
# Filter visualisation: maximise the unit at the centre of the map, or the map's mean.
FILTER_OBJECTIVES = ("centre", "mean")
# SmoothGrad's noisy copies (explain.py's saliency by default, and the measured method
# ``smoothgrad``): on the line model the maximum of SmoothGrad-16 lay on the line for
# 61.5% of the images, against 29% for the plain gradient.
SMOOTHGRAD_COPIES = 16
KINDS = ("map", "layer", "model")
# Integrated Gradients: points on the path, and the baseline image (one of FILLS or a
# pixel value; see visualize.integrated for why the mean colour and not black).
IG_STEPS = 32
IG_BASELINE = "mean"
# RISE: random masks per image, grid cells per side, the share of cells shown (the
# paper's 0.5; its 4000-8000 masks were for 224-pixel ImageNet images).
RISE_MASKS = 2000
RISE_CELLS = 7
RISE_KEEP = 0.5


@dataclass(frozen=True)
class ExplainSettings:
    """How the methods run (explain.py's flags, in the same units; the defaults are its).

    Attributes:
        layers: the layers of Grad-CAM, activations and filters (empty: the default
            layer, the last feature maps); Grad-CAM's measured map ``gradcam`` uses the
            first.
        patch: occlusion square side in pixels (None: a tenth of the image side,
            ``visualize.occlusion.default_patch``).
        stride: occlusion stride (every S-th row and column).
        fill: occlusion fill, one of :data:`FILLS` or a pixel value 0-255.
        occlusion_engine: one of :data:`ENGINES` (the same maps).
        occlusion_spread: one of :data:`SPREADS`: each pixel the mean over the squares
            that hide it, or the value of the square centred on it.
        saliency_of: the method ``saliency``: gradient of the ``loss`` or the ``logit``.
        saliency_smoothgrad: the method ``saliency``: SmoothGrad's noisy copies (0: the
            plain gradient).
        times_input: the method ``saliency``: gradient x input.
        smoothgrad: the measured method ``smoothgrad``: its noisy copies.
        filters: filter indices to draw, ``"all"``, or None (the first ones).
        filter_objective: one of :data:`FILTER_OBJECTIVES`.
        ig_steps: Integrated Gradients: points on the path from the baseline.
        ig_baseline: Integrated Gradients: the baseline, one of :data:`FILLS` or a pixel
            value 0-255.
        rise_masks: RISE: random masks per image (what hidden pixels show: ``fill``).
    """

    layers: tuple[str, ...] = ()
    patch: int | None = None
    stride: int = 1
    fill: Any = "mean"
    occlusion_engine: str = "auto"
    occlusion_spread: str = "window"
    saliency_of: str = "loss"
    saliency_smoothgrad: int = SMOOTHGRAD_COPIES
    times_input: bool = False
    smoothgrad: int = SMOOTHGRAD_COPIES
    filters: tuple[int, ...] | str | None = None
    filter_objective: str = "centre"
    ig_steps: int = IG_STEPS
    ig_baseline: Any = IG_BASELINE
    rise_masks: int = RISE_MASKS

    @property
    def layer(self) -> str | None:
        """The first chosen layer (Grad-CAM's measured map ``gradcam``), or None."""
        return self.layers[0] if self.layers else None


# The settings of the quality measures (report, bench): ``saliency`` is the plain
# gradient of the loss, and SmoothGrad is measured as a method of its own.
MEASURED = ExplainSettings(saliency_smoothgrad=0)


@dataclass(frozen=True)
class Method:
    """One explanation method.

    Attributes:
        name: as typed (``explain.py --method``) and shown in the quality tables.
        kind: ``map``, ``layer`` or ``model`` (see the module docstring).
        summary: one line on what it shows.
        drawn: explain.py offers it (the others are measured variants).
        layered: it reads the feature maps of a chosen layer (``--layer``).
    """

    name: str
    kind: str
    summary: str
    drawn: bool = True
    layered: bool = False


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("occlusion", "map", "the class probability and loss with a square hidden at each position"),
        Method("saliency", "map", "the gradient of the class's loss (or logit) with respect to each pixel"),
        Method(
            "gradcam",
            "map",
            "Grad-CAM: a conv layer's feature maps weighted by the class's gradient",
            layered=True,
        ),
        Method(
            "gradcampp",
            "map",
            "Grad-CAM++: like Grad-CAM, each map weighted by its positive gradients, strong places first",
            layered=True,
        ),
        Method(
            "layercam",
            "map",
            "LayerCAM: the feature maps weighted position by position by their positive gradients",
            layered=True,
        ),
        Method(
            "integrated_gradients",
            "map",
            "Integrated Gradients: each pixel's share of the logit's change from a baseline image",
        ),
        Method(
            "rise", "map", "RISE: the class probability expected when the pixel is shown, over random masks"
        ),
        Method("activations", "layer", "a layer's feature maps for the image", layered=True),
        Method(
            "filters",
            "model",
            "the input that drives each filter of a layer hardest (gradient ascent)",
            layered=True,
        ),
        Method("smoothgrad", "map", "saliency averaged over noisy copies of the image (SmoothGrad)", False),
        Method("saliency_logit", "map", "the gradient of the class's logit", False),
        Method("gradient_x_input", "map", "|gradient x pixel value|", False),
    )
}
# explain.py's --method choices and default, and the heatmaps among them.
EXPLAIN_METHODS = tuple(name for name, method in METHODS.items() if method.drawn)
HEATMAP_METHODS = tuple(name for name in EXPLAIN_METHODS if METHODS[name].kind == "map")
EXPLAIN_DEFAULT = ("occlusion", "saliency", "gradcam")
# The maps the quality measures take by default (report, bench): what explain.py draws
# plus SmoothGrad, the usual repair of noisy gradients; and the variants measured besides.
MEASURED_MAPS = ("occlusion_prob", "occlusion_loss", "saliency", "smoothgrad", "gradcam")
SALIENCY_VARIANTS = ("saliency_logit", "gradient_x_input")
OCCLUSION_MAPS = ("occlusion_prob", "occlusion_loss")
# The class activation maps: heatmaps of a layer's feature maps (``<name>_<layer>``).
CAM_METHODS = tuple(name for name, method in METHODS.items() if method.kind == "map" and method.layered)
# The methods added to the default ones: measured by the quality bench (with
# SALIENCY_VARIANTS) and in the report's quality table (REPORTED_MAPS).
OTHER_MAPS = ("integrated_gradients", "rise", "gradcampp", "layercam")
REPORTED_MAPS = MEASURED_MAPS + OTHER_MAPS


def method_of(map_name: str) -> str:
    """The method that makes a measured map: ``occlusion_prob`` -> ``occlusion``,
    ``gradcam_relu2`` -> ``gradcam``, ``layercam_relu1`` -> ``layercam``, ``saliency``
    -> ``saliency``."""
    if map_name in OCCLUSION_MAPS:
        return "occlusion"
    if map_name in METHODS and METHODS[map_name].kind == "map":
        return map_name
    for name in CAM_METHODS:
        if map_name.startswith(name + "_"):
            return name
    raise ValueError(f"no method makes a map named {map_name!r}.")


def parse_methods(text: str, choices: tuple[str, ...] = EXPLAIN_METHODS) -> list[str]:
    """A comma list of method names, or ``all``, checked against ``choices``."""
    chosen = list(choices) if text == "all" else [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in choices]
    if unknown or not chosen:
        raise ValueError(
            f"unknown method {', '.join(unknown) or text!r}; choose from {', '.join(choices)} or all."
        )
    return chosen


@dataclass
class MethodMaps:
    """What a ``map`` method returns: float32 (N, H, W) arrays by map name.

    Attributes:
        drawn: the maps as explain.py draws them (occlusion: the probability and the
            loss with the square hidden).
        importance: the same maps with higher meaning more important (occlusion: the
            probability's drop and the loss's rise), what ``visualize.quality`` measures.
        notes: how they were made, for the terminal (occlusion's engine and time).
    """

    drawn: dict[str, Any]
    importance: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def compute(
    name: str,
    model,
    images,
    *,
    head: str,
    targets,
    settings: ExplainSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MethodMaps:
    """Run the ``map`` method ``name`` (see :data:`METHODS`) on ``images``, explaining
    class ``targets[i]`` of ``head`` for image ``i``; ``progress(done, total)`` is called
    by methods that take long (occlusion)."""
    method = METHODS.get(name)
    if method is None or method.kind != "map":
        maps = [item for item, known in METHODS.items() if known.kind == "map"]
        raise ValueError(f"{name!r} is not a heatmap method; the heatmap methods are {', '.join(maps)}.")
    from visualize import compute as computations  # TensorFlow: on first use (see the module docstring)

    function = getattr(computations, f"{name}_method")
    settings = settings or ExplainSettings()
    return function(model, images, head=head, targets=targets, settings=settings, progress=progress)
