"""The sections of a run's report, built from its evaluation and run files.

Each ``*_section`` function returns one :class:`~app.report.pages.Section`;
functions that draw figures or write tables add the files to ``files`` (name ->
bytes), which become the report folder. File names: ``curves.png``,
``curves-time.png``, ``confusion-<split>[-<head>].png`` (counts),
``confusion-<split>-normalised[-<head>].png``, ``pairs-<split>[-<head>].csv``,
``scores-<split>[-<head>].csv``, ``failures-<split>.csv`` (several heads),
``grid-<split>[-<head>]-NN.png`` with ``grid-<split>[-<head>].csv`` (which images
they show), ``quality[-<head>].csv`` and ``quality-curves[-<head>].png`` (explanation
quality) and ``summary.json``; ``[-<head>]`` only for
multi-head models.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from app.report.options import SPLIT_TITLES
from app.report.pages import Details, Facts, Figure, Row, Section, Table, Text, duration_text
from fruitcnn import evaluation, plots
from fruitcnn.runs import finite_json

# Splits shown open in the page; the others are folded away (they are all in the files).
OPEN_SPLIT = "test"
FOLDED_SPLITS = ("val", "train")
PERCENT = "{:.2%}"
SCORE_FORMATS = {"precision": "{:.3f}", "recall": "{:.3f}", "f1": "{:.3f}"}
# Figure resolution (dots per inch) of the report's PNG files.
FIGURE_DPI = 100
# Confusion matrices of more classes are shown at their own pixel size in a scrolling box.
NATURAL_SIZE_CLASSES = 40


def file_suffix(head: str, multi: bool) -> str:
    return f"-{head}" if multi else ""


def head_title(head: str) -> str:
    """Sub-heading of a head's part of a section (multi-head models)."""
    return f"head '{head}'"


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, float_format="%.6g").encode("utf-8")


def _is_multi(results: dict[str, evaluation.SplitResult]) -> bool:
    return len(next(iter(results.values())).heads) > 1


def summary_section(record, results) -> Section:
    """Headline figures, metrics per split (and head), and a check against metrics.json."""
    multi = _is_multi(results)
    metrics, data = record.metrics, record.data
    test, val = results["test"], results["val"]
    shape = data.get("image_shape", [])
    facts = [
        ("test accuracy" + (" (all heads)" if multi else ""), PERCENT.format(test.accuracy)),
        ("validation accuracy", PERCENT.format(val.accuracy)),
        (
            "test macro F1" + (" (mean of heads)" if multi else ""),
            f"{np.mean([head.averages.loc['macro', 'f1'] for head in test.heads.values()]):.3f}",
        ),
        ("best epoch", _best_epoch(record)),
        ("training time", duration_text(metrics["train_seconds"]) if "train_seconds" in metrics else "?"),
        *([("time budget", _budget_text(metrics["time_budget"]))] if metrics.get("time_budget") else []),
        ("parameters", f"{metrics['parameters']:,}" if "parameters" in metrics else "?"),
        (
            ("classes per head", " / ".join(str(len(names)) for names in record.classes.values()))
            if multi
            else ("classes", str(len(next(iter(record.classes.values())))))
        ),
        ("images", " / ".join(f"{results[name].images:,}" for name in ("train", "val", "test"))),
    ]
    blocks: list[Any] = [*_status_notes(record), Facts(facts)]
    blocks.append(
        Text(
            f"Data {data.get('name', record.config.data.dataset)!s}"
            + (f", images {'x'.join(str(size) for size in shape)}" if shape else "")
            + f"; head: {record.config.head}; architecture: {record.config.arch.name}. "
            "model.keras is the epoch with the best validation accuracy; the test split was not used "
            "to choose it. Images per split are train / validation / test."
        )
    )
    blocks.append(_split_table(results, metrics))
    blocks.extend(_consistency(results, metrics))
    return Section("Summary", "summary", blocks)


