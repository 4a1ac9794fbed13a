"""The shortcut task: explanations on clutter, and whether they catch a model that took a
shortcut.

Objects on a plain background (``--data``, default Fruits-360) are pasted on photos
(``--backgrounds``, default CIFAR-10) with their masks (train.py --paste-on). One model is
trained on them as they are; its explanations are measured against the object masks
(pointing game, mask mass beside the object's area share, with intervals), and its
decisions checked (``visualize.quality.region_check``) on test images with each cue planted.
Then, per cue kind, a model is trained with that cue planted in its training and
validation images (train.py --cue) and checked on the cued test images: the share of
images flagged as relying on the cue (removing it, or putting the cues of the other
classes in its place), the accuracy with the cue, without it and with another class's,
and each method's share of importance on the object, the cue and the rest.

TensorFlow, and the modules that load it, are imported in the functions that use them
(5-20 s), so that ``python bench/run.py --help`` and argument errors answer at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench import common
from bench.tasks import quality as quality_tasks
from fruitcnn.config import config_from_settings
from fruitcnn.data import load_and_report
from visualize.methods import REPORTED_MAPS

# The objects, the photos they are pasted on, and the training settings (the fruits
# recipe's network and rate; 4 epochs: 98.3% test on the composites, 74 s here).
OBJECTS = common.SHARED / "fruits-360-24.tgz"
BACKGROUNDS = common.SHARED / "cifar10-jpg.tgz"
SETTINGS = {"arch": "fruits", "epochs": 4, "batch_size": 64, "lr": 0.01}
CUES = ("patch", "border", "hue")
# Test images measured (a seeded choice) per model.
IMAGES = 200
# Every method of the report is measured on the composites; the region checks (six, of
# 200 images each) leave out RISE, whose 2,000 masks per image would take most of the task.
SKIPPED_IN_CHECKS = ("rise",)
# The goals: occlusion's pointing on the composites; flagged shares.
POINTING_GOAL, FLAGGED_GOAL = 0.90, 0.90


def _train(settings: dict, folder: Path):
    from fruitcnn.recipes import run_config
    from fruitcnn.training import train

    dataset = load_and_report(config_from_settings(settings).data)
    config = run_config(settings, dataset=dataset)
    start = time.perf_counter()
    result = train(config, dataset=dataset, run_dir=folder, verbose=2)
    return dataset, result, time.perf_counter() - start


def _check_figures(found) -> dict:
    """The figures of a region check: flagged share, accuracies, mean drops, and per
    method the mean importance shares (rounded)."""
    from visualize.quality.regions import RELIANCE_MARGIN

    summary = found.summary()
    removal = found.removal
    figures = {
        "flagged": round(float(removal["relies_on_cue"].mean()), 4),
        # what removal alone flags (the check before substitution)
        "flagged_by_removal": round(float((removal["drop_cue"] >= RELIANCE_MARGIN).mean()), 4),
        "cue_over_object": round(float(removal["outweighs_cue"].mean()), 4),
        "accuracy_with_cue": round(found.accuracy["images"], 4),
        "accuracy_without_cue": round(found.accuracy["clean"], 4),
        "accuracy_other_cue": round(found.accuracy["other_cue"], 4),
        "drop_cue": round(float(removal["drop_cue"].mean()), 4),
        "drop_other_cue": round(float(removal["drop_other_cue"].mean()), 4),
        "drop_object": round(float(removal["drop_object"].mean()), 4),
        "area": {region: round(float(summary.loc["area", region]), 4) for region in found.regions},
        "shares": {
            method: {column: round(float(value), 4) for column, value in row.items() if value == value}
            for method, row in summary.drop(index=["area", "removal"]).iterrows()
        },
        "verdict": found.verdict(),
    }
    return figures


def run_shortcut(objects: str, backgrounds: str, keep: bool, methods=None) -> dict:
    """Train on the composites with and without each cue and measure (see the module);
    every method of the report, or the maps named in ``methods``."""
    import tempfile

    import numpy as np

    from fruitcnn.data import composite
    from fruitcnn.evaluation import sample_indices
    from visualize import quality

    start = time.perf_counter()
    out = Path("saved_models") / f"bench-shortcut-{time.strftime('%Y%m%d-%H%M%S')}"
    scratch = None if keep else tempfile.TemporaryDirectory(prefix="fruitcnn-bench-")
    models = out if keep else Path(scratch.name)
    base = {"dataset": objects, "paste_on": backgrounds, **SETTINGS}
    print("training on the composites without a cue ...", file=sys.stderr)
    dataset, clean_run, train_s = _train(base, models / "clean")
    chosen = sample_indices(len(dataset.test), IMAGES)
    test = dataset.test.take(chosen)
    model, classes = clean_run.model, len(dataset.class_names)
    offered = quality.available_methods(model)
    if methods is None:
        measured = [name for name in REPORTED_MAPS if name in offered]
    else:
        measured = quality_tasks.chosen_methods(offered, methods)
    methods = [name for name in measured if name not in SKIPPED_IN_CHECKS]
    measure_start = time.perf_counter()
    found = quality.quality_scores(
        model, test.images, target=test.labels, masks=test.masks, methods=measured, randomize=False
    )
    table = quality_tasks.method_table(found, found.intervals())
    area = float(test.masks.mean())
    measures_s = time.perf_counter() - measure_start
    cues, misses = {}, []
    for kind in CUES:
        cued, where = composite.plant_cue(test.images, test.labels, kind, classes, test.masks)
        options = {"target": test.labels, "methods": methods}

        def substitutes(split, kind=kind):  # the other classes' cues on the clean test images
            return composite.cue_substitutes(split.images, split.labels, kind, classes, split.masks)

        on_clean = quality.region_check(
            model,
            cued,
            test.masks,
            cue_masks=where,
            clean=test.images,
            substitutes=substitutes(test),
            **options,
        )
        print(f"training with the {kind} cue ...", file=sys.stderr)
        cue_data, cue_run, cue_train_s = _train({**base, "cue": kind}, models / f"cue-{kind}")
        cue_test = cue_data.test.take(chosen)
        on_cued = quality.region_check(
            cue_run.model,
            cue_test.cued,
            cue_test.masks,
            cue_masks=cue_test.cue_masks,
            clean=cue_test.images,
            substitutes=substitutes(cue_test),
            **options,
        )
        cues[kind] = {
            "trained_with_cue": {**_check_figures(on_cued), "train_s": round(cue_train_s, 1)},
            "trained_without_cue": _check_figures(on_clean),
        }
        if cues[kind]["trained_with_cue"]["flagged"] < FLAGGED_GOAL:
            misses.append(f"{kind}: flagged {cues[kind]['trained_with_cue']['flagged']:.2f} < {FLAGGED_GOAL}")
        if cues[kind]["trained_without_cue"]["flagged"] > 0:
            misses.append(f"{kind}: the model trained without the cue flagged for some images")
        if on_cued.accuracy["clean"] >= on_cued.accuracy["images"]:
            misses.append(f"{kind}: no accuracy drop without the cue")
    pointing = table.get("occlusion_prob", {}).get("pointing", np.nan)
    if not pointing >= POINTING_GOAL:
        misses.append(f"occlusion_prob pointing {pointing:.3f} < {POINTING_GOAL}")
    for method in ("occlusion_prob", "occlusion_loss"):
        if method in table and not table[method]["mask_mass"] > area:
            misses.append(f"{method} mask mass {table[method]['mask_mass']:.3f} <= area share {area:.3f}")
    report = {
        "task": "shortcut",
        "test_accuracy": clean_run.metrics["test_accuracy"],
        "wall_s": round(time.perf_counter() - start, 1),
        "objects": objects,
        "backgrounds": backgrounds,
        "images": int(len(chosen)),
        "object_area_share": round(area, 4),
        "methods": table,
        "cues": cues,
        "meets_goals": not misses,
        "misses": misses,
        "train_s": round(train_s, 1),
        "measures_s": round(measures_s, 1),
        "data": dataset.info.get("ground_truth", []),
    }
    if scratch is not None:
        scratch.cleanup()
    return report
