"""fruitcnn's one benchmark entry point: ``python bench/run.py TASK [--data PATH]``.

Tasks:
  line             96-class softmax on the generated line dataset (default settings)
  line-multihead   the four-head model (length, width, colour, angle) on the same data
  fruits           a Fruits-360-style archive or folder (Training/ + Test/), target
                   >= 99% test accuracy within 180 s from the archive
  mnist            MNIST IDX files, target >= 99.4% within 60 s
  cifar10          CIFAR-10 (JPEG folders/archive or python batches) with the photo
                   recipe that picks itself (fruitcnn.recipes) and a training time budget
                   of 270 s (30 s left for reading the archive and building), target
                   >= 85% within 300 s; ``--time-budget 1170 --target 0.9`` for the
                   longer goal (the wall budget is the time budget + 30 s)
  stl96            96-px photos with the ECE4179 split (an STL-10 binary folder; default:
                   a stand-in built once from ../shared/data's CIFAR-10 by
                   bench/standins.py, resized to 96 px): the ECE4179 deep net with the
                   settings the recipe gives a net without batch norm, and the photo
                   recipe, each for the same time budget (default 300 s); reports each
                   one's test accuracy after every epoch against its elapsed time
                   (``deep`` and ``recipe``) and the time each took to reach the
                   ECE4179 deep net's final accuracy
  study            the line-filters study (studies/line-filters.toml: 4 trials) through
                   study.py's engine (Keras Tuner, tables, HParams) against the same four
                   trainings in a plain loop of train() calls (``plain_loop_s``), both in
                   this run: what the study machinery costs (``overhead_ratio``)
  occlusion        occlusion of a 100x100 image by a Fruits-360-sized model (three
                   conv3x3-BN-ReLU-maxpool stages of 32/64/128 filters, dense 128, 24
                   classes; 103 M multiply-adds per image): the incremental engine
                   (``incremental_s``) against plain batched re-inference of every
                   occluded copy (``batched_reference_s``), ``speedup``, exactness
                   (``max_abs_difference``), for patch 5/10/20 and stride 1/2
                   (``grid``; the headline figures are patch 10, stride 1: 10,000
                   positions); explain.py's batched engine (``batched_engine_s``); and
                   saliency / Grad-CAM in ms per image (single and batched)
  explain-quality  how far the explanations of a trained line model can be trusted
                   (visualize.quality): trains it with train.py's defaults and a
                   second one on shuffled labels until it memorises them, then per
                   method on 200 test images the pointing game and mask mass against
                   the line masks, the Spearman correlation with the maps of a fully
                   randomised copy (and per cascade stage, from the head down) and of
                   the shuffled-label model, and the deletion / insertion areas
                   against random orders; the same curves (and the randomisation) for
                   the fruits recipe's model on 32 Fruits-360 test images when
                   ../shared/data has them; figures and CSV tables go to
                   saved_models/bench-explain-quality-<time>/ (``folder``)

The data tasks read ``--data PATH`` (default: the copy in ``../shared/data`` when it
exists) with a fresh, empty decoded-image cache (``--warm-cache`` uses the normal
one), so ``wall_s`` runs from the file as downloaded to a tested model (TensorFlow is
imported before the clock starts; ``import_s`` reports how long that took). Each trains
with a recipe that is a ``train.py`` command line (``RECIPES``; printed as
``command``), then reloads the data from the cache it filled (``cache_load_s``), and
with ``--baseline`` also trains a plain Keras CNN (no batch norm, Adam, the Keras
examples' layout) on the same arrays for the same wall time, for comparison.

The line tasks train with exactly the defaults ``python train.py --dataset line
[--multihead]`` uses, then measure, in the same process:

* the machine's fp32 matmul peak (best of several 2048x2048 products), so throughput
  can be read against it;
* the step time of the model with fruitcnn's BatchNorm against the same network with
  ``keras.layers.BatchNormalization`` (interleaved rounds, median), i.e. what the
  hand-built layer costs;
* ``report_s``: the time to write the run's report (``fruitcnn.report``), outside
  ``wall_s``.

Progress goes to stderr; the last stdout line is one JSON object with at least
``task``, ``test_accuracy`` (the aggregate for four heads) and ``wall_s`` (seconds
from data generation or the data file to a tested model). The data tasks add
``target_accuracy``, ``budget_s``, ``meets_target``, ``time_to_target_s`` (data
loading plus the elapsed time of the first epoch whose test accuracy reached the
target), ``data_s``, ``cache_load_s``, ``train_img_per_s``, ``train_gflops`` and
``peak_fraction`` against the measured matmul peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

TASKS = {
    "line": "single",
    "line-multihead": "multi",
    "fruits": "data",
    "mnist": "data",
    "cifar10": "data",
    "stl96": "stl",
    "occlusion": "explain",
    "study": "study",
    "explain-quality": "quality",
}
# The study task's study file (small, generated data: no download).
_STUDY_FILE = Path(__file__).resolve().parents[1] / "studies" / "line-filters.toml"
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
# The goal of the incremental engine at patch 10, stride 1 (issue 7).
_GOAL_SPEEDUP, _GOAL_S = 20.0, 0.3
_GRADIENT_REPEATS, _GRADIENT_BATCH, _INCREMENTAL_ROUNDS = 20, 64, 5
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# explain-quality: test images measured on the line model and on the Fruits-360 model;
# the line model's data and epochs (None: train.py's defaults; the test makes them small).
_QUALITY_IMAGES, _QUALITY_FRUITS_IMAGES = 200, 32
_QUALITY_IMAGES_PER_CLASS, _QUALITY_EPOCHS = None, None
# The data randomisation's model: trained on shuffled labels until it memorises them
# (20 images per class, 60 epochs: 99.7% of the shuffled training labels in 56 s here).
_SHUFFLED_IMAGES_PER_CLASS, _SHUFFLED_EPOCHS = 20, 60
# The data tasks: train.py flags (the recipe), default data, target and time budget.
RECIPES = {
    "fruits": {
        "flags": ["--arch", "fruits", "--epochs", "2", "--batch-size", "64", "--lr", "0.01"],
        "data": _SHARED / "fruits-360-24.tgz",
        "target": 0.99,
        "budget_s": 180,
    },
    "mnist": {
        "flags": (
            "--epochs 2 --batch-size 128 --optimizer sgd --lr 0.1 --label-smoothing 0.1 "
            "--val-fraction 0.02 --translate 1"
        ).split(),
        "data": _SHARED / "mnist",
        "target": 0.994,
        "budget_s": 60,
    },
    "cifar10": {  # the photo recipe (fruitcnn.recipes) picks everything but the time
        "flags": ["--time-budget", "270"],
        "data": _SHARED / "cifar10-jpg.tgz",
        "target": 0.85,
        "budget_s": 300,
    },
    "stl96": {  # two runs of this training time each, on the ECE4179 split
        "flags": ["--split", "8000/2000/3000"],
        "data": _SHARED / "stl10-standin" / "stl10_binary",
        "target": None,
        "budget_s": 300,
    },
}
# Seconds of a data task's wall budget left for reading the data, building and saving
# when --time-budget sets the training time.
_SETUP_ALLOWANCE_S = 30
# Matmul size and repeats for the peak measurement (2 * 2048^3 = 17 GFLOP each).
_PEAK_SIZE, _PEAK_REPEATS = 2048, 8
# Interleaved rounds and steps per round of the batch-norm comparison.
_BN_ROUNDS, _BN_STEPS = 10, 15


def matmul_peak_gflops() -> float:
    """Best achieved fp32 GFLOP/s of a large TensorFlow matmul on this machine (the
    recipe's measurement, ``fruitcnn.recipes.matmul_peak_gflops``, with more repeats)."""
    from fruitcnn.recipes import matmul_peak_gflops as measure

    return measure(_PEAK_SIZE, _PEAK_REPEATS)


def bn_step_times(config, dataset) -> dict[str, float]:
    """Median ms per training step: fruitcnn BatchNorm vs keras BatchNormalization."""
    from fruitcnn.model import build_model
    from fruitcnn.training import batches, head_specs, make_optimizer, steps_per_epoch, training_model
    from heads import compile_arguments

    specs = head_specs(config, dataset)
    steps = steps_per_epoch(len(dataset.train), config.train.batch_size)
    trainers = {}
    for name in ("fruitcnn", "keras"):
        arch = dataclasses.replace(config.arch, bn_layer=name)
        model = build_model(arch, input_shape=dataset.image_shape, heads=specs, seed=0)
        trainer = training_model(model, specs)
        trainer.compile(make_optimizer(config.train, steps), **compile_arguments(specs))
        trainers[name] = trainer
    stream = iter(batches(dataset.train, specs, config.train.batch_size, shuffle_seed=0)[0])
    fixed = [next(stream) for _ in range(_BN_STEPS)]
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for trainer in trainers.values():  # trace and warm up
        for images, targets in fixed[:3]:
            trainer.train_on_batch(images, targets)
    for _ in range(_BN_ROUNDS):  # interleaved, so drifts of machine speed hit both
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for images, targets in fixed:
                trainer.train_on_batch(images, targets)
            times[name].append(1000 * (time.perf_counter() - start) / len(fixed))
    result = {f"{name}_bn_step_ms": float(np.median(values)) for name, values in times.items()}
    result["bn_cost_ratio"] = result["fruitcnn_bn_step_ms"] / result["keras_bn_step_ms"]
    return result


def run_line(task: str, keep: bool) -> dict:
    """Train the line task with the default settings and measure it."""
    from fruitcnn.config import DataConfig, RunConfig, preset
    from fruitcnn.data import load_dataset
    from fruitcnn.model import flops_per_image
    from fruitcnn.training import train

    config = RunConfig(data=DataConfig(dataset="line"), arch=preset("line"), head=TASKS[task])
    scratch = None if keep else tempfile.TemporaryDirectory(prefix="fruitcnn-bench-")
    folder = Path("saved_models") if keep else Path(scratch.name)
    run_dir = folder / f"bench-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    dataset = load_dataset(config.data)
    data_s = time.perf_counter() - start
    result = train(config, dataset=dataset, run_dir=run_dir, verbose=2)
    wall_s = time.perf_counter() - start
    metrics = result.metrics
    flops = flops_per_image(result.model)
    report = {
        "task": task,
        "test_accuracy": metrics["test_accuracy"],
        "wall_s": round(wall_s, 2),
        "data_s": round(data_s, 2),
        "train_s": metrics["train_seconds"],
        # model building, channel statistics and pipelines before the first epoch, saving after
        "setup_s": round(wall_s - data_s - metrics["train_seconds"], 2),
        "epochs": metrics["epochs"],
        "best_epoch": metrics["best_epoch"],
        "val_accuracy": metrics["val_accuracy"],
        "test_images": metrics["test_images"],
        "test_errors": int(round((1 - metrics["test_accuracy"]) * metrics["test_images"])),
        "parameters": metrics["parameters"],
        "forward_mflop_per_image": round(flops / 1e6, 3),
        **_training_speed(result, dataset, config, flops),
    }
    for key, value in metrics.items():
        if key.startswith("test_") and key.endswith("_accuracy") and key != "test_accuracy":
            report[key] = value
    print("writing the report ...", file=sys.stderr)
    report["report_s"] = round(_report_seconds(run_dir, dataset, result.model), 2)
    print("measuring the matmul peak and the batch-norm step costs ...", file=sys.stderr)
    report["matmul_peak_gflops"] = round(matmul_peak_gflops(), 1)
    report["peak_fraction"] = round(report["train_gflops"] / report["matmul_peak_gflops"], 3)
    report.update({key: round(value, 3) for key, value in bn_step_times(config, dataset).items()})
    report["run_dir"] = str(run_dir) if keep else None
    if scratch is not None:
        scratch.cleanup()
    return report


def _explain_model(preset_name: str | None = None):
    """The benchmark's 100x100 model (``_EXPLAIN_LAYERS``, or a preset): seeded random
    weights, logits scaled up."""
    from fruitcnn.config import ArchConfig, parse_layers, preset
    from fruitcnn.model import build_model
    from heads import single_head_specs

    specs = single_head_specs([f"class{index}" for index in range(_EXPLAIN_CLASSES)])
    if preset_name is None:
        arch = ArchConfig(name="occlusion-bench", layers=parse_layers(_EXPLAIN_LAYERS))
    else:
        arch = preset(preset_name)
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


def _occlusion_case(model, image, fill, target: int, patch: int, stride: int, peak: float) -> dict:
    """Incremental engine (best of several, compiled first) against the batched reference
    (one run), both maps compared: probability and loss."""
    from fruitcnn.model import flops_per_image
    from visualize.occlusion import incremental_occluder, occlusion

    def incremental():
        return occlusion(model, image, patch=patch, stride=stride, target=target, engine="incremental")

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


def _engines_on_preset(name: str, image: np.ndarray) -> dict:
    """Incremental (best of 3) against explain.py's batched engine (one run), both
    compiled first, on a preset, patch 10, stride 1."""
    from visualize.occlusion import occlusion

    model = _explain_model(name)
    target = _runner_up(model, image)
    seconds, maps = {}, {}
    for engine, rounds in (("incremental", 3), ("batched", 1)):
        maps[engine] = occlusion(model, image, patch=_EXPLAIN_PATCH, target=target, engine=engine)
        seconds[engine] = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            occlusion(model, image, patch=_EXPLAIN_PATCH, target=target, engine=engine)
            seconds[engine] = min(seconds[engine], time.perf_counter() - start)
    return {
        "incremental_s": round(seconds["incremental"], 3),
        "batched_engine_s": round(seconds["batched"], 2),
        "speedup": round(seconds["batched"] / seconds["incremental"], 1),
        "max_abs_difference": float(
            np.abs(maps["incremental"].probability - maps["batched"].probability).max()
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
    from visualize.gradcam import gradcam
    from visualize.occlusion import fill_image
    from visualize.saliency import saliency

    model = _explain_model()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, _EXPLAIN_SHAPE).astype(np.float32)
    fill = fill_image(model, image, "mean", _EXPLAIN_PATCH)[0, 0]
    target, peak = _runner_up(model, image), matmul_peak_gflops()
    grid = []
    for patch, stride in _OCCLUSION_GRID:
        print(f"occlusion patch {patch}, stride {stride} ...", file=sys.stderr)
        grid.append(_occlusion_case(model, image, fill, target, patch, stride, peak))
    headline = next(case for case in grid if (case["patch"], case["stride"]) == (_EXPLAIN_PATCH, 1))
    print("explain.py's batched engine, then the fruits preset ...", file=sys.stderr)
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
        "fruits_preset": _engines_on_preset("fruits", image),
    }
    images = rng.integers(0, 256, (_GRADIENT_BATCH, *_EXPLAIN_SHAPE)).astype(np.float32)
    for name, function in (("saliency", saliency), ("gradcam", gradcam)):
        for key, value in _gradient_milliseconds(function, model, images).items():
            report[f"{name}_{key}"] = value
    report["wall_s"] = headline["incremental_s"]
    return report


def _report_seconds(run_dir, dataset, model) -> float:
    """Seconds to write the run's report (evaluation of all three splits, figures, pages)."""
    from fruitcnn.report import build_report

    start = time.perf_counter()
    build_report(run_dir, dataset=dataset, model=model, progress=lambda line: print(line, file=sys.stderr))
    return time.perf_counter() - start


def _images_stepped(result, dataset, config) -> int:
    """Training images the run's steps took: a time-budget run's history counts each
    epoch's steps (its last epoch may be partial); other epochs are whole (incomplete
    last batches are dropped in training)."""
    from fruitcnn.training import steps_per_epoch

    whole = steps_per_epoch(len(dataset.train), config.train.batch_size)
    return sum(int(row.get("steps") or whole) for row in result.history) * config.train.batch_size


def _training_speed(result, dataset, config, flops: float) -> dict:
    """Optimisation seconds (train_s also holds the per-epoch val/test passes), images
    per second and achieved GFLOP/s of a finished run."""
    step_seconds = sum(row["train_s"] for row in result.history)
    images_per_s = _images_stepped(result, dataset, config) / step_seconds
    return {
        "step_s": round(step_seconds, 2),
        "train_img_per_s": round(images_per_s, 1),
        # a training step is ~3 forward passes of work (forward, two backward products)
        "train_gflops": round(3 * flops * images_per_s / 1e9, 2),
    }


def _fit_clock():
    """A callback that notes when fit starts and ends (set-up apart from teardown)."""
    import keras

    class FitClock(keras.callbacks.Callback):
        begin = end = 0.0

        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    return FitClock()


def run_data(
    task: str,
    data: str,
    keep: bool,
    warm_cache: bool,
    baseline: bool,
    *,
    flags: list[str] | None = None,
    target: float | None = None,
    budget_s: float | None = None,
) -> dict:
    """Train a data task with its recipe (or ``flags``) from the data file to a tested
    model; ``target`` and ``budget_s`` replace the task's."""
    import train as cli

    recipe = {
        **RECIPES[task],
        **({"flags": flags} if flags is not None else {}),
        **({"target": target} if target is not None else {}),
        **({"budget_s": budget_s} if budget_s is not None else {}),
    }
    scratch = tempfile.TemporaryDirectory(prefix="fruitcnn-bench-")
    if not warm_cache:
        os.environ["FRUITCNN_CACHE"] = str(Path(scratch.name) / "cache")
    folder = Path("saved_models") if keep else Path(scratch.name)
    run_dir = folder / f"bench-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = ["--dataset", data, *recipe["flags"]]
    args = cli.build_parser().parse_args(argv)
    # TensorFlow's import (5-20 s, depending on the disk cache) is the installation's
    # constant, not the recipe's: it happens before the clock starts, and is reported.
    import_start = time.perf_counter()
    import fruitcnn.training  # noqa: F401

    import_s = time.perf_counter() - import_start
    start = time.perf_counter()
    dataset = cli.load_data(cli.data_config(args))
    data_s = time.perf_counter() - start
    config = cli.make_config(args, dataset)

    from fruitcnn.data import load_dataset
    from fruitcnn.model import flops_per_image
    from fruitcnn.training import train

    clock = _fit_clock()
    result = train(config, dataset=dataset, run_dir=run_dir, verbose=2, callbacks=[clock])
    wall_s = time.perf_counter() - start
    metrics = result.metrics
    # (without per-epoch test evaluation only the final model's test accuracy is known)
    reached = [row for row in result.history if row["test_accuracy"] not in ("", None)]
    goal = recipe["target"] if recipe["target"] is not None else float("inf")
    reached = [row for row in reached if float(row["test_accuracy"]) >= goal]
    flops = flops_per_image(result.model)
    report = {
        "task": task,
        "test_accuracy": metrics["test_accuracy"],
        "wall_s": round(wall_s, 2),
        "target_accuracy": recipe["target"],
        "budget_s": recipe["budget_s"],
        "meets_target": bool(metrics["test_accuracy"] >= goal and wall_s <= recipe["budget_s"]),
        "time_to_target_s": (
            round(data_s + float(reached[0]["elapsed_s"]), 1)
            if reached
            else (round(wall_s, 1) if metrics["test_accuracy"] >= goal else None)
        ),
        "data": data,
        "command": "python train.py " + " ".join(argv),
        "arch": config.arch.name,
        "recipe": config.recipe,
        "time_budget": metrics.get("time_budget"),
        # 3 x forward FLOP x images seen, in TFLOP
        "training_tflop": round(3 * flops * _images_stepped(result, dataset, config) / 1e12, 2),
        "import_s": round(import_s, 2),
        "data_s": round(data_s, 2),
        "train_s": metrics["train_seconds"],
        # model building, channel statistics and pipelines before the first epoch, saving after
        "setup_s": round(wall_s - data_s - metrics["train_seconds"], 2),
        # from the data to fit's first callback, and from fit's last callback to the end
        "before_fit_s": round(clock.begin - start - data_s, 2),
        "after_fit_s": round(start + wall_s - clock.end, 2),
        "epochs": metrics["epochs"],
        "best_epoch": metrics["best_epoch"],
        "val_accuracy": metrics["val_accuracy"],
        "test_images": metrics["test_images"],
        "test_errors": int(round((1 - metrics["test_accuracy"]) * metrics["test_images"])),
        "train_images": metrics["train_images"],
        "classes": len(dataset.class_names),
        "image_shape": list(dataset.image_shape),
        "parameters": metrics["parameters"],
        "forward_mflop_per_image": round(flops / 1e6, 3),
        **_training_speed(result, dataset, config, flops),
        "test_accuracy_by_epoch": [
            round(float(row["test_accuracy"]), 4) if row["test_accuracy"] not in ("", None) else None
            for row in result.history
        ],
        "elapsed_s_by_epoch": [round(float(row["elapsed_s"]), 1) for row in result.history],
    }
    reload_start = time.perf_counter()
    reloaded = load_dataset(config.data)
    report["cache_load_s"] = round(time.perf_counter() - reload_start, 2)
    report["cache_hit"] = bool(reloaded.info.get("from_cache"))
    if baseline:
        print("training the plain Keras baseline for the same wall time ...", file=sys.stderr)
        report.update(plain_baseline(dataset, wall_s - data_s, recipe["target"], data_s))
    print("measuring the matmul peak ...", file=sys.stderr)
    report["matmul_peak_gflops"] = round(matmul_peak_gflops(), 1)
    report["peak_fraction"] = round(report["train_gflops"] / report["matmul_peak_gflops"], 3)
    report["run_dir"] = str(run_dir) if keep else None
    scratch.cleanup()
    return report


def run_stl96(data: str | None, keep: bool, budget_s: float | None) -> dict:
    """The 96-px task: the ECE4179 deep net and the photo recipe, same time budget."""
    from bench import standins

    if data is None:
        cifar = RECIPES["cifar10"]["data"]
        if not Path(cifar).exists():
            raise SystemExit(
                f"bench/run.py: error: task stl96 builds its stand-in from CIFAR-10, and {cifar} does not "
                "exist; pass --data PATH (an stl10_binary folder, or photos in class folders)."
            )
        print("building the 96-px stand-in from CIFAR-10 (once) ...", file=sys.stderr)
        data = str(standins.stl10_from_cifar10(cifar, Path(RECIPES["stl96"]["data"])))
    seconds = float(budget_s or RECIPES["stl96"]["budget_s"])
    common = [*RECIPES["stl96"]["flags"], "--time-budget", f"{seconds:g}"]
    runs_of = {}
    for name, flags in (("deep", ["--arch", "ece4179-deep", *common]), ("recipe", common)):
        print(f"training {name}: {' '.join(flags)} ...", file=sys.stderr)
        runs_of[name] = run_data(
            "stl96", data, keep, False, False, flags=flags, budget_s=seconds + _SETUP_ALLOWANCE_S
        )
    deep_final = runs_of["deep"]["test_accuracy"]

    def time_to(report, accuracy):
        # (the accuracies by epoch are rounded to 4 decimals)
        for value, elapsed in zip(report["test_accuracy_by_epoch"], report["elapsed_s_by_epoch"]):
            if value is not None and value >= round(accuracy, 4):
                return round(report["data_s"] + elapsed, 1)
        return None

    keys = ("test_accuracy", "wall_s", "arch", "recipe", "command", "epochs", "parameters")
    keys += ("forward_mflop_per_image", "peak_fraction", "test_accuracy_by_epoch", "elapsed_s_by_epoch")
    return {
        "task": "stl96",
        "test_accuracy": runs_of["recipe"]["test_accuracy"],
        "wall_s": round(sum(report["wall_s"] for report in runs_of.values()), 2),
        "data": data,
        "time_budget_s": seconds,
        "deep_test_accuracy": deep_final,
        "recipe_time_to_deep_accuracy_s": time_to(runs_of["recipe"], deep_final),
        "deep_time_to_deep_accuracy_s": time_to(runs_of["deep"], deep_final),
        **{name: {key: report.get(key) for key in keys} for name, report in runs_of.items()},
        "matmul_peak_gflops": runs_of["recipe"]["matmul_peak_gflops"],
    }


def plain_baseline(dataset, seconds: float, target: float, data_s: float) -> dict:
    """A plain Keras CNN (the Keras examples' conv32-pool-conv64-pool-dropout-dense
    layout, no batch norm, Adam 1e-3, batch 128) trained on the same arrays for
    ``seconds`` of wall time, test accuracy after every epoch."""
    import keras

    classes = len(dataset.class_names)
    model = keras.Sequential(
        [
            keras.Input(dataset.image_shape),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    train_x = np.concatenate([dataset.train.images, dataset.val.images]).astype(np.float32)
    train_y = np.concatenate([dataset.train.labels, dataset.val.labels])
    test_x, test_y = dataset.test.images.astype(np.float32), dataset.test.labels
    start, accuracies, reached = time.perf_counter(), [], None
    while time.perf_counter() - start < seconds:
        model.fit(train_x, train_y, batch_size=128, epochs=1, verbose=0, shuffle=True)
        accuracy = float(model.evaluate(test_x, test_y, batch_size=512, verbose=0)[1])
        accuracies.append(round(accuracy, 4))
        if reached is None and accuracy >= target:
            reached = round(data_s + time.perf_counter() - start, 1)
    return {
        "baseline_test_accuracy": accuracies[-1],
        "baseline_epochs": len(accuracies),
        "baseline_test_accuracy_by_epoch": accuracies,
        "baseline_s": round(time.perf_counter() - start, 1),
        "baseline_time_to_target_s": reached,
    }


def run_study_task() -> dict:
    """The line-filters study through run_study against a plain loop of the same
    train() calls (the same configs and data, no tuner, tables or HParams)."""
    import keras
    from fruitcnn.study import best_row, load_study
    from fruitcnn.tuning import TrialData, run_study

    from fruitcnn.training import train

    study = load_study(_STUDY_FILE)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.monotonic()
        data = TrialData(study, progress=lambda line: None)
        for trial in study.trials:
            config, dataset = data.prepare(trial)
            keras.backend.clear_session()
            train(config, dataset=dataset, run_dir=Path(scratch) / "plain" / str(trial.number), verbose=0)
        plain_s = time.monotonic() - started
        print(f"plain loop of {len(study.trials)} train() calls: {plain_s:.1f} s", file=sys.stderr)
        started = time.monotonic()
        outcome = run_study(
            study, Path(scratch) / "study", verbose=0, reports="none", progress=lambda line: None
        )
        wall_s = time.monotonic() - started
    rows = outcome.rows
    best = best_row(rows)
    return {
        "task": "study",
        "study": study.name,
        "trials": len(rows),
        "trials_done": sum(row["status"] == "done" for row in rows),
        "best_trial": {parameter.name: best[parameter.name] for parameter in study.parameters},
        "best_val_accuracy": best["best_val_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "wall_s": round(wall_s, 1),
        "plain_loop_s": round(plain_s, 1),
        "overhead_ratio": round(wall_s / plain_s, 3),
        "overhead_s_per_trial": round((wall_s - plain_s) / len(rows), 2),
        "train_s_sum": round(sum(row["train_s"] for row in rows), 1),
    }


def _shuffled_labels(dataset, seed: int = 0):
    """The dataset with its training labels permuted (data randomisation: a model trained
    on it can only memorise) and the same shuffled training split as validation, so the
    model kept (the best on validation) is the one that memorised most; the test split
    keeps its labels."""
    from fruitcnn.data import Split

    train = dataset.train
    order = np.random.default_rng(seed).permutation(len(train))
    attributes = None if train.attributes is None else train.attributes[order]
    shuffled = Split(train.images, train.labels[order], attributes, train.masks)
    return dataclasses.replace(dataset, train=shuffled, val=shuffled)


def _chosen(split, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(split), size=min(count, len(split)), replace=False))


def _method_table(summary, extra: dict | None = None) -> dict:
    """``{method: {measure: value}}`` from a quality summary (NaN columns left out)."""
    table = {}
    for method, row in summary.iterrows():
        values = {name: round(float(value), 4) for name, value in row.items() if value == value}
        values.update((extra or {}).get(method, {}))
        table[method] = values
    return table


def _quality_misses(methods: dict) -> list[str]:
    """Where the line model's explanations miss the issue's goals, one line each (the
    goals of ``visualize.quality.failed_checks``, for the default methods and, for
    deletion, every method)."""
    from visualize.quality import DEFAULT_METHODS, failed_checks

    misses = []
    for method, values in methods.items():
        for failure in failed_checks(method, values, masks=True):
            if method in DEFAULT_METHODS or failure.startswith("deletion"):
                misses.append(f"{method}: {failure}")
    return misses


def _write_figure(folder: Path, name: str, figure) -> str:
    from fruitcnn import plots, runs

    png = plots.png_bytes(figure)
    runs.atomic_write(folder / name, lambda path: Path(path).write_bytes(png))
    return str(folder / name)


def _line_models(models: Path):
    """The line dataset, the model train.py's defaults make of it, and the model that
    memorised shuffled labels (data randomisation)."""
    from fruitcnn.config import DataConfig, RunConfig, TrainConfig, preset
    from fruitcnn.data import load_dataset
    from fruitcnn.training import train

    data = DataConfig(dataset="line")
    if _QUALITY_IMAGES_PER_CLASS:
        data = dataclasses.replace(data, images_per_class=_QUALITY_IMAGES_PER_CLASS)
    schedule = TrainConfig() if not _QUALITY_EPOCHS else TrainConfig(epochs=_QUALITY_EPOCHS)
    config = RunConfig(data=data, arch=preset("line"), train=schedule, head="single")
    dataset = load_dataset(config.data)
    trained = train(config, dataset=dataset, run_dir=models / "line", verbose=2)
    print("training a model on shuffled labels (data randomisation) ...", file=sys.stderr)
    memorise = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, images_per_class=_SHUFFLED_IMAGES_PER_CLASS),
        train=dataclasses.replace(config.train, epochs=_SHUFFLED_EPOCHS),
    )
    few = _shuffled_labels(load_dataset(memorise.data))
    shuffled = train(memorise, dataset=few, run_dir=models / "line-shuffled", verbose=0)
    return dataset, trained, shuffled


def _randomisations(model, shuffled, images, labels, found) -> tuple[dict, object]:
    """Per method the cascade's and the shuffled-label model's Spearman correlations
    (``{method: {...}}``), and the cascade's table."""
    from visualize import quality

    methods = list(found.maps)
    cascade = quality.cascade_correlations(model, images, target=labels, methods=methods, maps=found.maps)
    data_random = quality.correlations_with(
        shuffled, images, found.maps, head="class", targets=labels, settings=quality.MapSettings()
    )
    extra = {
        method: {
            "data_randomization_spearman": round(float(values.mean()), 4),
            "cascade_spearman": [
                round(value, 4) for value in cascade[cascade["method"] == method]["spearman"].tolist()
            ],
        }
        for method, values in data_random.items()
    }
    return extra, cascade


def _line_quality(models: Path, out: Path) -> dict:
    """Train the line model and one on shuffled labels, then measure every method."""
    from fruitcnn import runs
    from visualize import draw, quality

    start = time.perf_counter()
    dataset, trained, shuffled = _line_models(models)
    train_s = time.perf_counter() - start
    chosen = _chosen(dataset.test, _QUALITY_IMAGES)
    images, labels, masks = (
        array[chosen] for array in (dataset.test.images, dataset.test.labels, dataset.test.masks)
    )
    model, methods = trained.model, quality.available_methods(trained.model)
    print(f"measuring {len(methods)} methods on {len(chosen)} test images ...", file=sys.stderr)
    start = time.perf_counter()
    found = quality.quality_scores(model, images, target=labels, masks=masks, methods=methods)
    measures_s = time.perf_counter() - start
    print("cascading randomisation and the shuffled-label model ...", file=sys.stderr)
    start = time.perf_counter()
    extra, cascade = _randomisations(model, shuffled.model, images, labels, found)
    randomization_s = time.perf_counter() - start
    summary = found.summary()
    table = _method_table(summary, extra)
    summary["data_randomization_spearman"] = [
        extra[method]["data_randomization_spearman"] for method in summary.index
    ]
    runs.write_csv(out / "line-quality.csv", summary.reset_index().to_dict("records"))
    runs.write_csv(out / "line-cascade.csv", cascade.to_dict("records"))
    curves = draw.curves_figure(found.curves, title="line dataset: deletion and insertion")
    stages = draw.cascade_figure(cascade, title="line dataset: cascading randomisation")
    return {
        "test_accuracy": trained.metrics["test_accuracy"],
        # the shuffled-label model: the share of its (shuffled) training labels it
        # reproduces, and its accuracy on the real test labels (chance: 1/96)
        "shuffled_labels_train_accuracy": shuffled.metrics["val_accuracy"],
        "shuffled_labels_test_accuracy": shuffled.metrics["test_accuracy"],
        "images": int(len(chosen)),
        "patch": int(quality.default_patch(images.shape[1:])),
        "cascade_layers": list(dict.fromkeys(cascade["layer"].tolist())),
        "methods": table,
        "misses": _quality_misses(table),
        "train_s": round(train_s, 1),
        "measures_s": round(measures_s, 1),
        "randomization_s": round(randomization_s, 1),
        "figures": [
            _write_figure(out, "line-curves.png", curves),
            _write_figure(out, "line-cascade.png", stages),
        ],
    }


def _fruits_quality(models: Path, out: Path) -> dict:
    """Deletion/insertion (and the full randomisation) of the fruits recipe's model on
    Fruits-360 test images, when ../shared/data has them."""
    recipe = RECIPES["fruits"]
    if not Path(recipe["data"]).exists():
        return {"skipped": f"{recipe['data']} does not exist"}
    import train as cli
    from fruitcnn import runs
    from fruitcnn.training import train
    from visualize import draw, quality

    args = cli.build_parser().parse_args(["--dataset", str(recipe["data"]), *recipe["flags"]])
    start = time.perf_counter()
    dataset = cli.load_data(cli.data_config(args))
    result = train(cli.make_config(args, dataset), dataset=dataset, run_dir=models / "fruits", verbose=2)
    train_s = time.perf_counter() - start
    chosen = _chosen(dataset.test, _QUALITY_FRUITS_IMAGES)
    images, labels = dataset.test.images[chosen], dataset.test.labels[chosen]
    start = time.perf_counter()
    found = quality.quality_scores(result.model, images, target=labels, methods=quality.DEFAULT_METHODS)
    summary = found.summary()
    runs.write_csv(out / "fruits-quality.csv", summary.reset_index().to_dict("records"))
    figure = draw.curves_figure(found.curves, title="Fruits-360: deletion and insertion")
    return {
        "test_accuracy": result.metrics["test_accuracy"],
        "images": int(len(chosen)),
        "patch": int(quality.default_patch(images.shape[1:])),
        "methods": _method_table(summary),
        "train_s": round(train_s, 1),
        "measures_s": round(time.perf_counter() - start, 1),
        "figures": [_write_figure(out, "fruits-curves.png", figure)],
    }


def run_explain_quality(keep: bool) -> dict:
    """Measure the explanations of a trained line model (ground truth, randomisation,
    deletion/insertion) and, when the data is there, of a Fruits-360 model."""
    start = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("saved_models") / f"bench-explain-quality-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    scratch = None if keep else tempfile.TemporaryDirectory(prefix="fruitcnn-bench-")
    models = out if keep else Path(scratch.name)
    line = _line_quality(models, out)
    print("Fruits-360 deletion and insertion ...", file=sys.stderr)
    fruits = _fruits_quality(models, out)
    report = {
        "task": "explain-quality",
        "test_accuracy": line.pop("test_accuracy"),
        "wall_s": round(time.perf_counter() - start, 1),
        "methods": line.pop("methods"),
        "meets_goals": not line["misses"],
        **line,
        "fruits": fruits,
        "folder": str(out),
    }
    if scratch is not None:
        scratch.cleanup()
    return report


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark task and print its JSON line last."""
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", choices=sorted(TASKS), help="what to measure")
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="data file or folder of a data task (default: its copy in ../shared/data)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the trained run under saved_models/ (default: temp dir)"
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="data tasks: use the normal decoded-image cache (default: empty)",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="data tasks: also train a plain Keras CNN for the same time"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="cifar10, stl96: the training time budget in seconds (cifar10: its wall budget is this "
        f"+ {_SETUP_ALLOWANCE_S} s)",
    )
    parser.add_argument(
        "--target", type=float, default=None, metavar="F", help="data tasks: the target test accuracy"
    )
    args = parser.parse_args(argv)
    if args.time_budget is not None and args.task not in ("cifar10", "stl96"):
        parser.error(f"--time-budget is for the cifar10 and stl96 tasks, not {args.task}.")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be a number of seconds above 0, got {args.time_budget:g}.")
    if args.target is not None and not 0 < args.target <= 1:
        parser.error(f"--target must be an accuracy in (0, 1], got {args.target:g}.")
    if TASKS[args.task] == "stl":
        if args.data is not None and not Path(args.data).exists():
            parser.error(f"task stl96: {args.data} does not exist; pass --data PATH (a stl10_binary folder).")
        report = run_stl96(args.data, args.keep, args.time_budget)
    elif TASKS[args.task] != "data":
        if args.data is not None:
            parser.error(f"task {args.task} generates its data; --data is not used (got {args.data!r}).")
        if TASKS[args.task] == "explain":
            report = run_explain()
        elif TASKS[args.task] == "study":
            report = run_study_task()
        elif TASKS[args.task] == "quality":
            report = run_explain_quality(args.keep)
        else:
            report = run_line(args.task, args.keep)
    else:
        data = args.data or str(RECIPES[args.task]["data"])
        if not Path(data).exists():
            parser.error(
                f"task {args.task} needs its data: {data} does not exist; pass --data PATH "
                "(the archive or folder as downloaded)."
            )
        flags, budget = None, None
        if args.time_budget is not None:  # cifar10
            flags, budget = ["--time-budget", f"{args.time_budget:g}"], args.time_budget + _SETUP_ALLOWANCE_S
        report = run_data(
            args.task,
            data,
            args.keep,
            args.warm_cache,
            args.baseline,
            flags=flags,
            target=args.target,
            budget_s=budget,
        )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
