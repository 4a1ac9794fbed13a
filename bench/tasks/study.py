"""The study task: the line-filters study through study.py's engine (Keras Tuner, tables,
HParams) against the same trainings in a plain loop of train() calls, both in this run:
what the study machinery costs.

TensorFlow, and app.study with matplotlib, are imported in the function that uses
them (5-20 s), so that ``python bench/run.py --help`` and argument errors answer at once.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

# The study task's study file (small, generated data: no download).
_STUDY_FILE = Path(__file__).resolve().parents[2] / "studies" / "line-filters.toml"


def run_study_task() -> dict:
    """The line-filters study through run_study against a plain loop of the same
    train() calls (the same configs and data, no tuner, tables or HParams)."""
    import keras

    from app.study.plan import load_study
    from app.study.tables import best_row
    from app.study.tuning import TrialData, run_study
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