def _budget_text(spent: dict) -> str:
    """How a time budget was spent, in one line."""
    share = 100 * spent["used_s"] / spent["budget_s"] if spent.get("budget_s") else float("nan")
    return (
        f"{spent.get('budget_s', 0):g} s: {spent['used_s']:.0f} s used ({share:.0f}%), "
        f"{spent['steps']:,} steps = {spent['epochs']:g} epochs at {spent.get('step_ms', 0):.0f} ms per "
        f"step, evaluations {spent.get('eval_s_per_epoch', 0):.1f} s per epoch; the learning rate ended at "
        f"{spent.get('final_learning_rate', 0):.3g}"
        + ("" if spent.get("plans", 1) else " (the time ran out before the first plan)")
    )


def _best_epoch(record) -> str:
    """``2 of 4``; for an interrupted run the epochs finished so far, from its checkpoint."""
    metrics, state = record.metrics, record.state
    if record.status == "interrupted":
        finished = state.get("epoch", len(record.history))
        planned = record.config.train.epochs
        return f"{state.get('best_epoch', '?')} of {finished} finished so far ({planned} planned)"
    return f"{metrics.get('best_epoch', '?')} of {metrics.get('epochs', len(record.history))}"


def _status_notes(record) -> list[Text]:
    """Warnings at the top of the report: a run that diverged, was interrupted, or did
    not learn (metrics.json's ``warnings``)."""
    notes = [
        Text(f"Warning during training: {warning}", "warning")
        for warning in record.metrics.get("warnings", [])
    ]
    return _state_notes(record) + notes


def _state_notes(record) -> list[Text]:
    if record.status == "diverged":
        found = record.metrics["diverged"]
        return [
            Text(
                f"Training diverged: the {found.get('where', 'training')} loss became {found.get('loss')} at "
                f"epoch {found.get('epoch')}, step {found.get('step')} (learning rate "
                f"{found.get('learning_rate')}). This report shows epoch "
                f"{record.metrics.get('best_epoch')}'s "
                f"model, the best before it. To fix: {found.get('advice', 'lower the learning rate')}.",
                "warning",
            )
        ]
    if record.status == "interrupted":
        finished = record.state.get("epoch", len(record.history))
        return [
            Text(
                f"This run was interrupted after epoch {finished} of {record.config.train.epochs} (there is "
                "no "
                f"metrics.json yet): this report shows the best epoch so far. Continue it with "
                f"python train.py --resume {record.folder}.",
                "warning",
            )
        ]
    return []


