"""The line tasks (line, line-multihead): train with train.py's defaults on the generated
line dataset, then measure the report's writing time, the machine's matmul peak and the
step time of fruitcnn's BatchNorm against keras.layers.BatchNormalization.

TensorFlow and the modules that load it (5-20 s) are imported in the functions that use
them, so that ``python bench/run.py --help`` and argument errors answer at once.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common
from fruitcnn.config import DataConfig, RunConfig, preset
from fruitcnn.data import load_dataset

# Interleaved rounds and steps per round of the batch-norm comparison.
_BN_ROUNDS, _BN_STEPS = 10, 15


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


def run_line(task: str, head: str, keep: bool) -> dict:
    """Train the line task with the default settings and ``head`` (single or multi) and
    measure it."""
    from fruitcnn.model import flops_per_image
    from fruitcnn.training import train

    config = RunConfig(data=DataConfig(dataset="line"), arch=preset("line"), head=head)
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
        **common.training_speed(result, dataset, config, flops),
    }
    for key, value in metrics.items():
        if key.startswith("test_") and key.endswith("_accuracy") and key != "test_accuracy":
            report[key] = value
    print("writing the report ...", file=sys.stderr)
    report["report_s"] = round(_report_seconds(run_dir, dataset, result.model), 2)
    print("measuring the matmul peak and the batch-norm step costs ...", file=sys.stderr)
    report["matmul_peak_gflops"] = round(common.matmul_peak_gflops(), 1)
    report["peak_fraction"] = round(report["train_gflops"] / report["matmul_peak_gflops"], 3)
    report.update({key: round(value, 3) for key, value in bn_step_times(config, dataset).items()})
    report["run_dir"] = str(run_dir) if keep else None
    if scratch is not None:
        scratch.cleanup()
    return report


def _report_seconds(run_dir, dataset, model) -> float:
    """Seconds to write the run's report (evaluation of all three splits, figures, pages)."""
    from app.report.build import build_report

    start = time.perf_counter()
    build_report(run_dir, dataset=dataset, model=model, progress=lambda line: print(line, file=sys.stderr))
    return time.perf_counter() - start
