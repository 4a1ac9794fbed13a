"""The report's sections about the run rather than its results: the setup (data,
configuration, hyperparameters), the architecture (layers, parameters, FLOPs, the heads'
branches) and the environment (machines and sessions)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import keras
import numpy as np
import pandas as pd

from app.report.pages import Facts, Figure, Section, Table, Text, duration_text
from app.report.sections import FIGURE_DPI
from fruitcnn import plots
from fruitcnn.model import flops_per_image
from fruitcnn.runs import environment
from visualize.targets import head_names


def setup_section(record, dataset) -> Section:
    """The data as read and every hyperparameter of the run."""
    data = record.data
    config = record.config.to_dict()
    config["arch"].pop("layers", None)  # shown once, as text
    layers_text = config["arch"].pop("layers_text", "")
    rows = []
    for section in ("data", "augment", "arch", "train"):
        for key, value in config.get(section, {}).items():
            rows.append(
                {
                    "section": section,
                    "setting": key,
                    "value": json.dumps(value) if not isinstance(value, str) else value,
                }
            )
    rows.append({"section": "run", "setting": "head", "value": record.config.head})
    blocks: list[Any] = []
    data_rows = [
        (key, data[key] if isinstance(data.get(key), str) else json.dumps(data.get(key)))
        for key in ("source", "format", "image_shape", "classes", "split", "images")
        if key in data
    ]
    if data_rows:
        blocks.append(
            Table(pd.DataFrame(data_rows, columns=["data", "value"]), "The data as read (data.json)")
        )
    for note in data.get("notes", []):
        blocks.append(Text(str(note), "note"))
    skipped = data.get("skipped") or []
    if skipped:
        blocks.append(
            Text(
                f"{len(skipped)} file(s) were skipped while reading the data; data.json lists each "
                "with its reason.",
                "warning",
            )
        )
    blocks.append(Text(f"Layers: {layers_text}"))
    blocks.append(
        Table(
            pd.DataFrame(rows),
            "Hyperparameters (config.json; python train.py --config config.json repeats the run)",
        )
    )
    return Section("Data and hyperparameters", "setup", blocks)


def architecture_section(model, files: dict[str, bytes]) -> Section:
    """Every layer with its output shape and parameters; totals and forward FLOPs."""
    rows = []
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        shape = "" if shape is None else str(tuple(shape.shape[1:]))
        trainable = sum(int(np.prod(weight.shape)) for weight in layer.trainable_weights)
        frozen = sum(int(np.prod(weight.shape)) for weight in layer.non_trainable_weights)
        rows.append(
            {
                "layer": layer.name,
                "type": type(layer).__name__,
                "output shape": shape,
                "trainable": trainable,
                "non-trainable": frozen,
            }
        )
    frame = pd.DataFrame(rows)
    total = int(frame["trainable"].sum() + frame["non-trainable"].sum())
    flops = flops_per_image(model)
    trainable, frozen = int(frame["trainable"].sum()), int(frame["non-trainable"].sum())
    text = (
        f"{total:,} parameters ({trainable:,} trainable, {frozen:,} "
        f"non-trainable: batch-norm moving statistics and the input normalisation); "
        f"{flops / 1e6:.2f} MFLOP per image (forward pass, conv and dense layers)."
    )
    formats = {"trainable": "{:,}", "non-trainable": "{:,}"}
    blocks: list[Any] = [Text(text)]
    trunk, heads = branches(model)
    if len(heads) > 1 or any(len(layers) > 2 for layers in heads.values()):
        figure = plots.branches_figure(
            trunk, heads, title="shared feature extractor and the heads' own layers"
        )
        png = plots.png_bytes(figure, dpi=FIGURE_DPI)
        files["architecture.png"] = png
        blocks.append(Figure("architecture.png", png, "The heads branch off the shared features."))
    blocks.append(Table(frame, "", formats))
    return Section("Architecture", "architecture", blocks)


def branches(model) -> tuple[list[str], dict[str, list[str]]]:
    """The model's shared layers (input to the last layer every head depends on) and
    each head's own layers after them, as ``name (type)`` labels in model order."""

    order = [layer.name for layer in model.layers]
    needs = {
        head: {layer.name for layer in keras.Model(model.inputs, model.get_layer(head).output).layers}
        for head in head_names(model)
    }
    shared = set.intersection(*needs.values()) if needs else set(order)

    def label(name: str) -> str:
        return f"{name} ({type(model.get_layer(name)).__name__})"

    trunk = [label(name) for name in order if name in shared and not name.startswith("image")]
    own = {head: [label(name) for name in order if name in layers - shared] for head, layers in needs.items()}
    return trunk, own


def _training_start(record) -> str:
    """When training started: the environment's ``start`` session, else (a run begun
    before environment.json existed) the first epoch's end minus its elapsed time."""
    starts = [session["time"] for session in record.environment if session.get("kind", "start") == "start"]
    if starts:
        return starts[0]
    if record.history and record.history[0].get("timestamp"):
        first = record.history[0]
        moment = datetime.datetime.fromisoformat(str(first["timestamp"]))
        moment -= datetime.timedelta(seconds=float(first.get("elapsed_s") or 0))
        return moment.isoformat(timespec="seconds") + " (from history.csv)"
    return "unknown"


def environment_section(record) -> Section:
    """Training sessions (start and resumes) with their versions, and this report's."""
    now = {**environment(), "kind": "report"}
    frame = pd.DataFrame([*record.environment, now]).fillna("").astype(str)  # a field a session lacks: ""
    finished = record.history[-1]["timestamp"] if record.history else None
    facts = [
        ("training started", _training_start(record)),
        ("last epoch finished", str(finished or "?")),
        (
            "training time",
            duration_text(record.metrics["train_seconds"]) if "train_seconds" in record.metrics else "?",
        ),
        ("sessions", str(len(record.environment))),
    ]
    table = Table(frame, "Sessions that trained this run (environment.json: start, resumes) and this report")
    return Section("Environment and timestamps", "environment", [Facts(facts), table])