def _split_table(results, metrics) -> Table:
    multi = _is_multi(results)
    rows = []
    for name in ("train", "val", "test"):
        result = results[name]
        row: dict[str, Any] = {"split": SPLIT_TITLES[name], "images": result.images}
        row["accuracy" + (" (all heads)" if multi else "")] = result.accuracy
        row["loss"] = float(metrics.get(f"{name}_loss", np.nan))
        for head, head_result in result.heads.items():
            prefix = f"{head} " if multi else ""
            if multi:
                row[f"{prefix}accuracy"] = head_result.accuracy
            row[f"{prefix}macro F1"] = head_result.averages.loc["macro", "f1"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    formats = {column: PERCENT for column in frame.columns if "accuracy" in column}
    formats.update({column: "{:.3f}" for column in frame.columns if "F1" in column})
    formats["loss"] = optional_format("{:.4f}")
    return Table(
        frame,
        "Metrics of model.keras (inference mode; loss from metrics.json, train loss not measured)",
        formats,
    )


def _consistency(results, metrics) -> list[Text]:
    """A warning when the accuracy measured now differs from the one recorded at training."""
    notes = []
    for name in ("val", "test"):
        recorded = metrics.get(f"{name}_accuracy")
        if recorded is None:
            continue
        measured = results[name].accuracy
        # half an image of tolerance: float32 sums of a different batch order
        if abs(float(recorded) - measured) > 0.5 / max(results[name].images, 1):
            notes.append(
                Text(
                    f"The {SPLIT_TITLES[name]} accuracy measured now ({measured:.4%}) differs from the one "
                    f"training recorded in metrics.json ({float(recorded):.4%}): the data or the model "
                    "changed since training.",
                    "warning",
                )
            )
    return notes


def curves_section(record, files: dict[str, bytes]) -> Section:
    """Learning curves per epoch and per wall-clock time, and the history table."""
    if not record.history:
        return Section("Learning curves", "curves", [Text("history.csv has no finished epoch.", "warning")])
    heads = list(record.classes) if len(record.classes) > 1 else []
    best = record.metrics.get("best_epoch")
    figures = []
    for x, name, caption in (
        ("epoch", "curves.png", "Loss and accuracy per epoch"),
        ("time", "curves-time.png", "The same against wall-clock time since the start of training"),
    ):
        figure = plots.learning_curves(record.history, heads=heads, x=x, best_epoch=best)
        png = plots.png_bytes(figure, dpi=FIGURE_DPI)
        files[name] = png
        figures.append(Figure(name, png, f"{caption} (dotted line: the best validation epoch, model.keras)."))
    blocks: list[Any] = list(figures)  # one above the other: side by side they shrink to 60%
    blocks.append(
        Text(
            "Train figures are running means over each epoch in training mode (dropout on, batch "
            "statistics); validation and test are measured after each epoch in inference mode.",
            "note",
        )
    )
    blocks.append(Details("Per-epoch log (history.csv)", [_history_table(record.history)]))
    return Section("Learning curves", "curves", blocks)


def _history_table(history: Sequence[dict[str, Any]]) -> Table:
    frame = pd.DataFrame(history)
    keep = [
        column
        for column in frame.columns
        if column in ("epoch", "timestamp", "elapsed_s", "train_s", "lr") or column.count("_") == 1
    ]
    frame = frame[keep].apply(
        lambda column: column if column.name == "timestamp" else pd.to_numeric(column, errors="coerce")
    )
    formats = {
        column: optional_format("{:.4f}") for column in keep if column.endswith(("_loss", "_accuracy"))
    }
    formats["lr"] = optional_format("{:.3g}")
    return Table(frame, "", formats, file=None)


def optional_format(pattern: str):
    """A formatter that leaves missing values (NaN, empty) as an empty cell."""

    def format_value(value):
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
            return ""
        return pattern.format(value)

    return format_value


def failures_section(results, files: dict[str, bytes]) -> Section:
    """Multi-head models: accuracy per head and the head combinations that fail."""
    blocks: list[Any] = [
        Text(
            "An image counts as right only when every head is right (the aggregate accuracy). "
            "Each misclassified image is counted once, under the exact set of heads that got it wrong."
        )
    ]
    for name in ("test", "val", "train"):
        result = results[name]
        frame = result.failures
        files[f"failures-{name}.csv"] = csv_bytes(frame)
        table = Table(
            frame,
            f"{SPLIT_TITLES[name]}: {result.images:,} images, {int((~result.all_right).sum()):,} with a "
            f"wrong head (aggregate accuracy {result.accuracy:.2%})",
            {"share of images": PERCENT, "share of errors": PERCENT},
            bars=("share of errors",),
            file=f"failures-{name}.csv",
        )
        heads = pd.DataFrame(
            {
                "head": list(result.heads),
                "accuracy": [head.accuracy for head in result.heads.values()],
                "errors": [int((~head.correct).sum()) for head in result.heads.values()],
                "macro F1": [head.averages.loc["macro", "f1"] for head in result.heads.values()],
            }
        )
        head_table = Table(
            heads, f"{SPLIT_TITLES[name]}: per head", {"accuracy": PERCENT, "macro F1": "{:.3f}"}
        )
        if frame.empty:
            table_blocks: list[Any] = [head_table, Text(f"No {SPLIT_TITLES[name]} image has a wrong head.")]
        else:
            table_blocks = [head_table, table]
        blocks.extend(
            table_blocks if name == OPEN_SPLIT else [Details(f"{SPLIT_TITLES[name]} split", table_blocks)]
        )
    return Section("Heads and their failures", "heads", blocks)


def matrices_section(results, options, files: dict[str, bytes]) -> Section:
    """Confusion matrices (counts and row-normalised) of every split and head, and the
    most confused pairs."""
    multi = _is_multi(results)
    blocks: list[Any] = [
        Text(
            "Rows are the true classes, columns the predicted ones. Counts use a square-root colour "
            "scale so single mistakes stay visible; the normalised matrices divide each row by its "
            "class's images (recall on the diagonal)."
            + (
                " Classes are ordered so that confused classes sit together."
                if options.order == "confusion"
                else ""
            )
        )
    ]
    for head in results["test"].heads:
        if multi:
            blocks.append(head_title(head))
        order = evaluation.confusion_order(results["val"].heads[head].confusion, options.order)
        for split in ("test", *FOLDED_SPLITS):
            split_blocks = _matrix_blocks(
                results[split].heads[head], split, head, multi, order, options, files
            )
            blocks.extend(
                split_blocks
                if split == OPEN_SPLIT
                else [Details(f"{SPLIT_TITLES[split]} split", split_blocks)]
            )
    return Section("Confusion matrices", "confusion", blocks)


def _matrix_blocks(result, split, head, multi, order, options, files) -> list[Any]:
    suffix = file_suffix(head, multi)
    where = f"{SPLIT_TITLES[split]} ({result.labels.shape[0]:,} images)" + (f", head {head}" if multi else "")
    figures: list[Figure] = []
    for normalise, name in (
        (False, f"confusion-{split}{suffix}.png"),
        (True, f"confusion-{split}-normalised{suffix}.png"),
    ):
        title = f"{where}: {'share of each true class' if normalise else 'images'}"
        figure = plots.confusion_figure(
            result.confusion, result.class_names, normalise=normalise, order=order, title=title
        )
        png = plots.png_bytes(figure, dpi=FIGURE_DPI, tight=False)
        files[name] = png
        # large matrices keep their pixel size (the page scrolls them) so labels stay legible
        natural = len(result.class_names) > NATURAL_SIZE_CLASSES
        figures.append(Figure(name, png, f"Confusion matrix, {title}.", natural=natural))
    blocks: list[Any] = figures if natural else [Row(figures)]
    pairs = evaluation.confused_pairs(result, options.pairs)
    pairs_file = f"pairs-{split}{suffix}.csv"
    files[pairs_file] = csv_bytes(pairs)
    if pairs.empty:
        blocks.append(
            Text(f"No {SPLIT_TITLES[split]} image is misclassified" + (f" by head {head}." if multi else "."))
        )
    else:
        blocks.append(
            Table(
                pairs,
                f"Most confused pairs, {where}",
                {"share of true class": PERCENT},
                bars=("share of true class",),
                file=pairs_file,
            )
        )
    return blocks


def scores_frame(result: evaluation.HeadResult) -> pd.DataFrame:
    """The per-class table followed by the three averages (CSV and pages); the
    averages rows leave ``predicted`` and ``correct`` empty."""
    averages = result.averages.reset_index(names="class")
    averages["class"] = [f"{name} average" for name in averages["class"]]
    table = pd.concat([result.scores, averages], ignore_index=True)
    return table[list(evaluation.SCORE_COLUMNS)]


def scores_section(results, files: dict[str, bytes]) -> Section:
    """Per-class precision, recall and F1 with macro, micro and weighted averages."""
    multi = _is_multi(results)
    blocks: list[Any] = [
        Text(
            "Precision: share of the images predicted as the class that are of the class; recall: share "
            "of the class's images predicted as it; F1: their harmonic mean. A class that is never "
            "predicted has precision 0 (0/0, marked red) and F1 0. Macro: plain mean over the classes "
            "present in the split or its predictions; micro: pooled over images (equals accuracy); "
            "weighted: mean weighted by support."
        )
    ]
    for head in results["test"].heads:
        if multi:
            blocks.append(head_title(head))
        for split in ("test", *FOLDED_SPLITS):
            result = results[split].heads[head]
            frame = scores_frame(result)
            name = f"scores-{split}{file_suffix(head, multi)}.csv"
            files[name] = csv_bytes(frame)
            frame = frame.assign(never_predicted=frame["predicted"].eq(0))
            table = Table(
                frame,
                f"{SPLIT_TITLES[split]}: {result.labels.shape[0]:,} images"
                + (f", head {head}" if multi else ""),
                {
                    **SCORE_FORMATS,
                    **{column: optional_format("{:.0f}") for column in ("support", "predicted", "correct")},
                },
                bars=("precision", "recall", "f1"),
                file=name,
                highlight="never_predicted",
            )
            blocks.append(table if split == OPEN_SPLIT else Details(f"{SPLIT_TITLES[split]} split", [table]))
    return Section("Precision, recall and F1 per class", "scores", blocks)


def _grid_row(result, index: int, right: np.ndarray, wrong: np.ndarray) -> plots.GridRow:
    confidence, predictions = result.confidence, result.predictions
    return plots.GridRow(
        result.class_names[index],
        [(int(image), float(confidence[image])) for image in right],
        [(int(image), result.class_names[predictions[image]], float(confidence[image])) for image in wrong],
    )


def _grid_table(result, right: dict, wrong: dict) -> pd.DataFrame:
    """The images of the grids: which image of the split, its classes and probability."""
    rows = []
    for kind, chosen in (("correct", right), ("mistake", wrong)):
        for index, images in chosen.items():
            for rank, image in enumerate(images, 1):
                rows.append(
                    {
                        "true": result.class_names[index],
                        "kind": kind,
                        "rank": rank,
                        "image": int(image),
                        "predicted": result.class_names[result.predictions[image]],
                        "probability": float(result.confidence[image]),
                    }
                )
    return pd.DataFrame(rows, columns=["true", "kind", "rank", "image", "predicted", "probability"])


def grids_section(dataset, results, options, files: dict[str, bytes]) -> Section:
    """The most confident correct and misclassified images of each class."""
    split = options.grid_split
    images = dataset.splits[split].images
    multi = _is_multi(results)
    blocks: list[Any] = [
        Text(
            f"For every class of the {SPLIT_TITLES[split]} split: the {options.top_k} images the model "
            f"classified right with the highest probability (left, green, with that probability) and the "
            f"{options.top_k} it got wrong with the highest probability for the wrong class (right, red, "
            "with the predicted class and its probability)."
        )
    ]
    for head, result in results[split].heads.items():
        if multi:
            blocks.append(head_title(head))
        right = evaluation.most_confident(result, options.top_k, correct=True)
        wrong = evaluation.most_confident(result, options.top_k, correct=False)
        files[f"grid-{split}{file_suffix(head, multi)}.csv"] = csv_bytes(_grid_table(result, right, wrong))
        count = len(result.class_names)
        for number, start in enumerate(range(0, count, options.grid_classes), 1):
            chunk = range(start, min(start + options.grid_classes, count))
            rows = [_grid_row(result, index, right[index], wrong[index]) for index in chunk]
            where = f"{SPLIT_TITLES[split]}{', head ' + head if multi else ''}"
            title = f"{where}: classes {chunk[0] + 1}-{chunk[-1] + 1} of {count}"
            figure = plots.confident_grid(images, rows, columns=options.top_k, title=title, dpi=FIGURE_DPI)
            name = f"grid-{split}{file_suffix(head, multi)}-{number:02d}.png"
            png = plots.png_bytes(figure, dpi=FIGURE_DPI, tight=False)
            files[name] = png
            blocks.append(Figure(name, png, f"Most confident correct and misclassified images, {title}."))
    return Section(f"Most confident right and wrong ({SPLIT_TITLES[split]})", "images", blocks)


def summary_json(record, results) -> bytes:
    """The headline numbers of the report as JSON."""
    summary: dict[str, Any] = {
        "run": record.folder.name,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "best_epoch": record.metrics.get("best_epoch"),
    }
    for name, result in results.items():
        entry: dict[str, Any] = {"images": result.images, "accuracy": result.accuracy}
        for head, head_result in result.heads.items():
            prefix = f"{head}_" if len(result.heads) > 1 else ""
            if prefix:
                entry[f"{prefix}accuracy"] = head_result.accuracy
            for average in evaluation.AVERAGES:
                entry[f"{prefix}{average}_f1"] = float(head_result.averages.loc[average, "f1"])
        summary[name] = entry
    return (json.dumps(finite_json(summary), indent=2, allow_nan=False) + "\n").encode("utf-8")
