"""fruitcnn's one benchmark entry point: ``python bench/run.py TASK [--data PATH]``.

Tasks:
  line             96-class softmax on the generated line dataset (default settings)
  line-multihead   the four-head model (length, width, colour, angle) on the same data

Each task trains with exactly the defaults ``python train.py --dataset line
[--multihead]`` uses, then measures, in the same process:

* the machine's fp32 matmul peak (best of several 2048x2048 products), so throughput
  can be read against it;
* the step time of the model with fruitcnn's BatchNorm against the same network with
  ``keras.layers.BatchNormalization`` (interleaved rounds, median), i.e. what the
  hand-built layer costs.

Progress goes to stderr; the last stdout line is one JSON object with at least
``task``, ``test_accuracy`` (the aggregate for four heads) and ``wall_s`` (seconds
from data generation to a tested model).
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

TASKS = {"line": "single", "line-multihead": "multi"}
# Matmul size and repeats for the peak measurement (2 * 2048^3 = 17 GFLOP each).
_PEAK_SIZE, _PEAK_REPEATS = 2048, 8
# Interleaved rounds and steps per round of the batch-norm comparison.
_BN_ROUNDS, _BN_STEPS = 10, 15


def matmul_peak_gflops() -> float:
    """Best achieved fp32 GFLOP/s of a large TensorFlow matmul on this machine."""
    import tensorflow as tf

    a = tf.random.normal((_PEAK_SIZE, _PEAK_SIZE))
    b = tf.random.normal((_PEAK_SIZE, _PEAK_SIZE))
    product = tf.function(lambda x, y: tf.matmul(x, y))
    product(a, b).numpy()
    best = 0.0
    for _ in range(_PEAK_REPEATS):
        start = time.perf_counter()
        product(a, b).numpy()
        best = max(best, 2 * _PEAK_SIZE**3 / (time.perf_counter() - start) / 1e9)
    return best


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
    from fruitcnn.training import steps_per_epoch, train

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
    step_seconds = sum(row["train_s"] for row in result.history)
    # images actually stepped on: incomplete last batches are dropped in training
    stepped = steps_per_epoch(len(dataset.train), config.train.batch_size) * config.train.batch_size
    images_per_s = stepped * len(result.history) / step_seconds
    report = {
        "task": task,
        "test_accuracy": metrics["test_accuracy"],
        "wall_s": round(wall_s, 2),
        "data_s": round(data_s, 2),
        "train_s": metrics["train_seconds"],
        "epochs": metrics["epochs"],
        "best_epoch": metrics["best_epoch"],
        "val_accuracy": metrics["val_accuracy"],
        "test_images": metrics["test_images"],
        "test_errors": int(round((1 - metrics["test_accuracy"]) * metrics["test_images"])),
        "parameters": metrics["parameters"],
        "forward_mflop_per_image": round(flops / 1e6, 3),
        # optimisation steps only (train_s also holds the per-epoch val/test passes)
        "step_s": round(step_seconds, 2),
        "train_img_per_s": round(images_per_s, 1),
        # a training step is ~3 forward passes of work (forward, two backward products)
        "train_gflops": round(3 * flops * images_per_s / 1e9, 2),
    }
    for key, value in metrics.items():
        if key.startswith("test_") and key.endswith("_accuracy") and key != "test_accuracy":
            report[key] = value
    print("measuring the matmul peak and the batch-norm step costs ...", file=sys.stderr)
    report["matmul_peak_gflops"] = round(matmul_peak_gflops(), 1)
    report["peak_fraction"] = round(report["train_gflops"] / report["matmul_peak_gflops"], 3)
    report.update({key: round(value, 3) for key, value in bn_step_times(config, dataset).items()})
    report["run_dir"] = str(run_dir) if keep else None
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
    parser.add_argument("--data", default=None, help="data path (not used by the line tasks)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the trained run under saved_models/ (default: temp dir)"
    )
    args = parser.parse_args(argv)
    if args.data is not None:
        parser.error(f"task {args.task} generates its data; --data is not used (got {args.data!r}).")
    report = run_line(args.task, args.keep)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
