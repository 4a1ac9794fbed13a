"""The stl96 task: 96-px photos with the ECE4179 split (an STL-10 binary folder, or the
stand-in bench/standins.py builds from CIFAR-10); the ECE4179 deep net and the photo
recipe, each for the same training time budget, compared by accuracy against elapsed time.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench import common, standins
from bench.tasks import data as data_tasks

# What each run's report keeps in the task's report (under "deep" and "recipe").
_RUN_KEYS = (
    "test_accuracy",
    "wall_s",
    "arch",
    "recipe",
    "command",
    "epochs",
    "parameters",
    "forward_mflop_per_image",
    "peak_fraction",
    "precision",
    "precision_peak_fraction",
    "test_accuracy_by_epoch",
    "elapsed_s_by_epoch",
)


def run_stl96(data: str | None, keep: bool, budget_s: float | None) -> dict:
    """The 96-px task: the ECE4179 deep net and the photo recipe, same time budget."""
    recipes = data_tasks.RECIPES
    if data is None:
        data = _standin(recipes["cifar10"]["data"], recipes["stl96"]["data"])
    seconds = float(budget_s or recipes["stl96"]["budget_s"])
    # the test split after every epoch for both (the recipe would test only at the end):
    # the time each took to reach the deep net's accuracy is read off those curves
    shared = {**recipes["stl96"]["settings"], "time_budget": seconds, "test_each_epoch": True}
    runs_of = {}
    for name, settings in (("deep", {"arch": "ece4179-deep", **shared}), ("recipe", shared)):
        print(f"training {name}: {' '.join(common.train_flags(settings))} ...", file=sys.stderr)
        runs_of[name] = data_tasks.run_data(
            "stl96", data, keep, False, False, settings=settings, budget_s=seconds + common.SETUP_ALLOWANCE_S
        )
    deep_final = runs_of["deep"]["test_accuracy"]
    return {
        "task": "stl96",
        "test_accuracy": runs_of["recipe"]["test_accuracy"],
        "wall_s": round(sum(report["wall_s"] for report in runs_of.values()), 2),
        "data": data,
        "time_budget_s": seconds,
        "deep_test_accuracy": deep_final,
        "recipe_time_to_deep_accuracy_s": _time_to(runs_of["recipe"], deep_final),
        "deep_time_to_deep_accuracy_s": _time_to(runs_of["deep"], deep_final),
        **{name: {key: report.get(key) for key in _RUN_KEYS} for name, report in runs_of.items()},
        "matmul_peak_gflops": runs_of["recipe"]["matmul_peak_gflops"],
    }


def _standin(cifar: Path, folder: Path) -> str:
    """The STL-10 stand-in in ``folder``, built once from the CIFAR-10 copy ``cifar``."""
    if not Path(cifar).exists():
        raise SystemExit(
            f"bench/run.py: error: task stl96 builds its stand-in from CIFAR-10, and {cifar} does not "
            "exist; pass --data PATH (an stl10_binary folder, or photos in class folders)."
        )
    print("building the 96-px stand-in from CIFAR-10 (once) ...", file=sys.stderr)
    return str(standins.stl10_from_cifar10(cifar, Path(folder)))


def _time_to(report: dict, accuracy: float) -> float | None:
    """Seconds from the data file to the first epoch at ``accuracy`` or above (None: never)."""
    # (the accuracies by epoch are rounded to 4 decimals)
    for value, elapsed in zip(report["test_accuracy_by_epoch"], report["elapsed_s_by_epoch"]):
        if value is not None and value >= round(accuracy, 4):
            return round(report["data_s"] + elapsed, 1)
    return None
