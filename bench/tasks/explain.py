"""The occlusion task: incremental occlusion of a 100x100 image by a Fruits-360-sized
model against plain batched re-inference of every occluded copy (speed and exactness,
for several patches and strides), explain.py's batched engine, and the times of the
other heatmap methods (saliency, Grad-CAM, Grad-CAM++, LayerCAM, Integrated Gradients:
single and batched; RISE: single).

TensorFlow and the modules that load it (5-20 s) are imported in the functions that use
them, so that ``python bench/run.py --help`` and argument errors answer at once.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from bench import common
from fruitcnn.config import PRESETS, ArchConfig, parse_layers, preset
from fruitcnn.recipes import photo_layers

# The explanation benchmark: a Fruits-360-sized model (100x100x3, 24 classes, seeded
# random weights with the logits scaled up so the softmax is far from uniform and an
# inexact map would show), occlusion for patches 5/10/20 and strides 1/2 (headline:
# patch 10, stride 1, 10,000 positions), and gradient timings.
_EXPLAIN_LAYERS = (
    "conv(32,3) bn relu maxpool(2) conv(64,3) bn relu maxpool(2) conv(128,3) bn relu maxpool(2) "
    "flatten fc(128) relu"
)
_EXPLAIN_SHAPE, _EXPLAIN_CLASSES, _EXPLAIN_PATCH, _EXPLAIN_LOGIT_SCALE = (100, 100, 3), 24, 10, 20.0
_OCCLUSION_GRID = [(patch, stride) for stride in (1, 2) for patch in (5, 10, 20)]
# More networks at patch 10, stride 1 (JSON key: layers): the `fruits` preset, and the
# photo recipe's network for 100-px photos (what train.py builds for Fruits-360 without
# --arch; fruitcnn.recipes) at width 24, the recipe's choice for Fruits-360 in float32.
_OTHER_MODELS = {"fruits_preset": "fruits", "photo_network": photo_layers(24, 100)}
# The goal of the incremental engine at patch 10, stride 1 (issue 7).
_GOAL_SPEEDUP, _GOAL_S = 20.0, 0.3
_GRADIENT_REPEATS, _GRADIENT_BATCH, _INCREMENTAL_ROUNDS, _RISE_REPEATS = 20, 64, 5, 3


def _explain_model(layers: str | None = None):
    """The benchmark's 100x100 model (``_EXPLAIN_LAYERS``, a preset's name or another
    layer list): seeded random weights, logits scaled up."""
    from fruitcnn.model import build_model
    from heads import single_head_specs

    specs = single_head_specs([f"class{index}" for index in range(_EXPLAIN_CLASSES)])
    if layers in PRESETS:
        arch = preset(layers)
    else:
        arch = ArchConfig(name="occlusion-bench", layers=parse_layers(layers or _EXPLAIN_LAYERS))
    model = build_model(arch, input_shape=_EXPLAIN_SHAPE, heads=specs, seed=0)
    logits = model.get_layer("class_logits")
    logits.kernel.assign(logits.kernel * _EXPLAIN_LOGIT_SCALE)
    return model


def _runner_up(model, image: np.ndarray) -> int:
    """The second most likely class: its probability moves both ways under occlusion,
    and its loss (-log p) shows every change of the logits."""
    return int(np.argsort(model.predict(image[None], verbose=0)["class"][0])[-2])


def _batched_reference(model, image: np.ndarray, fill: np.ndarray, target: int, patch: int, stride: int):
    """Plain batched re-inference: every occluded copy built in NumPy, predicted in
    batches of 256 with one compiled forward pass (no XLA); returns the probability on
    the grid of evaluated centres and the seconds it took (one run: 10-40 s)."""
    import tensorflow as tf

    height, width = image.shape[:2]
    forward = tf.function(lambda batch: model(batch, training=False)["class"])
    half = patch // 2
    rows, columns = range(0, height, stride), range(0, width, stride)
    centres = [(row, column) for row in rows for column in columns]
    forward(tf.constant(np.repeat(image[None], 256, axis=0)))
    forward(tf.constant(np.repeat(image[None], len(centres) % 256 or 256, axis=0)))
    start = time.perf_counter()
    values = []
    for first in range(0, len(centres), 256):
        batch = np.repeat(image[None], len(centres[first : first + 256]), axis=0)
        for copy, (row, column) in zip(batch, centres[first : first + 256]):
            top, left = max(row - half, 0), max(column - half, 0)
            copy[top : max(row - half + patch, 0), left : max(column - half + patch, 0)] = fill
        values.append(forward(tf.constant(batch)).numpy()[:, target])
    return np.concatenate(values).reshape(len(rows), len(columns)), time.perf_counter() - start


def _gradient_milliseconds(function, model, images) -> dict[str, float]:
    """ms per image of a compiled explanation, one image at a time and batched."""
    function(model, images[:1], target=0)  # compile both shapes first
    function(model, images, target=0, batch_size=_GRADIENT_BATCH)
    start = time.perf_counter()
    for _ in range(_GRADIENT_REPEATS):
        function(model, images[:1], target=0)
    single = (time.perf_counter() - start) / _GRADIENT_REPEATS * 1000
    start = time.perf_counter()
    function(model, images, target=0, batch_size=_GRADIENT_BATCH)
    batched = (time.perf_counter() - start) / len(images) * 1000
    return {"single_ms": round(single, 2), "batched_ms_per_image": round(batched, 3)}


def _rise_milliseconds(function, model, image) -> float:
    """ms of RISE for one image (its 2,000 masked copies are its batch), compiled first."""
    function(model, image[None], target=0)
    start = time.perf_counter()
    for _ in range(_RISE_REPEATS):
        function(model, image[None], target=0)
    return round((time.perf_counter() - start) / _RISE_REPEATS * 1000, 1)


def _occlusion_case(model, image, fill, target: int, patch: int, stride: int, peak: float) -> dict:
    """Incremental engine (best of several, compiled first) against the batched reference
    (one run), both maps compared: probability and loss."""
    from fruitcnn.model import flops_per_image
    from visualize.occlusion import incremental_occluder, occlusion

    def incremental():
        # each square's own value (spread "centre"), compared square by square with the reference
        options = {"patch": patch, "stride": stride, "target": target, "spread": "centre"}
        return occlusion(model, image, engine="incremental", **options)

    first = time.perf_counter()
    maps = incremental()  # builds the geometry and traces the passes
    first_s = time.perf_counter() - first
    seconds = []
    for _ in range(_INCREMENTAL_ROUNDS):
        start = time.perf_counter()
        maps = incremental()
        seconds.append(time.perf_counter() - start)
    reference, reference_s = _batched_reference(model, image, fill, target, patch, stride)
    incremental_s = min(seconds)
    positions = reference.size
    work = (
        2 * incremental_occluder(model, "class", image.shape, patch, stride)[0].multiply_adds
    )  # the one timed
    reference_loss = -np.log(reference.astype(np.float64))
    return {
        "patch": patch,
        "stride": stride,
        "positions": positions,
        "incremental_s": round(incremental_s, 3),
        "incremental_median_s": round(float(np.median(seconds)), 3),
        "first_call_s": round(first_s, 2),
        "batched_reference_s": round(reference_s, 2),
        "speedup": round(reference_s / incremental_s, 1),
        "max_abs_difference": float(np.abs(maps.probability[0][::stride, ::stride] - reference).max()),
        "max_loss_difference": float(np.abs(maps.loss[0][::stride, ::stride] - reference_loss).max()),
        "map_range": round(float(np.ptp(reference)), 3),
        "work_ratio": round(flops_per_image(model) * positions / work, 1),
        "incremental_gflops": round(work / incremental_s / 1e9, 1),
        "peak_fraction": round(work / incremental_s / 1e9 / peak, 3),
    }


def _other_model_case(layers: str, image: np.ndarray) -> dict:
    """Incremental (best of 3) against explain.py's batched engine and against the plain
    batched re-inference of the headline (one run each, compiled first), on another
    network (``_explain_model``'s ``layers``), patch 10, stride 1."""
    from visualize.occlusion import fill_image, occlusion

    model = _explain_model(layers)
    target = _runner_up(model, image)
    seconds, maps = {}, {}
    options = {"patch": _EXPLAIN_PATCH, "target": target, "spread": "centre"}
    for engine, rounds in (("incremental", 3), ("batched", 1)):
        maps[engine] = occlusion(model, image, engine=engine, **options)
        seconds[engine] = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            occlusion(model, image, engine=engine, **options)
            seconds[engine] = min(seconds[engine], time.perf_counter() - start)
    fill = fill_image(model, image, "mean", _EXPLAIN_PATCH)[0, 0]
    reference, reference_s = _batched_reference(model, image, fill, target, _EXPLAIN_PATCH, 1)
    return {
        "layers": layers,
        "incremental_s": round(seconds["incremental"], 3),
        "batched_engine_s": round(seconds["batched"], 2),
        "speedup": round(seconds["batched"] / seconds["incremental"], 1),
        "batched_reference_s": round(reference_s, 2),
        "speedup_reference": round(reference_s / seconds["incremental"], 1),
        "max_abs_difference": float(
            max(
                np.abs(maps["incremental"].probability - maps["batched"].probability).max(),
                np.abs(maps["incremental"].probability[0] - reference).max(),
            )
        ),
    }


def _batched_engine_seconds(model, image, target: int) -> float:
    """explain.py's ``--occlusion-engine batched`` (XLA, compiled first), one run."""
    from visualize.occlusion import occlusion

    occlusion(model, image, patch=_EXPLAIN_PATCH, target=target, engine="batched")
    start = time.perf_counter()
    occlusion(model, image, patch=_EXPLAIN_PATCH, target=target, engine="batched")
    return time.perf_counter() - start


def run_explain() -> dict:
    """Incremental occlusion against plain batched re-inference, explain.py's batched
    engine, and saliency/Grad-CAM timings."""
    from fruitcnn.model import flops_per_image
    from visualize.gradcam import gradcam, gradcam_plus_plus, layercam
    from visualize.integrated import integrated_gradients
    from visualize.occlusion import fill_image
    from visualize.rise import rise
    from visualize.saliency import saliency

    model = _explain_model()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, _EXPLAIN_SHAPE).astype(np.float32)
    fill = fill_image(model, image, "mean", _EXPLAIN_PATCH)[0, 0]
    target, peak = _runner_up(model, image), common.matmul_peak_gflops()
    grid = []
    for patch, stride in _OCCLUSION_GRID:
        print(f"occlusion patch {patch}, stride {stride} ...", file=sys.stderr)
        grid.append(_occlusion_case(model, image, fill, target, patch, stride, peak))
    headline = next(case for case in grid if (case["patch"], case["stride"]) == (_EXPLAIN_PATCH, 1))
    print("explain.py's batched engine, then the other networks ...", file=sys.stderr)
    report = {
        "task": "occlusion",
        **{
            key: headline[key]
            for key in ("positions", "patch", "stride", "incremental_s", "batched_reference_s")
        },
        "speedup": headline["speedup"],
        "max_abs_difference": max(case["max_abs_difference"] for case in grid),
        "max_loss_difference": max(case["max_loss_difference"] for case in grid),
        "goal_speedup": _GOAL_SPEEDUP,
        "goal_s": _GOAL_S,
        "meets_goal": headline["speedup"] >= _GOAL_SPEEDUP and headline["incremental_s"] <= _GOAL_S,
        **{
            key: headline[key]
            for key in ("incremental_gflops", "peak_fraction", "work_ratio", "first_call_s")
        },
        "batched_engine_s": round(_batched_engine_seconds(model, image, target), 2),
        "forward_mflop_per_image": round(flops_per_image(model) / 1e6, 2),
        "matmul_peak_gflops": round(peak, 1),
        "grid": grid,
        **{key: _other_model_case(layers, image) for key, layers in _OTHER_MODELS.items()},
    }
    images = rng.integers(0, 256, (_GRADIENT_BATCH, *_EXPLAIN_SHAPE)).astype(np.float32)
    gradient_methods = (
        ("saliency", saliency),
        ("gradcam", gradcam),
        ("gradcampp", gradcam_plus_plus),
        ("layercam", layercam),
        ("integrated_gradients", integrated_gradients),
    )
    for name, function in gradient_methods:
        for key, value in _gradient_milliseconds(function, model, images).items():
            report[f"{name}_{key}"] = value
    report["rise_single_ms"] = _rise_milliseconds(rise, model, images[0])
    report["wall_s"] = headline["incremental_s"]
    return report
