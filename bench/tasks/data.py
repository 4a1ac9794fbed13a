"""The data tasks (fruits, mnist, cifar10; stl96 runs through them too): train with a
recipe from the data file as downloaded to a tested model, reload the data from the cache
it filled, and optionally train a plain Keras CNN on the same arrays for the same time.

TensorFlow (5-20 s) is imported inside :func:`run_data`, before its clock starts and timed
(``import_s``), and in the functions that use it, so that ``python bench/run.py --help``
and argument errors answer at once.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common
from fruitcnn.config import config_from_settings
from fruitcnn.data import load_and_report, load_dataset
from fruitcnn.recipes import run_config

# The data tasks: their settings (train.py's flag names and values, as
# fruitcnn.config.config_from_settings takes them; the recipe of fruitcnn.recipes chooses
# what they leave out), default data, target and time budget.
RECIPES = {
    "fruits": {
        "settings": {"arch": "fruits", "epochs": 2, "batch_size": 64, "lr": 0.01},
        "data": common.SHARED / "fruits-360-24.tgz",
        "target": 0.99,
        "budget_s": 180,
    },
    "mnist": {
        "settings": {
            "epochs": 2,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.1,
            "label_smoothing": 0.1,
            "val_fraction": 0.02,
            "translate": 1,
        },
        "data": common.SHARED / "mnist",
        "target": 0.994,
        "budget_s": 60,
    },
    "cifar10": {  # the photo recipe (fruitcnn.recipes) picks everything but the time
        "settings": {"time_budget": 270.0},
        "data": common.SHARED / "cifar10-jpg.tgz",
        "target": 0.85,
        "budget_s": 300,
    },
    "stl96": {  # two runs of this training time each, on the ECE4179 split
        "settings": {"split": "8000/2000/3000"},
        "data": common.SHARED / "stl10-standin" / "stl10_binary",
        "target": None,
        "budget_s": 300,
    },
}


def run_data(
    task: str,
    data: str,
    keep: bool,
    warm_cache: bool,
    baseline: bool,
    *,
    settings: dict | None = None,
    target: float | None = None,
    budget_s: float | None = None,
) -> dict:
    """Train a data task with its recipe's settings (or ``settings``) from the data file
    to a tested model; ``target`` and ``budget_s`` replace the task's."""
    recipe = {
        **RECIPES[task],
        **({"settings": settings} if settings is not None else {}),
        **({"target": target} if target is not None else {}),
        **({"budget_s": budget_s} if budget_s is not None else {}),
    }
    scratch = tempfile.TemporaryDirectory(prefix="fruitcnn-bench-")
    if not warm_cache:
        os.environ["FRUITCNN_CACHE"] = str(Path(scratch.name) / "cache")
    folder = Path("saved_models") if keep else Path(scratch.name)
    run_dir = folder / f"bench-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_settings = {"dataset": data, **recipe["settings"]}
    # TensorFlow's import (5-20 s, depending on the disk cache) is the installation's
    # constant, not the recipe's: it happens before the clock starts, and is reported.
    import_start = time.perf_counter()
    from fruitcnn.model import flops_per_image
    from fruitcnn.training import train

    import_s = time.perf_counter() - import_start
    start = time.perf_counter()
    dataset = load_and_report(config_from_settings(run_settings).data)
    data_s = time.perf_counter() - start
    config = run_config(run_settings, dataset=dataset)
    clock = common.fit_clock()
    result = train(config, dataset=dataset, run_dir=run_dir, verbose=2, callbacks=[clock])
    wall_s = time.perf_counter() - start
    times = {"start": start, "import_s": import_s, "data_s": data_s, "wall_s": wall_s}
    report = {
        "task": task,
        **_outcome(result, recipe, times, data),
        "command": "python train.py " + " ".join(common.train_flags(run_settings)),
        **_run_figures(result, dataset, config, flops_per_image(result.model), times, clock),
    }
    reload_start = time.perf_counter()
    reloaded = load_dataset(config.data)
    report["cache_load_s"] = round(time.perf_counter() - reload_start, 2)
    report["cache_hit"] = bool(reloaded.info.get("from_cache"))
    if baseline:
        print("training the plain Keras baseline for the same wall time ...", file=sys.stderr)
        report.update(plain_baseline(dataset, wall_s - data_s, recipe["target"], data_s))
    print("measuring the matmul peak ...", file=sys.stderr)
    report.update(common.peak_figures(report["train_gflops"], config.train.precision))
    report["run_dir"] = str(run_dir) if keep else None
    scratch.cleanup()
    return report


def _outcome(result, recipe: dict, times: dict, data: str) -> dict:
    """The report's first keys: accuracy and time against the recipe's target and budget."""
    metrics, wall_s = result.metrics, times["wall_s"]
    # (without per-epoch test evaluation only the final model's test accuracy is known)
    reached = [row for row in result.history if row["test_accuracy"] not in ("", None)]
    goal = recipe["target"] if recipe["target"] is not None else float("inf")
    reached = [row for row in reached if float(row["test_accuracy"]) >= goal]
    return {
        "test_accuracy": metrics["test_accuracy"],
        "wall_s": round(wall_s, 2),
        "target_accuracy": recipe["target"],
        "budget_s": recipe["budget_s"],
        "meets_target": bool(metrics["test_accuracy"] >= goal and wall_s <= recipe["budget_s"]),
        "time_to_target_s": (
            round(times["data_s"] + float(reached[0]["elapsed_s"]), 1)
            if reached
            else (round(wall_s, 1) if metrics["test_accuracy"] >= goal else None)
        ),
        "data": data,
    }


def _run_figures(result, dataset, config, flops: float, times: dict, clock) -> dict:
    """The report's keys after ``command``: the run's settings, times, sizes and speed."""
    metrics, data_s, wall_s = result.metrics, times["data_s"], times["wall_s"]
    return {
        "arch": config.arch.name,
        "recipe": config.recipe,
        "time_budget": metrics.get("time_budget"),
        # 3 x forward FLOP x images seen, in TFLOP
        "training_tflop": round(3 * flops * common.images_stepped(result, dataset, config) / 1e12, 2),
        "import_s": round(times["import_s"], 2),
        "data_s": round(data_s, 2),
        "train_s": metrics["train_seconds"],
        # model building, channel statistics and pipelines before the first epoch, saving after
        "setup_s": round(wall_s - data_s - metrics["train_seconds"], 2),
        # from the data to fit's first callback, and from fit's last callback to the end
        "before_fit_s": round(clock.begin - times["start"] - data_s, 2),
        "after_fit_s": round(times["start"] + wall_s - clock.end, 2),
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
        **common.training_speed(result, dataset, config, flops),
        "test_accuracy_by_epoch": [
            round(float(row["test_accuracy"]), 4) if row["test_accuracy"] not in ("", None) else None
            for row in result.history
        ],
        "elapsed_s_by_epoch": [round(float(row["elapsed_s"]), 1) for row in result.history],
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
