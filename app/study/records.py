"""What a study's trial leaves besides its run folder: the metrics Keras Tuner keeps,
the HParams records for TensorBoard, and the check that a finished run folder holds the
trial's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from app.study.plan import RUNS_DIR, Parameter, Study
from fruitcnn import runs
from fruitcnn.model import flops_per_image


def trial_metrics(result, wall_seconds: float) -> dict[str, float]:
    """What Keras Tuner keeps of a finished trial (floats only) and the tables show."""
    kept = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "parameters", "best_epoch", "epochs")
    metrics = {name: float(result.metrics[name]) for name in kept}
    metrics["flops_per_image"] = float(flops_per_image(result.model))
    metrics["train_seconds"] = float(result.metrics["train_seconds"])
    metrics["wall_seconds"] = wall_seconds
    return metrics


def differing_settings(planned: dict[str, Any], saved: Any) -> list[str]:
    """The dotted names of the settings where a run's saved config.json differs from the
    planned config (``planned`` as ``RunConfig.to_dict`` gives it, compared as
    ``runs.write_json`` would have written it)."""
    return _differences(json.loads(json.dumps(runs.finite_json(planned))), saved, "")


def _differences(planned: Any, saved: Any, where: str) -> list[str]:
    if isinstance(planned, dict) and isinstance(saved, dict):
        return [
            found
            for name in sorted(set(planned) | set(saved))
            for found in _differences(planned.get(name), saved.get(name), f"{where}{name}.")
        ]
    return [] if planned == saved else [where.rstrip(".") or "the whole config"]


def hparam_values(parameter: Parameter) -> list:
    """A parameter's values as the HParams dashboard shows them: numbers when all are
    numbers (so it sorts and plots them as such), else the labels."""
    numeric = all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in parameter.values
    )
    return [float(value) for value in parameter.values] if numeric else list(parameter.labels)


def write_trial_hparams(study: Study, run: Path, labels: dict[str, str], metrics: dict[str, float]) -> None:
    """The trial's values and results for TensorBoard's HParams dashboard (in the run's tb/)."""
    values = {
        parameter.name: hparam_values(parameter)[parameter.labels.index(labels[parameter.name])]
        for parameter in study.parameters
    }
    writer = tf.summary.create_file_writer(str(run / runs.TENSORBOARD_DIR))
    with writer.as_default():
        hparams_api.hparams(values, trial_id=run.name)
        for name in ("val_accuracy", "test_accuracy"):
            tf.summary.scalar(f"study/{name}", metrics[name], step=0)
    writer.close()


def write_hparams_config(folder: Path, study: Study) -> None:
    """The HParams dashboard's columns: each parameter with its values, and the two accuracies."""
    logdir = folder / RUNS_DIR
    if logdir.is_dir() and any(path.name.startswith("events.") for path in logdir.iterdir()):
        return
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hparams_api.hparams_config(
            hparams=[
                hparams_api.HParam(parameter.name, hparams_api.Discrete(hparam_values(parameter)))
                for parameter in study.parameters
            ],
            metrics=[
                hparams_api.Metric("study/val_accuracy", display_name="best validation accuracy"),
                hparams_api.Metric("study/test_accuracy", display_name="test accuracy"),
            ],
        )
    writer.close()
