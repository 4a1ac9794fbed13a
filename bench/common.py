"""What the benchmark tasks share: where their data lives, the machine's matmul peak,
clocks and throughput of a finished run, the train.py
command line of a run's settings, and the JSON line that ends every task.

TensorFlow (5-20 s to import) is imported in the functions that need it, so that
``python bench/run.py --help`` and argument errors answer at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fruitcnn import recipes
from fruitcnn.config import switch_flags

# The copies of the data sets the data tasks read by default (../shared/data).
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Seconds of a data task's wall budget left for reading the data, building, the final
# evaluation and saving when --time-budget sets the training time (CIFAR-10 from its
# archive, width 64 in mixed precision: 10.7 s reading, 2.4 s building, 23 s evaluating
# the saved float32 model's validation and test splits with test-time flips).
SETUP_ALLOWANCE_S = 40
# Matmul size and repeats for the peak measurement (2 * 2048^3 = 17 GFLOP each).
_PEAK_SIZE, _PEAK_REPEATS = 2048, 8


def matmul_peak_gflops() -> float:
    """Best achieved fp32 GFLOP/s of a large TensorFlow matmul on this machine (the
    recipe's measurement, ``fruitcnn.recipes.matmul_peak_gflops``, with more repeats)."""
    return recipes.matmul_peak_gflops(_PEAK_SIZE, _PEAK_REPEATS)


def peak_figures(train_gflops: float, precision: str) -> dict:
    """The matmul peaks measured now and the training's share of them:
    ``matmul_peak_gflops`` and ``peak_fraction`` (float32, as every task reports them),
    and for a mixed-precision run also ``matmul_peak_bf16_gflops`` and
    ``precision_peak_fraction``, the share of the peak of the arithmetic it used."""
    peak = matmul_peak_gflops()
    figures = {"precision": precision, "matmul_peak_gflops": round(peak, 1)}
    figures["peak_fraction"] = round(train_gflops / peak, 3)
    if precision == "mixed_bfloat16":
        bf16 = recipes.matmul_peak_gflops(_PEAK_SIZE, _PEAK_REPEATS, dtype="bfloat16")
        figures["matmul_peak_bf16_gflops"] = round(bf16, 1)
        figures["precision_peak_fraction"] = round(train_gflops / bf16, 3)
    else:
        figures["precision_peak_fraction"] = figures["peak_fraction"]
    return figures


def fit_clock():
    """A callback that notes when fit starts and ends (set-up apart from teardown)."""
    import keras

    class FitClock(keras.callbacks.Callback):
        begin = end = 0.0

        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    return FitClock()


def images_stepped(result, dataset, config) -> int:
    """Training images the run's steps took: a time-budget run's history counts each
    epoch's steps (its last epoch may be partial); other epochs are whole (incomplete
    last batches are dropped in training)."""
    from fruitcnn.training import steps_per_epoch

    whole = steps_per_epoch(len(dataset.train), config.train.batch_size)
    return sum(int(row.get("steps") or whole) for row in result.history) * config.train.batch_size


def training_speed(result, dataset, config, flops: float) -> dict:
    """Optimisation seconds (train_s also holds the per-epoch val/test passes), images
    per second and achieved GFLOP/s of a finished run."""
    step_seconds = sum(row["train_s"] for row in result.history)
    images_per_s = images_stepped(result, dataset, config) / step_seconds
    return {
        "step_s": round(step_seconds, 2),
        "train_img_per_s": round(images_per_s, 1),
        # a training step is ~3 forward passes of work (forward, two backward products)
        "train_gflops": round(3 * flops * images_per_s / 1e9, 2),
    }


def data_path(task: str, given: str | None, default: Path, flag: str = "--data") -> str:
    """The data a task reads: ``given`` (``flag``) or else its default copy.

    Raises:
        ValueError: the path does not exist; names it and the flag to pass.
    """
    data = given or str(default)
    if not Path(data).exists():
        raise ValueError(
            f"task {task} needs its data: {data} does not exist; pass {flag} PATH "
            "(the archive or folder as downloaded)."
        )
    return data


def train_flags(settings: dict[str, Any]) -> list[str]:
    """The train.py flags that give ``settings`` (``fruitcnn.config.config_from_settings``'s
    names and values), in their order: ``{"batch_size": 256}`` -> ``["--batch-size", "256"]``."""
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):  # a switch: its flag when that changes the default or a recipe's
            flags += switch_flags(name, value)
        elif isinstance(value, float) and value.is_integer():
            flags += [flag, str(int(value))]  # 270.0 s: --time-budget 270
        else:
            flags += [flag, str(value)]
    return flags


def print_report(report: dict) -> None:
    """Print a task's report as the one JSON object on the last stdout line."""
    print(json.dumps(report))
