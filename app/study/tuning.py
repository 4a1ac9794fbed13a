"""Run a study's trials with Keras Tuner, each one an ordinary ``train(...)`` run.

Keras Tuner brings what a study needs beyond a loop: the trial state on disk
(``<study>/tuner/oracle.json`` and ``trial_*/trial.json``, so a re-run skips finished
trials and restarts an interrupted one), and its chief/worker mode, which spreads
one study over several machines (see :func:`distributed_role`). The oracle here hands
out the study's own plan in order (a grid or list, see ``app.study.plan``) instead of
sampling; the tuner's ``run_trial`` calls :func:`fruitcnn.training.train`.

Per trial, TensorBoard's HParams dashboard gets the trial's values and its best
validation and test accuracy (``tensorboard --logdir <study>/runs``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import keras_tuner
from keras_tuner.engine.base_tuner import BaseTuner
from keras_tuner.engine.trial import TrialStatus

from app.report.build import build_report
from app.study.plan import (
    DONE,
    FAILED,
    PENDING,
    PLAN_ENTRY,
    REPORT_CHOICES,
    RUNNING,
    RUNS_DIR,
    STUDY_CSV,
    STUDY_MD,
    STUDY_PLOT,
    STUDY_SPEC,
    TUNER_PROJECT,
    PlannedTrial,
    Study,
    check_folder,
    trial_folder,
    trial_title,
)
from app.study.records import differing_settings, trial_metrics, write_hparams_config, write_trial_hparams
from app.study.tables import TrialResult, best_row, labels_key, study_rows, write_tables
from fruitcnn import modelfile, runs, training
from fruitcnn.config import config_from_settings
from fruitcnn.data import load_dataset
from fruitcnn.recipes import run_config
from fruitcnn.training import check_run

# The tuner ranks trials on this metric (the best epoch's validation accuracy).
OBJECTIVE = "val_accuracy"
# Keras Tuner's environment variables of its chief/worker mode, and its default tuner id.
TUNER_ID_VARIABLE, ORACLE_IP_VARIABLE, ORACLE_PORT_VARIABLE = (
    "KERASTUNER_TUNER_ID",
    "KERASTUNER_ORACLE_IP",
    "KERASTUNER_ORACLE_PORT",
)
SINGLE_TUNER_ID = "tuner0"
_ORACLE_FILE = "oracle.json"
_STATUS = {
    TrialStatus.COMPLETED: DONE,
    TrialStatus.FAILED: FAILED,
    TrialStatus.INVALID: FAILED,
    TrialStatus.RUNNING: RUNNING,
}


def distributed_role() -> str:
    """``single`` (no chief/worker variables set), ``chief`` or ``worker``.

    Keras Tuner's chief/worker mode: the chief serves the trial state over gRPC and
    runs no trials; every worker asks it for the next trial, trains it and reports.
    All of them run the same study command with ``KERASTUNER_ORACLE_IP`` and
    ``KERASTUNER_ORACLE_PORT`` (the chief's address) and their own
    ``KERASTUNER_TUNER_ID`` (``chief``, or a distinct name per worker).
    """
    if ORACLE_IP_VARIABLE not in os.environ:
        return "single"
    if ORACLE_PORT_VARIABLE not in os.environ or TUNER_ID_VARIABLE not in os.environ:
        raise ValueError(
            f"{ORACLE_IP_VARIABLE} is set but {ORACLE_PORT_VARIABLE} or {TUNER_ID_VARIABLE} is not; a "
            "distributed study needs all three (study.py --oracle HOST:PORT --tuner-id chief|NAME sets them)."
        )
    return "chief" if "chief" in os.environ[TUNER_ID_VARIABLE] else "worker"


def save_state(path: str, state: dict[str, Any]) -> None:
    """A Keras Tuner state file in its own format, written atomically: keras_tuner's
    ``save_json`` writes the file in place, so a study killed in that moment would leave
    oracle.json or a trial.json cut short and could not be continued."""
    runs.write_text(Path(path), json.dumps(state))


def trial_labels(trial) -> dict[str, str]:
    """A Keras Tuner trial's values: the label of each study parameter."""
    return {name: str(value) for name, value in trial.hyperparameters.values.items() if name != PLAN_ENTRY}


class StudyOracle(keras_tuner.Oracle):
    """Hands out the planned trials in plan order; keeps Keras Tuner's on-disk state.

    A grid search whose state is the set of trials already tried, so it survives a
    restart: keras_tuner.GridSearch (1.4.8) keeps its position in memory only and fails
    with a KeyError when a search is resumed (keras-team/keras-tuner#1055).

    A plan entry is taken once one of its trials completed, while one runs or waits
    for a retry, and after this process handed it out once: a failed entry is tried
    again by the next run of the study, not in the same run, so a trial that always
    fails is not repeated forever. Failures never stop the study (Keras Tuner's limit
    of consecutive failures is off: the other trials still run).
    """

    def __init__(self, study: Study):
        super().__init__(
            objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
            hyperparameters=self._space(study),
            allow_new_entries=False,
            tune_new_entries=False,
            max_consecutive_failed_trials=None,
        )
        self.plan = [trial.labels for trial in study.trials]
        self.handed_out: set[str] = set()
        # Called after every trial's end (the tables), on the machine that keeps the state.
        self.after_trial: Callable[[], None] | None = None

    @staticmethod
    def _space(study: Study) -> keras_tuner.HyperParameters:
        space = keras_tuner.HyperParameters()
        space.Fixed(PLAN_ENTRY, study.plan_hash())
        for parameter in study.parameters:
            space.Choice(parameter.name, list(parameter.labels))
        return space

    def populate_space(self, trial_id):
        busy = [*(trial.trial_id for trial in self.ongoing_trials.values()), *self._retry_queue]
        taken = {labels_key(trial_labels(self.trials[number])) for number in busy} | self.handed_out
        taken |= {
            labels_key(trial_labels(trial))
            for trial in self.trials.values()
            if trial.status == TrialStatus.COMPLETED
        }
        for labels in self.plan:
            key = labels_key(labels)
            if key not in taken:
                self.handed_out.add(key)
                return {"status": TrialStatus.RUNNING, "values": dict(labels)}
        return {"status": TrialStatus.STOPPED, "values": None}

    def save(self):
        save_state(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        save_state(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())

    def set_state(self, state):
        # Keep this study's search space (with its plan fingerprint): a state saved by
        # an older fruitcnn may lack the fingerprint; check_folder vouches for the plan.
        space = self.hyperparameters
        super().set_state(state)
        self.hyperparameters = space

    def reload(self):
        super().reload()
        # Keras Tuner saves oracle.json before it drops an ended trial from the running
        # ones; a state saved in that moment would hand a finished trial out again.
        self._retry_queue = [
            number
            for number in self._retry_queue
            if self.trials[number].status not in (TrialStatus.COMPLETED, TrialStatus.FAILED)
        ]

    @keras_tuner.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        self.save()  # now without the ended trial among the running ones (see reload)
        if self.after_trial is not None:
            try:
                self.after_trial()
            except Exception as error:  # the tables are rewritten after the next trial anyway
                print(
                    f"the study's tables could not be written: {type(error).__name__}: {error}",
                    file=sys.stderr,
                )


class TrialData:
    """The run configs and data of a study's trials; each distinct data config is read once."""

    def __init__(self, study: Study, progress: Callable[[str], None] = print):
        self.study, self.progress = study, progress
        self.datasets: dict[str, Any] = {}

    def prepare(self, trial: PlannedTrial):
        """The run config and data of a trial (each distinct data config is read once)."""
        try:
            data = config_from_settings(trial.settings, blocks=self.study.blocks).data
            dataset = self._dataset(data)
            config = run_config(trial.settings, dataset=dataset, blocks=self.study.blocks)
            check_run(config, dataset)
        except ValueError as error:
            raise ValueError(f"trial {trial_title(trial)}: {error}") from error
        return config, dataset

    def _dataset(self, data):
        key = json.dumps(dataclasses.asdict(data), sort_keys=True)
        if key not in self.datasets:
            dataset = load_dataset(data)
            height, width, channels = dataset.image_shape
            self.progress(
                f"data: {dataset.name}: {len(dataset.class_names)} classes, {height}x{width}x{channels}; "
                f"train {len(dataset.train)} / val {len(dataset.val)} / test {len(dataset.test)}"
            )
            self.datasets[key] = dataset
        return self.datasets[key]

    def check_all(self, trials: Sequence[PlannedTrial] | None = None) -> None:
        """Prepare every trial (default: all planned), so a wrong one stops the study
        before any training."""
        for trial in self.study.trials if trials is None else trials:
            self.prepare(trial)


@dataclasses.dataclass
class StudyOutcome:
    """Where a study's results went."""

    folder: Path
    rows: list[dict[str, Any]]
    role: str
    best_report: Path | None = None


class StudyTuner(BaseTuner):
    """Runs a study's trials: each is ``fruitcnn.training.train`` on the trial's settings."""

    def __init__(
        self,
        study: Study,
        folder: Path,
        *,
        verbose: int = 2,
        reports: str = "best",
        progress: Callable[[str], None] = print,
    ):
        if reports not in REPORT_CHOICES:
            raise ValueError(f"reports must be one of {', '.join(REPORT_CHOICES)}, got {reports!r}.")
        self.study, self.folder = study, Path(folder)
        self.verbose, self.reports, self.progress = verbose, reports, progress
        self.data = TrialData(study, progress)
        self.role = distributed_role()
        project = self.folder / TUNER_PROJECT
        tuner_file = project / f"{os.environ.get(TUNER_ID_VARIABLE, SINGLE_TUNER_ID)}.json"
        had_tuner_file = tuner_file.is_file()
        super().__init__(StudyOracle(study), directory=str(self.folder), project_name=TUNER_PROJECT)
        if self.role == "worker":
            return
        if not had_tuner_file and (project / _ORACLE_FILE).is_file():
            # Written under another tuner id (a single-machine study continued as a
            # chief, or the other way round): Keras Tuner would start afresh and redo
            # the finished trials. Keep them.
            self.oracle.reload()
        self.oracle.verbose = 0  # fruitcnn prints one line per trial instead
        self.oracle.after_trial = self.write_tables

    def save(self):
        """The tuner's state (and the oracle's, unless on a worker), each file atomically."""
        if not self._is_worker():
            self.oracle.save()
        save_state(self._get_tuner_fname(), self.get_state())

    def on_search_begin(self):
        """Save the state now, so a study stopped during its first trial reloads (and
        restarts that trial) instead of starting over."""
        self.save()

    def run_trial(self, trial, *args, **kwargs):
        """Train one trial (Keras Tuner calls this); returns its metrics for the state."""
        planned = self.study.trial_for(trial_labels(trial))
        run = self.folder / RUNS_DIR / trial_folder(self.study, planned)
        if (run / runs.METRICS_FILE).is_file():
            metrics = self._adopt(planned, run)
        else:
            if run.exists():
                shutil.rmtree(run)  # left by an interrupted or failed attempt: start this one clean
            config, dataset = self.data.prepare(planned)
            self.progress(
                f"trial {trial_title(planned)}, {planned.number} of {len(self.study.trials)}: {run}"
            )
            keras.backend.clear_session()  # each trial builds its model in an empty graph
            started = time.monotonic()
            result = self._train(planned, config, dataset, run)
            metrics = trial_metrics(result, time.monotonic() - started)
            write_trial_hparams(self.study, run, planned.labels, metrics)
        self.progress(
            f"trial {planned.number}: best validation {100 * metrics['val_accuracy']:.2f}% (epoch "
            f"{int(metrics['best_epoch'])}), test {100 * metrics['test_accuracy']:.2f}%, "
            f"{metrics['wall_seconds']:.0f} s"
        )
        return metrics

    def _adopt(self, planned: PlannedTrial, run: Path) -> dict[str, float]:
        """The metrics of a trial whose run finished but which the tuner's state does not
        list as done: the study was stopped (``kill -9`` included) after ``train()``
        wrote metrics.json and before Keras Tuner saved the trial. The run is taken as
        it is, not trained again, when its config.json is the trial's; a run that
        diverged fails the trial again, and one with other settings is refused (both
        with what to do)."""
        config, dataset = self.data.prepare(planned)
        with runs.hold(run, "taking its results into the study"):
            metrics = runs.read_json(run / runs.METRICS_FILE)
            if isinstance(metrics, dict) and metrics.get("diverged"):
                raise ValueError(
                    f"{run} diverged when the study trained it before ({metrics['diverged'].get('where')} "
                    f"loss {metrics['diverged'].get('loss')} at epoch {metrics['diverged'].get('epoch')}); "
                    "it would diverge again with the same settings. Change them, or move the folder away "
                    "to train this trial again."
                )
            differing = differing_settings(config.to_dict(), runs.read_json(run / runs.CONFIG_FILE))
            if differing:
                raise ValueError(
                    f"{run} holds a finished run with other settings than trial {trial_title(planned)}: "
                    f"{', '.join(differing[:5])} differ{'s' if len(differing) == 1 else ''} (was the "
                    "folder copied, or trained by another fruitcnn version?). Move it away to train this "
                    "trial again."
                )
            keras.backend.clear_session()
            model = modelfile.load_keras(run / runs.MODEL_FILE)
            # the trial's time: from its config.json (written when training started) to its metrics.json
            started = (run / runs.CONFIG_FILE).stat().st_mtime
            result = training.TrainResult(run, model, [], metrics)
            trial = trial_metrics(result, (run / runs.METRICS_FILE).stat().st_mtime - started)
            state = runs.read_state(run)
            if not state.get("finished"):  # stopped between metrics.json and the state's last commit
                state["finished"] = True
                runs.commit_checkpoint(run, state, best_changed=False)
            write_trial_hparams(self.study, run, planned.labels, trial)
        self.progress(
            f"trial {trial_title(planned)}, {planned.number} of {len(self.study.trials)}: {run} had finished "
            "before the study was stopped; its results are taken as they are"
        )
        if self.reports == "all" and not (run / runs.REPORT_HTML).is_file():
            self._report(run, dataset, model)
        return trial

    def _train(self, planned: PlannedTrial, config, dataset, run: Path):
        try:
            # Ctrl-C: train says nothing; study.py explains how to go on.
            result = training.train(
                config, dataset=dataset, run_dir=run, verbose=self.verbose, interrupt_advice=""
            )
        except Exception as error:
            self.progress(f"trial {planned.number} failed: {type(error).__name__}: {error}")
            raise
        if self.reports == "all":
            self._report(run, dataset, result.model)
        return result

    # -- results ---------------------------------------------------------------------
    def results(self) -> list[TrialResult]:
        """Every trial in the tuner's state (not available on a worker)."""
        results = []
        for trial in self.oracle.trials.values():
            metrics = {name: history.get_last_value() for name, history in trial.metrics.metrics.items()}
            status = _STATUS.get(trial.status, PENDING)
            results.append(
                TrialResult(trial.trial_id, trial_labels(trial), status, metrics, trial.message or "")
            )
        return results

    def write_tables(self) -> list[dict[str, Any]]:
        """Rewrite study.csv, study.md and study.png from the state; returns the rows."""
        rows = study_rows(self.study, self.results())
        wall = sum(row["wall_s"] for row in rows if row["status"] == DONE)
        write_tables(self.folder, self.study, rows, wall_s=wall)
        return rows

    def _report(self, run: Path, dataset, model=None) -> Path | None:
        """The run's evaluation report; a failure is reported and leaves the trial done."""
        try:
            return build_report(run, dataset=dataset, model=model, progress=lambda line: None).html
        except Exception as error:
            self.progress(
                f"the report of {run.name} failed ({type(error).__name__}: {error}); the trial is kept. "
                f"Retry with: python report.py {run}"
            )
            return None

    def best_report(self, rows) -> Path | None:
        """The best trial's report (written now if it is missing and its run is here)."""
        best = best_row(rows)
        if best is None or self.reports == "none":
            return None
        run = self.folder / best["run"]
        if (run / runs.REPORT_HTML).is_file():
            return run / runs.REPORT_HTML
        if not (run / runs.MODEL_FILE).is_file():
            self.progress(
                f"the best trial's run {run} is not on this machine; its report is not written here"
            )
            return None
        planned = self.study.trials[best["trial"] - 1]
        _, dataset = self.data.prepare(planned)
        self.progress(f"report of the best trial ({trial_title(planned)})")
        return self._report(run, dataset)


def clear_folder(folder: Path) -> None:
    """Remove a study's trials and tables from ``folder`` (for ``--restart``); other
    files there are left alone."""
    for name in (TUNER_PROJECT, RUNS_DIR):
        if (folder / name).exists():
            shutil.rmtree(folder / name)
    for name in (STUDY_SPEC, STUDY_CSV, STUDY_MD, STUDY_PLOT):
        (folder / name).unlink(missing_ok=True)


def run_study(
    study: Study,
    folder: str | Path,
    *,
    restart: bool = False,
    verbose: int = 2,
    reports: str = "best",
    progress: Callable[[str], None] = print,
) -> StudyOutcome:
    """Run (or continue) every trial of ``study`` in ``folder`` and write its tables.

    Args:
        study: the planned study (``app.study.plan.load_study``).
        folder: the study folder (tuner state, runs/, study.csv/md/png).
        restart: discard the folder's earlier trials first.
        verbose: Keras ``fit`` verbosity of each trial (0 silent, 1 bars, 2 one line per epoch).
        reports: write the evaluation report of the ``best`` trial, ``all`` trials or ``none``.
        progress: receives one line per step.

    Returns:
        A :class:`StudyOutcome` (rows empty on a worker: the chief writes the tables).

    Raises:
        ValueError: a trial that does not fit its data (before any training), or a
            folder holding another study.
    """
    folder, role = Path(folder), distributed_role()
    if role == "worker" and restart:
        raise ValueError(
            "--restart discards the study's trials, which the chief keeps: give it to the chief only."
        )
    known = False
    if role != "worker":
        if restart:
            clear_folder(folder)
        known = check_folder(study, folder)
    tuner = StudyTuner(study, folder, verbose=verbose, reports=reports, progress=progress)
    if role == "worker":
        _check_same_study(study, tuner.oracle.get_space())
        tuner.data.check_all()
    else:
        _start(study, folder, tuner, known, progress)
    tuner.search(verbose=0)
    if role == "worker":
        progress(
            f"worker {os.environ[TUNER_ID_VARIABLE]}: no trials left; the chief writes the study's tables"
        )
        return StudyOutcome(folder, [], role)
    rows = tuner.write_tables()
    report = tuner.best_report(rows)
    if report is not None:
        rows = tuner.write_tables()  # now with the link to the report
    return StudyOutcome(folder, rows, role, report)


def _start(study: Study, folder: Path, tuner: StudyTuner, known: bool, progress) -> None:
    """On the machine that keeps the state: check the trials still to run against
    their data, then record the plan (only now, so a study that fails its checks can
    be fixed and run again in the same folder)."""
    done = {labels_key(result.labels) for result in tuner.results() if result.status == DONE}
    if tuner.role == "single":  # a chief trains nothing; its workers check their own data
        tuner.data.check_all([trial for trial in study.trials if labels_key(trial.labels) not in done])
    if not known:
        folder.mkdir(parents=True, exist_ok=True)
        runs.write_json(folder / STUDY_SPEC, study.spec())
    write_hparams_config(folder, study)
    if done:
        progress(f"{len(done)} of {len(study.trials)} trials already done in {folder}; running the rest")


def _check_same_study(study: Study, space: keras_tuner.HyperParameters) -> None:
    """A worker's study file must plan what the chief's does (it receives only labels)."""
    chief = {entry.name: getattr(entry, "value", None) for entry in space.space}.get(PLAN_ENTRY)
    if chief != study.plan_hash():
        raise ValueError(
            f"this worker's study file plans other trials than the chief's (plan {study.plan_hash()}, the "
            f"chief's {chief}); give every machine the same study file."
        )


def set_distributed(oracle: str | None, tuner_id: str | None) -> None:
    """Set Keras Tuner's chief/worker variables from ``HOST:PORT`` and an id."""
    if oracle is None and tuner_id is None:
        return
    if oracle is None or tuner_id is None:
        raise ValueError(
            "a distributed study needs both --oracle HOST:PORT and --tuner-id (chief or a worker name)."
        )
    host, separator, port = oracle.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"--oracle must be HOST:PORT, e.g. 10.0.0.5:8000, got {oracle!r}.")
    os.environ[ORACLE_IP_VARIABLE], os.environ[ORACLE_PORT_VARIABLE] = host, port
    os.environ[TUNER_ID_VARIABLE] = tuner_id
    role = "chief, serving trials" if "chief" in tuner_id else f"worker {tuner_id}, asking the chief"
    print(f"distributed study: {role} at {host}:{port}", file=sys.stderr)
