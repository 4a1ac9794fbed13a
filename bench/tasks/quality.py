"""The explain-quality task: how far the explanations of a trained line model can be
trusted (visualize.quality: ground truth, randomisation, deletion/insertion), and the
deletion/insertion curves of the fruits recipe's model when ../shared/data has Fruits-360.

TensorFlow, and the figure modules with matplotlib, are imported in the functions that use
them (5-20 s), so that ``python bench/run.py --help`` and argument errors answer at once.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.tasks import data as data_tasks
from fruitcnn import runs
from fruitcnn.config import DataConfig, RunConfig, TrainConfig, config_from_settings, preset
from fruitcnn.data import Split, load_and_report, load_dataset
from fruitcnn.recipes import run_config

# explain-quality: test images measured on the line model and on the Fruits-360 model;
# the line model's data and epochs (None: train.py's defaults; the test makes them small).
_QUALITY_IMAGES, _QUALITY_FRUITS_IMAGES = 200, 32
_QUALITY_IMAGES_PER_CLASS, _QUALITY_EPOCHS = None, None
# The data randomisation's model: trained on shuffled labels until it memorises them
# (20 images per class, 60 epochs: 99.7% of the shuffled training labels in 56 s here).
_SHUFFLED_IMAGES_PER_CLASS, _SHUFFLED_EPOCHS = 20, 60


def _shuffled_labels(dataset, seed: int = 0):
    """The dataset with its training labels permuted (data randomisation: a model trained
    on it can only memorise) and the same shuffled training split as validation, so the
    model kept (the best on validation) is the one that memorised most; the test split
    keeps its labels."""
    train = dataset.train
    order = np.random.default_rng(seed).permutation(len(train))
    attributes = None if train.attributes is None else train.attributes[order]
    shuffled = Split(train.images, train.labels[order], attributes, train.masks)
    return dataclasses.replace(dataset, train=shuffled, val=shuffled)


def method_table(found, intervals, extra: dict | None = None) -> dict:
    """``{method: {measure: mean, measure_interval: [low, high], images: N}}`` from a
    quality result and its ``found.intervals()`` (NaN columns left out; the intervals: 95%
    bootstrap, images resampled)."""
    table = {}
    for method, row in found.summary().iterrows():
        values = {"images": int(intervals.loc[method, "images"])}
        for name, value in row.items():
            if value == value:
                values[name] = round(float(value), 4)
                if f"{name}_low" in intervals:
                    bounds = intervals.loc[method, [f"{name}_low", f"{name}_high"]]
                    values[f"{name}_interval"] = [round(float(bound), 4) for bound in bounds]
        values.update((extra or {}).get(method, {}))
        table[method] = values
    return table


def _quality_misses(methods: dict) -> list[str]:
    """Where the line model's explanations miss the issue's goals, one line each (the
    goals of ``visualize.quality.failed_checks``, for the default methods and, for
    deletion, every method)."""
    from visualize.quality import MEASURED_MAPS, failed_checks

    misses = []
    for method, values in methods.items():
        for failure in failed_checks(method, values, masks=True):
            if method in MEASURED_MAPS or failure.startswith("deletion"):
                misses.append(f"{method}: {failure}")
    return misses


def chosen_methods(offered, methods=None) -> list[str]:
    """The maps to measure: ``offered`` (a model's ``available_methods``), or those of
    ``methods`` (bench/run.py --methods) in their order; ValueError for one not offered."""
    if methods is None:
        return list(offered)
    missing = [name for name in methods if name not in offered]
    if missing:
        raise ValueError(
            f"--methods: this model has no {', '.join(missing)}; it offers {', '.join(offered)}."
        )
    return list(methods)


def _write_figure(folder: Path, name: str, figure) -> str:
    from fruitcnn import plots

    png = plots.png_bytes(figure)
    runs.atomic_write(folder / name, lambda path: Path(path).write_bytes(png))
    return str(folder / name)


def _line_models(models: Path, background: str):
    """The line dataset (lines drawn on ``background``), the model train.py's defaults
    make of it, and the model that memorised shuffled labels (data randomisation)."""
    from fruitcnn.training import train

    data = DataConfig(dataset="line", background=background)
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
        shuffled, images, found.maps, head="class", targets=labels, settings=quality.MEASURED
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


def _line_quality(models: Path, out: Path, background: str, methods=None) -> dict:
    """Train the line model and one on shuffled labels, then measure every method (or
    ``methods``)."""
    from fruitcnn import plots
    from fruitcnn.evaluation import sample_indices
    from visualize import quality

    start = time.perf_counter()
    dataset, trained, shuffled = _line_models(models, background)
    train_s = time.perf_counter() - start
    chosen = sample_indices(len(dataset.test), _QUALITY_IMAGES)
    images, labels, masks = (
        array[chosen] for array in (dataset.test.images, dataset.test.labels, dataset.test.masks)
    )
    model = trained.model
    methods = chosen_methods(quality.available_methods(model), methods)
    print(f"measuring {len(methods)} methods on {len(chosen)} test images ...", file=sys.stderr)
    start = time.perf_counter()
    found = quality.quality_scores(model, images, target=labels, masks=masks, methods=methods)
    measures_s = time.perf_counter() - start
    print("cascading randomisation and the shuffled-label model ...", file=sys.stderr)
    start = time.perf_counter()
    extra, cascade = _randomisations(model, shuffled.model, images, labels, found)
    randomization_s = time.perf_counter() - start
    intervals = found.intervals()  # with the images measured: one bootstrap per table
    summary = found.summary().join(intervals)
    table = method_table(found, intervals, extra)
    summary["data_randomization_spearman"] = [
        extra[method]["data_randomization_spearman"] for method in summary.index
    ]
    runs.write_csv(out / "line-quality.csv", summary.reset_index().to_dict("records"))
    runs.write_csv(out / "line-cascade.csv", cascade.to_dict("records"))
    curves = plots.curves_figure(found.curves, title="line dataset: deletion and insertion")
    stages = plots.cascade_figure(cascade, title="line dataset: cascading randomisation")
    return {
        "test_accuracy": trained.metrics["test_accuracy"],
        # the shuffled-label model: the share of its (shuffled) training labels it
        # reproduces, and its accuracy on the real test labels (chance: 1/96)
        "shuffled_labels_train_accuracy": shuffled.metrics["val_accuracy"],
        "shuffled_labels_test_accuracy": shuffled.metrics["test_accuracy"],
        "background": background,
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


def _fruits_quality(models: Path, out: Path, methods=None) -> dict:
    """Deletion/insertion (and the full randomisation) of the fruits recipe's model on
    Fruits-360 test images, when ../shared/data has them (the default methods, or those
    of ``methods`` among them)."""
    from visualize.quality import MEASURED_MAPS

    recipe = data_tasks.RECIPES["fruits"]
    if not Path(recipe["data"]).exists():
        return {"skipped": f"{recipe['data']} does not exist"}
    measured = [name for name in MEASURED_MAPS if methods is None or name in methods]
    if not measured:
        return {"skipped": f"--methods names none of {', '.join(MEASURED_MAPS)}"}
    from fruitcnn import plots
    from fruitcnn.evaluation import sample_indices
    from fruitcnn.training import train
    from visualize import quality

    settings = {"dataset": str(recipe["data"]), **recipe["settings"]}
    start = time.perf_counter()
    dataset = load_and_report(config_from_settings(settings).data)
    config = run_config(settings, dataset=dataset)
    result = train(config, dataset=dataset, run_dir=models / "fruits", verbose=2)
    train_s = time.perf_counter() - start
    chosen = sample_indices(len(dataset.test), _QUALITY_FRUITS_IMAGES)
    images, labels = dataset.test.images[chosen], dataset.test.labels[chosen]
    start = time.perf_counter()
    found = quality.quality_scores(result.model, images, target=labels, methods=measured)
    intervals = found.intervals()
    summary = found.summary().join(intervals)
    runs.write_csv(out / "fruits-quality.csv", summary.reset_index().to_dict("records"))
    figure = plots.curves_figure(found.curves, title="Fruits-360: deletion and insertion")
    return {
        "test_accuracy": result.metrics["test_accuracy"],
        "images": int(len(chosen)),
        "patch": int(quality.default_patch(images.shape[1:])),
        "methods": method_table(found, intervals),
        "train_s": round(train_s, 1),
        "measures_s": round(time.perf_counter() - start, 1),
        "figures": [_write_figure(out, "fruits-curves.png", figure)],
    }


def run_explain_quality(keep: bool, background: str = "black", methods=None) -> dict:
    """Measure the explanations of a trained line model (its lines drawn on
    ``background``: ground truth, randomisation, deletion/insertion) and, when the data
    is there, of a Fruits-360 model; every method, or the maps named in ``methods``."""
    start = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("saved_models") / f"bench-explain-quality-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    scratch = None if keep else tempfile.TemporaryDirectory(prefix="fruitcnn-bench-")
    models = out if keep else Path(scratch.name)
    line = _line_quality(models, out, background, methods)
    print("Fruits-360 deletion and insertion ...", file=sys.stderr)
    fruits = _fruits_quality(models, out, methods)
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
