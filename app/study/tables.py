"""A study's result tables: one row per planned trial (study.csv), the markdown
summary (study.md) and the figure (study.png), from the tuner's trial results."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.study.plan import (
    DONE,
    FAILED,
    FLOP_DIGITS,
    LOSS_DIGITS,
    MFLOP,
    PENDING,
    RUNNING,
    RUNS_DIR,
    SECOND_DIGITS,
    STUDY_CSV,
    STUDY_MD,
    STUDY_PLOT,
    Study,
    setting_text,
    trial_folder,
)
from fruitcnn import runs
from fruitcnn.plots import png_bytes, study_figure


@dataclass(frozen=True)
class TrialResult:
    """What the tuner's state says about one trial."""

    trial_id: str
    labels: dict[str, str]
    status: str
    metrics: dict[str, float]
    message: str = ""


def labels_key(labels: dict[str, str]) -> str:
    """One text per combination of labels (the order of the names does not matter)."""
    return json.dumps(labels, sort_keys=True)


def study_rows(study: Study, results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """One row per planned trial, in plan order, from the tuner's trial results.

    A plan entry tried more than once (a failed trial re-run later) shows its last try.
    """
    latest: dict[str, TrialResult] = {}
    for result in sorted(results, key=lambda item: int(item.trial_id)):
        latest[labels_key(result.labels)] = result
    rows = []
    for trial in study.trials:
        result = latest.get(labels_key(trial.labels))
        metrics = result.metrics if result else {}
        row: dict[str, Any] = {"trial": trial.number, **trial.labels}
        row.update(
            {
                "parameters": _integer(metrics.get("parameters")),
                "mflop_per_image": _rounded(metrics.get("flops_per_image"), MFLOP, FLOP_DIGITS),
                "best_val_accuracy": _rounded(metrics.get("val_accuracy"), 1.0, None),
                "best_val_loss": _rounded(metrics.get("val_loss"), 1.0, None),
                "test_accuracy": _rounded(metrics.get("test_accuracy"), 1.0, None),
                "best_epoch": _integer(metrics.get("best_epoch")),
                "epochs_trained": _integer(metrics.get("epochs")),
                "train_s": _rounded(metrics.get("train_seconds"), 1.0, SECOND_DIGITS),
                "wall_s": _rounded(metrics.get("wall_seconds"), 1.0, SECOND_DIGITS),
                "status": result.status if result else PENDING,
                "run": f"{RUNS_DIR}/{trial_folder(study, trial)}" if result else "",
                "message": _last_line(result.message) if result and result.status == FAILED else "",
            }
        )
        rows.append(row)
    return rows


def _integer(value: float | None) -> int | str:
    return "" if value is None or math.isnan(value) else int(round(value))


def _rounded(value: float | None, scale: float, digits: int | None) -> float | str:
    """Scaled and rounded (``digits`` None: kept exact, e.g. accuracies, so every
    table rounds them once, alike)."""
    if value is None or math.isnan(value):
        return ""
    return value * scale if digits is None else round(value * scale, digits)


def _last_line(message: str) -> str:
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def best_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished trial with the highest validation accuracy (never chosen on test).

    Ties (easy data saturates at 100%) go to the lower validation loss, as within a
    run, then to the fewer parameters, then to the earlier trial.
    """
    done = [row for row in rows if row["status"] == DONE]
    if not done:
        return None

    def rank(row):
        loss = row["best_val_loss"] if row["best_val_loss"] != "" else math.inf
        return (row["best_val_accuracy"], -loss, -row["parameters"], -row["trial"])

    return max(done, key=rank)


def write_tables(folder: Path, study: Study, rows: Sequence[dict[str, Any]], *, wall_s: float | None = None):
    """Write study.csv, study.md and study.png (accuracy against each parameter).

    Returns:
        The paths written.
    """

    folder.mkdir(parents=True, exist_ok=True)
    runs.write_csv(folder / STUDY_CSV, rows)
    written = [folder / STUDY_CSV]
    finished = [row for row in rows if row["status"] == DONE]
    if finished:
        parameters = [(parameter.name, list(parameter.labels)) for parameter in study.parameters]
        picture = png_bytes(study_figure(parameters, finished))
        runs.atomic_write(folder / STUDY_PLOT, lambda temporary: Path(temporary).write_bytes(picture))
        written.append(folder / STUDY_PLOT)
    elif (folder / STUDY_PLOT).exists():
        (folder / STUDY_PLOT).unlink()
    runs.write_text(folder / STUDY_MD, study_markdown(study, rows, folder, wall_s=wall_s))
    written.append(folder / STUDY_MD)
    return written


def study_markdown(
    study: Study, rows: Sequence[dict[str, Any]], folder: Path, *, wall_s: float | None
) -> str:
    """study.md: what was varied, the table, the plot and the best trial's run."""
    lines = [f"# Study {study.name}", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += _summary_lines(study, rows, folder, wall_s)
    lines += _markdown_table(study, rows, folder, best_row(rows))
    if (folder / STUDY_PLOT).exists() and any(row["status"] == DONE for row in rows):
        lines += ["", f"![accuracy against each parameter]({STUDY_PLOT})"]
    lines += _settings_lines(study)
    failed = [row for row in rows if row["status"] == FAILED]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- trial {row['trial']}: {row['message'] or 'see ' + row['run']}" for row in failed]
    return "\n".join(lines) + "\n"


def _summary_lines(study: Study, rows, folder: Path, wall_s: float | None) -> list[str]:
    """Where the study came from, how far it is, and its best trial."""
    counts = {
        status: sum(row["status"] == status for row in rows) for status in (DONE, FAILED, RUNNING, PENDING)
    }
    state = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    source = f"`{study.source}`" if study.source else "(no file)"
    total = f"; {wall_s / 60:.1f} min of trials" if wall_s else ""
    plural = "trial" if len(rows) == 1 else "trials"
    lines = [f"Study file {source}; {len(rows)} {plural}: {state}{total}.", ""]
    best = best_row(rows)
    if best is not None:
        labels = ", ".join(f"{parameter.name}={best[parameter.name]}" for parameter in study.parameters)
        lines += [
            f"**Best on validation: trial {best['trial']}** ({labels}): "
            f"{100 * best['best_val_accuracy']:.2f}% validation, {100 * best['test_accuracy']:.2f}% test; "
            f"run {_link(folder, best['run'])}.",
            "",
            "Trials are ranked on validation accuracy (ties: lower validation loss); test accuracy is "
            "reported, never used to choose.",
            "",
        ]
    return lines


def _settings_lines(study: Study) -> list[str]:
    """The base settings and what each labelled value or variant stands for."""
    lines = ["", "## Settings", "", "Base of every trial (the varied values below replace these):", ""]
    lines += [f"- `{key}` = `{setting_text(value)}`" for key, value in study.base.items()] or [
        "- (the defaults)"
    ]
    for name, body in study.blocks.items():
        lines.append(f"- block `{name}` = `{body}`")
    for parameter in study.parameters:
        pairs = zip(parameter.labels, parameter.values)
        described = [(label, value) for label, value in pairs if label != setting_text(value)]
        if described:
            lines += ["", f"Values of `{parameter.name}`:", ""]
            lines += [f"- `{label}`: {_describe(value)}" for label, value in described]
    return lines


def _number(value: Any, spec: str) -> str:
    """A table cell: the number formatted, or "n/a" where there is none (a diverged
    trial's NaN loss is stored as an empty cell)."""
    return "n/a" if value == "" else format(value, spec)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return (
            ", ".join(f"`{key}` = `{setting_text(item)}`" for key, item in value.items())
            or "(the base settings)"
        )
    return f"`{setting_text(value)}`" if value != "" else "(nothing)"


def _link(folder: Path, run: str) -> str:
    report = Path(run) / runs.REPORT_HTML
    if (folder / report).is_file():
        return f"[`{run}`]({run}) ([report]({report.as_posix()}))"
    return f"[`{run}`]({run})"


def _markdown_table(study: Study, rows, folder: Path, best) -> list[str]:
    names = [parameter.name for parameter in study.parameters]
    header = ["trial", *names, "parameters", "MFLOP/image", "best val acc", "val loss", "test acc"]
    header += ["best epoch / epochs"]
    header += ["train s", "wall s", "status", "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        done = row["status"] == DONE
        cells = [str(row["trial"]) + (" (best)" if row is best else "")]
        cells += [f"`{row[name]}`" for name in names]
        if done:
            cells += [
                _number(row["parameters"], ","),
                _number(row["mflop_per_image"], ".2f"),
                _number(row["best_val_accuracy"], ".2%"),
                _number(row["best_val_loss"], f".{LOSS_DIGITS}g"),
                _number(row["test_accuracy"], ".2%"),
                f"{row['best_epoch']} / {row['epochs_trained']}",
                _number(row["train_s"], ".0f"),
                _number(row["wall_s"], ".0f"),
            ]
        else:
            cells += [""] * 8
        cells += [row["status"], f"[{Path(row['run']).name}]({row['run']})" if row["run"] else ""]
        if row is best:
            cells = [f"**{cell}**" if cell else cell for cell in cells]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines
