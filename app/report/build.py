"""The evaluation report of a run: one HTML page and the same report in Markdown.

:func:`build_report` reads a run folder (``fruitcnn.runs``), evaluates its
``model.keras`` on the train, validation and test splits, and writes

* ``report.html``: one self-contained page (figures embedded as PNG data), with the
  run's configuration, architecture, hyperparameters, environment, timestamps and
  duration, final metrics, learning curves, confusion matrices, the most confused
  class pairs, per-class precision/recall/F1 with macro/micro/weighted averages,
  and the most confident correct and misclassified images per class; for a
  multi-head model all of it per head, plus the aggregate accuracy and which head
  combinations fail most often;
* ``report.md``: the same sections for pasting into a course report, its figures and
  tables as files in ``report/`` (``curves.png``, ``confusion-<split>[-<head>].png``,
  ``scores-<split>[-<head>].csv`` ...), and ``report/summary.json`` with the
  headline numbers.

Both pages are rendered from one list of :class:`Section` objects, so they always
carry the same figures and tables. Evaluation follows training's: inference mode, the
run's test-time augmentation, the run's evaluation batch size. The numbers come from
``fruitcnn.evaluation``, the figures from ``fruitcnn.plots``, the pages from
``app.report.pages`` (blocks and rendering) and the sections from
``app.report.sections``.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.report import about
from app.report import quality as quality_part
from app.report import sections as parts
from app.report.options import ORDERS, SPLIT_TITLES, SPLITS, ReportOptions
from app.report.pages import Section, render_html, render_markdown
from fruitcnn import evaluation, load_model, runs
from fruitcnn.config import RunConfig
from fruitcnn.data import composite, load_dataset
from fruitcnn.evaluation import seeded_sample
from fruitcnn.training import eval_batch_size, head_specs
from heads import head_targets
from visualize import quality
from visualize.gradcam import default_layer
from visualize.methods import MEASURED, REPORTED_MAPS
from visualize.occlusion import default_patch
from visualize.targets import check_per_image

__all__ = ["ORDERS", "SPLITS", "ReportOptions", "ReportResult", "RunRecord", "build_report", "evaluate_run"]


@dataclass
class RunRecord:
    """The files of a run folder that the report reads."""

    folder: Path
    config: RunConfig
    classes: dict[str, list[str]]
    data: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    environment: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path) -> RunRecord:
        """Read a run folder, with a clear error for anything missing."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(
                f"{folder} is not a folder; give a run folder such as saved_models/<run> "
                "(python report.py with no argument takes the latest run)."
            )

        def optional(name: str, default):
            return runs.read_json(folder / name) if (folder / name).is_file() else default

        metrics = optional(runs.METRICS_FILE, {})
        if not (folder / runs.MODEL_FILE).is_file():
            diverged = metrics.get("diverged") if isinstance(metrics, dict) else None
            if diverged:
                raise ValueError(
                    f"{folder} diverged at epoch {diverged.get('epoch')}, step {diverged.get('step')} (the "
                    f"{diverged.get('where', 'training')} loss became {diverged.get('loss')}) before any "
                    "epoch "
                    f"finished, so there is no model to report on. To fix: {diverged.get('advice', '')}."
                )
            raise ValueError(
                f"{folder} has no {runs.MODEL_FILE}: the run never finished an epoch, or this is not a "
                "fruitcnn run folder."
            )
        history_path = folder / runs.HISTORY_FILE
        state_path = folder / runs.CHECKPOINT_DIR / runs.STATE_FILE
        return cls(
            folder=folder,
            config=RunConfig.from_dict(runs.read_json(folder / runs.CONFIG_FILE)),
            classes=runs.read_json(folder / runs.CLASSES_FILE),
            data=optional(runs.DATA_FILE, {}),
            history=runs.read_csv(history_path) if history_path.is_file() else [],
            metrics=metrics,
            environment=optional(runs.ENVIRONMENT_FILE, {}).get("sessions", []),
            state=runs.read_json(state_path) if state_path.is_file() else {},
        )

    @property
    def status(self) -> str:
        """``finished``, ``diverged`` or ``interrupted`` (no metrics.json: the run
        stopped between epochs; its model.keras is the best epoch so far)."""
        if self.metrics.get("diverged"):
            return "diverged"
        return "finished" if self.metrics else "interrupted"


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and measured.

    Attributes:
        html: path of report.html.
        markdown: path of report.md.
        folder: the report/ folder of figures and tables.
        splits: the evaluation of every split.
        seconds: time to build the report.
    """

    html: Path
    markdown: Path
    folder: Path
    splits: dict[str, evaluation.SplitResult]
    seconds: float


def _check_data(record: RunRecord, dataset, specs) -> None:
    """The data must be the run's own: same classes per head and split sizes (from
    data.json, or metrics.json for runs older than data.json's ``images``)."""
    for spec in specs:
        saved = record.classes.get(spec.name)
        if saved is not None and list(saved) != list(spec.class_names):
            raise ValueError(
                f"the data read now has other classes for head {spec.name!r} than the run was trained on "
                f"({len(spec.class_names)} now, {len(saved)} in {runs.CLASSES_FILE}); pass the run's own "
                "data with --dataset PATH."
            )
    saved_sizes = record.data.get("images") or {
        name: record.metrics[f"{name}_images"] for name in SPLITS if f"{name}_images" in record.metrics
    }
    now = {name: len(split) for name, split in dataset.splits.items()}
    if saved_sizes and any(int(saved_sizes.get(name, now[name])) != now[name] for name in now):
        raise ValueError(
            f"the data read now splits into {now}, but the run was trained on {saved_sizes} "
            f"({runs.DATA_FILE}); the data changed since training. Pass the run's own data with "
            "--dataset PATH."
        )


def evaluate_run(record: RunRecord, model, dataset, *, progress: Callable[[str], None] = print) -> dict:
    """Evaluate ``model`` on every split of ``dataset`` as training evaluated it."""
    specs = head_specs(record.config, dataset)
    _check_data(record, dataset, specs)
    batch_size = eval_batch_size(record.config)
    predictor = evaluation.make_predictor(model, specs, tta=record.config.train.tta)
    results = {}
    for name in SPLITS:
        split = dataset.splits[name]
        started = time.monotonic()
        outputs = predictor(split.images, batch_size)
        targets = head_targets(specs, split.labels, split.attributes)
        targets = {spec.name: np.asarray(targets[spec.name]).reshape(-1).astype(np.int64) for spec in specs}
        results[name] = evaluation.evaluate_split(name, specs, outputs, targets)
        progress(
            f"  {SPLIT_TITLES[name]}: {len(split)} images, accuracy {100 * results[name].accuracy:.2f}% "
            f"({time.monotonic() - started:.1f} s)"
        )
    return results


def build_report(
    run_dir: str | Path,
    *,
    dataset=None,
    model=None,
    options: ReportOptions | None = None,
    progress: Callable[[str], None] = print,
    input_range: str = "auto",
) -> ReportResult:
    """Evaluate a run and write report.html, report.md and report/, holding the run
    folder meanwhile (``fruitcnn.runs.hold``: refused while another process trains it).

    Args:
        run_dir: the run folder.
        dataset: the run's data, already loaded (default: read with the run's config).
        model: the run's model (default: its model.keras).
        options: what to show (:class:`ReportOptions`).
        progress: receives one line per step (default: print).
        input_range: for a model.keras made elsewhere, the pixel range it expects
            (``fruitcnn.modelfile.adapt_model``).

    Returns:
        A :class:`ReportResult`.

    Raises:
        ValueError: for a folder that is no finished run, or data other than the run's.
    """
    with runs.hold(Path(run_dir), "writing the report of"):
        return _build_report(run_dir, dataset, model, options or ReportOptions(), progress, input_range)


def _build_report(run_dir, dataset, model, options: ReportOptions, progress, input_range) -> ReportResult:
    started = time.monotonic()
    record = RunRecord.read(run_dir)
    if model is None:
        model = load_model(record.folder, input_range=input_range, head_names=list(record.classes))
    if dataset is None:
        dataset = load_dataset(record.config.data)
    progress(f"evaluating {record.folder} on every split ...")
    results = evaluate_run(record, model, dataset, progress=progress)
    quality = None
    if options.quality_images:
        progress(f"measuring the explanations of {options.quality_images} test images ...")
        started = time.monotonic()
        quality = measure_explanations(record, model, dataset, options.quality_images)
        quality["seconds"] = round(time.monotonic() - started, 1)
    progress("drawing figures ...")
    sections, files = _sections(record, model, dataset, results, options, quality)
    folder = record.folder / runs.REPORT_DIR
    _replace_folder(folder, files)
    seconds = time.monotonic() - started
    subtitle = _subtitle(record)
    markdown = render_markdown(_title(record), sections, runs.REPORT_DIR, subtitle)
    runs.write_text(record.folder / runs.REPORT_MD, markdown)
    runs.write_text(record.folder / runs.REPORT_HTML, render_html(_title(record), sections, subtitle))
    return ReportResult(
        record.folder / runs.REPORT_HTML, record.folder / runs.REPORT_MD, folder, results, seconds
    )


def _title(record: RunRecord) -> str:
    return f"fruitcnn report: {record.folder.name}"


def _subtitle(record: RunRecord) -> str:
    config = record.config
    made = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        f"data {config.data.dataset} | head {config.head} | architecture {config.arch.name} | "
        f"{record.folder} | written {made}"
    )


def _replace_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` as the new content of ``folder`` (built aside, then swapped in,
    so an interrupted report never leaves a mix of old and new figures)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, content in files.items():
            (fresh / name).write_bytes(content)
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            folder.rename(old)
        fresh.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if fresh.exists():
            shutil.rmtree(fresh, ignore_errors=True)


def measure_explanations(record: RunRecord, model, dataset, count: int, seed: int = 0) -> dict:
    """``visualize.quality`` on ``count`` test images (a seeded choice), explaining
    their true class with the default methods, for every head: ``{"images": n, "masks":
    bool, "heads": {head: QualityResult}, "regions": {head: RegionResult} (with masks:
    what the decisions rest on, the cued copies checked when the data has a cue),
    "settings": {...}}``, or ``{"skipped": reason}`` for a model whose explanations are
    not per image."""
    try:
        check_per_image(model)
    except ValueError as error:  # batch statistics at inference: no per-image map exists
        return {"skipped": str(error)}
    sample = seeded_sample(dataset.splits["test"], head_specs(record.config, dataset), count, seed)
    methods = [method for method in REPORTED_MAPS if method in quality.available_methods(model)]
    found = {
        head: quality.quality_scores(
            model,
            sample.images,
            head=head,
            target=truth,
            masks=sample.masks,
            methods=methods,
            settings=MEASURED,
            seed=seed,
        )
        for head, truth in sample.truth.items()
    }
    regions = {}
    if sample.masks is not None:
        chosen = dataset.splits["test"].take(sample.indices)
        for head, truth in sample.truth.items():
            options = {"head": head, "target": truth, "methods": methods, "settings": MEASURED}
            if chosen.cued is None:  # the maps measured above are of these images
                options["maps"] = found[head].maps
                regions[head] = quality.region_check(model, sample.images, sample.masks, **options)
            else:  # the cue as the model saw it in training; removing it gives the clean images
                kind, classes = dataset.info["cue"], len(dataset.class_names)
                substitutes = composite.cue_substitutes(
                    sample.images, chosen.labels, kind, classes, sample.masks
                )
                regions[head] = quality.region_check(
                    model,
                    chosen.cued,
                    sample.masks,
                    cue_masks=chosen.cue_masks,
                    clean=sample.images,
                    substitutes=substitutes,
                    **options,
                )
    described = {
        "patch": MEASURED.patch or default_patch(sample.images.shape[1:]),
        "smoothgrad": MEASURED.smoothgrad,
    }
    if "gradcam" in methods:
        described["layer"] = MEASURED.layer or default_layer(model)
    if "integrated_gradients" in methods:
        described["integrated_gradients"] = (
            f"{MEASURED.ig_steps} steps from the {MEASURED.ig_baseline} colour"
        )
    if "rise" in methods:
        described["rise"] = f"{MEASURED.rise_masks} random masks"
    return {
        "images": len(sample.indices),
        "masks": sample.masks is not None,
        "heads": found,
        "regions": regions,
        "settings": described,
    }


def _sections(
    record, model, dataset, results, options, quality=None
) -> tuple[list[Section], dict[str, bytes]]:
    """Every section of the report, and the files of report/ (figures and tables)."""
    files: dict[str, bytes] = {}
    sections = [parts.summary_section(record, results), parts.curves_section(record, files)]
    if len(results["test"].heads) > 1:
        sections.append(parts.failures_section(results, files))
    sections += [
        parts.matrices_section(results, options, files),
        parts.scores_section(results, files),
        parts.grids_section(dataset, results, options, files),
        *([quality_part.quality_section(quality, files)] if quality else []),
        about.setup_section(record, dataset),
        about.architecture_section(model, files),
        about.environment_section(record),
    ]
    files["summary.json"] = parts.summary_json(record, results)
    return sections, files
