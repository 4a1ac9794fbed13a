"""Faults as they happen to users, counted: ``kill -9`` at seeded random moments of
training, resuming, the report and a study; a full disk while a checkpoint is written; a
damaged checkpoint; several runs started at once and two resumes of one run.

Every case runs the real command lines in child processes on a tiny line dataset. After
each fault the run folder is audited (:func:`audit`: every JSON file strict, every
``.keras`` file complete, history.csv readable, no temporary file left once the run is
taken up again), and the run is resumed to its end and compared with an uninterrupted
run of the same seed.

The kill trials run ``FRUITCNN_FAULT_TRIALS`` times (default 3 in the suite); the test
marked ``slow`` runs 24 (``pytest -m slow tests/test_faults.py``) and, with
``FRUITCNN_FAULT_REPORT=FILE``, writes its counts there as JSON.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

from fruitcnn import modelfile, runs

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
TINY = ["--images-per-class", "6", "--epochs", str(EPOCHS), "--batch-size", "32", "--verbose", "2"]
# Columns of history.csv that must equal the uninterrupted run's (not the clock columns).
COMPARED = ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
# One finished epoch in Keras's one-line-per-epoch output ("14/14 - 1s - ...").
_EPOCH_DONE = re.compile(r"^\d+/\d+ - ", re.MULTILINE)
_TIMEOUT = 600


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FRUITCNN_CACHE": str(tmp_path / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _start(tmp_path: Path, script: str, *args: str, preexec=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )


def _run(tmp_path: Path, script: str, *args: str, preexec=None) -> subprocess.CompletedProcess:
    child = _start(tmp_path, script, *args, preexec=preexec)
    out, err = child.communicate(timeout=_TIMEOUT)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def _kill_after(child: subprocess.Popen, seconds: float) -> str:
    """kill -9 ``child`` after ``seconds`` (or when it ends first); its stdout."""
    try:
        child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=_TIMEOUT)
    return out


def _strict(path: Path):
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def audit(run: Path, *, leftovers_allowed: bool = False) -> list[str]:
    """What is broken in a run folder: JSON that is not strict, incomplete ``.keras``
    files, an unreadable history.csv, and (unless allowed: a killed process's, which
    the next process that holds the run removes) temporary files."""
    found = []
    for path in run.rglob("*"):
        relative = str(path.relative_to(run))
        if path.is_file() and path.name.startswith(".") and ".tmp" in path.name:
            if not leftovers_allowed:
                found.append(f"{relative}: temporary file left behind")
            continue
        if path.suffix == ".json":
            try:
                _strict(path)
            except ValueError as error:
                found.append(f"{relative}: {error}")
        elif path.suffix == ".keras":
            try:
                modelfile.check_keras_file(path)
            except ValueError as error:
                found.append(f"{relative}: {error}")
        elif path.name == runs.HISTORY_FILE:
            try:
                runs.read_csv(path)
            except (OSError, ValueError) as error:
                found.append(f"{relative}: {error}")
    return found


def _history(run: Path) -> list[dict]:
    return [{column: row[column] for column in COMPARED} for row in runs.read_csv(run / runs.HISTORY_FILE)]


def _finish(tmp_path: Path, run: Path, args: tuple[str, ...] = tuple(TINY)) -> subprocess.CompletedProcess:
    """Take a run to its end after a fault: resume it, or start it again when no epoch
    was committed (then there is nothing to resume)."""
    if (run / runs.CHECKPOINT_DIR / runs.STATE_FILE).is_file():
        return _run(tmp_path, "train.py", "--resume", str(run), "--no-report")
    return _run(tmp_path, "train.py", *args, "--out", str(run), "--no-report")


@dataclass
class Trial:
    """One kill trial: where it was killed and what the run kept."""

    killed_at_s: float
    epochs_done_when_killed: int  # epochs the killed process had printed as finished
    epochs_committed: int  # epochs state.json held after the kill
    epochs_lost: int  # finished epochs not committed (the goal: 0)
    resume_killed: bool
    broken_files: int  # after the kills, before resuming (temporary files aside)
    leftovers_after_resume: int
    finished: bool
    identical: bool  # the final history equals the uninterrupted run's, bit for bit
    max_relative_difference: float
    error: str = ""  # the end of what the finishing command printed, when it failed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its history and its wall time."""
    folder = tmp_path_factory.mktemp("reference")
    started = time.monotonic()
    done = _run(folder, "train.py", *TINY, "--out", "run", "--no-report")
    assert done.returncode == 0, done.stderr
    return _history(folder / "run"), time.monotonic() - started


def kill_trial(
    tmp_path: Path, rng: np.random.Generator, reference, args: tuple[str, ...] = tuple(TINY)
) -> Trial:
    """Train (train.py ``args``), kill -9 at a random moment, maybe kill the resume too,
    then finish."""
    history, seconds = reference
    run = tmp_path / "run"
    delay = float(rng.uniform(0.15, 1.0) * seconds)
    out = _kill_after(_start(tmp_path, "train.py", *args, "--out", str(run), "--no-report"), delay)
    state_path = run / runs.CHECKPOINT_DIR / runs.STATE_FILE
    committed = _strict(state_path)["epoch"] if state_path.is_file() else 0
    done = len(_EPOCH_DONE.findall(out))
    resume_killed = bool(rng.random() < 0.5) and state_path.is_file() and committed < EPOCHS
    if resume_killed:
        command = ("--resume", str(run), "--no-report")
        _kill_after(_start(tmp_path, "train.py", *command), float(rng.uniform(0.3, 0.9) * seconds))
    broken = audit(run, leftovers_allowed=True) if run.exists() else []
    result = _finish(tmp_path, run, args)
    finished = result.returncode == 0 or "already finished" in result.stderr
    final = _history(run) if (run / runs.HISTORY_FILE).is_file() else []
    differences = [
        abs(got[column] - want[column]) / max(abs(want[column]), 1e-12)
        for got, want in zip(final, history)
        for column in COMPARED
    ]
    return Trial(
        killed_at_s=round(delay, 2),
        epochs_done_when_killed=done,
        epochs_committed=committed,
        epochs_lost=max(0, done - committed),
        resume_killed=resume_killed,
        broken_files=len(broken),
        leftovers_after_resume=len(audit(run)) if run.exists() else 0,
        finished=finished,
        identical=final == history,
        max_relative_difference=max(differences, default=float("inf")),
        error="" if finished else result.stderr[-600:],
    )


def _kill_trials(tmp_path, reference, count: int, seed: int) -> list[Trial]:
    rng = np.random.default_rng(seed)
    trials = []
    for number in range(count):
        folder = tmp_path / f"trial{number}"
        folder.mkdir()
        trials.append(kill_trial(folder, rng, reference))
    return trials


def _check(trials: list[Trial]) -> None:
    for trial in trials:
        assert trial.finished and trial.epochs_lost == 0, trial
        assert trial.broken_files == 0 and trial.leftovers_after_resume == 0, trial
        assert trial.max_relative_difference <= 1e-5, trial


def test_kill_9_at_random_moments_loses_no_finished_epoch(tmp_path, reference):
    _check(_kill_trials(tmp_path, reference, int(os.environ.get("FRUITCNN_FAULT_TRIALS", "3")), seed=0))


@pytest.mark.slow
def test_kill_9_many_times(tmp_path, reference):
    trials = _kill_trials(tmp_path, reference, 24, seed=1)
    summary = {
        "trials": len(trials),
        "finished": sum(trial.finished for trial in trials),
        "identical_histories": sum(trial.identical for trial in trials),
        "epochs_lost": sum(trial.epochs_lost for trial in trials),
        "broken_files": sum(trial.broken_files for trial in trials),
        "leftovers_after_resume": sum(trial.leftovers_after_resume for trial in trials),
        "resumes_killed": sum(trial.resume_killed for trial in trials),
        "trial_list": [asdict(trial) for trial in trials],
    }
    if os.environ.get("FRUITCNN_FAULT_REPORT"):
        Path(os.environ["FRUITCNN_FAULT_REPORT"]).write_text(json.dumps(summary, indent=1))
    _check(trials)


def test_kill_9_while_streamed_rows_are_written_and_during_a_streamed_run(tmp_path):
    """--stream: a first read killed while it writes the rows leaves its folder, which
    the next read removes; a streamed run killed at a random moment resumes to the
    history of an uninterrupted streamed run."""
    from tests.fruitcnn.data import formats  # the image folders of the reader tests

    photos = tmp_path / "photos"
    for label in range(3):
        for number in range(500):
            formats.write_png(
                photos / f"class{label}" / f"{number:04d}.png", formats.pattern(label * 1000 + number, 24)
            )
    args = ("--dataset", str(photos), "--stream", "--arch", "conv(8) relu maxpool(2) gap")
    args += ("--epochs", str(EPOCHS), "--batch-size", "32", "--verbose", "2")
    decoded = tmp_path / "cache" / "decoded"
    child = _start(tmp_path, "train.py", *args, "--out", "killed")
    deadline = time.monotonic() + _TIMEOUT
    while not list(decoded.glob(".entry-*.claim")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=_TIMEOUT)
    assert child.returncode == -signal.SIGKILL  # killed while the rows were being written
    assert list(decoded.glob(".entry-*"))  # what it left
    started = time.monotonic()
    done = _run(tmp_path, "train.py", *args, "--out", "reference", "--no-report")
    assert done.returncode == 0, done.stderr
    assert not list(decoded.glob(".entry-*"))  # removed by the next read
    reference = _history(tmp_path / "reference"), time.monotonic() - started
    trial = kill_trial(tmp_path, np.random.default_rng(5), reference, args)
    _check([trial])


def test_kill_9_during_the_report(tmp_path):
    child = _start(tmp_path, "train.py", *TINY, "--out", "run")
    for line in child.stdout:  # the report starts once the run is saved
        if line.startswith("run saved in"):
            break
    _kill_after(child, 1.0)
    assert audit(tmp_path / "run", leftovers_allowed=True) == []
    resumed = _run(tmp_path, "train.py", "--resume", "run")
    assert resumed.returncode == 2 and "already finished its 3 epochs" in resumed.stderr
    if not (tmp_path / "run" / runs.REPORT_HTML).is_file():
        assert "Its report was not written" in resumed.stderr and "python report.py run" in resumed.stderr
    report = _run(tmp_path, "report.py", "run", "--quality-images", "0")
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "run" / runs.REPORT_HTML).is_file() and audit(tmp_path / "run") == []


def test_kill_9_during_a_study_then_it_continues(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text(
        'name = "s"\n[base]\ndataset = "line"\nimages_per_class = 6\nepochs = 2\nbatch_size = 32\n'
        'arch = "conv({filters},3) bn relu gap"\n[grid]\nfilters = [4, 8]\n'
    )
    child = _start(tmp_path, "study.py", str(study), "--out", "out", "--verbose", "2", "--reports", "none")
    for line in child.stdout:  # kill once the second trial trains
        if "trial 2" in line.lower() or line.startswith("Epoch 2/"):
            break
    _kill_after(child, 0.5)
    again = _run(tmp_path, "study.py", str(study), "--out", "out", "--verbose", "0", "--reports", "none")
    assert again.returncode == 0, again.stderr
    rows = runs.read_csv(tmp_path / "out" / "study.csv")
    assert [row["status"] for row in rows] == ["done", "done"]
    for row in rows:
        assert audit(tmp_path / "out" / row["run"]) == []


def _file_size_limit(size: int):
    def limit():  # the write that goes past it fails with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def test_a_full_disk_during_a_checkpoint_stops_cleanly_and_the_run_resumes(tmp_path, reference):
    # The line model's checkpoints are about 400 KB: 60 KB fits every small file, not them.
    full = _run(tmp_path, "train.py", *TINY, "--out", "run", "--no-report", preexec=_file_size_limit(60_000))
    assert full.returncode == 1 and "Traceback" not in full.stderr
    assert "could not save the run: File too large" in full.stderr
    assert "no epoch had finished: free some space, then run the same command again" in full.stderr
    assert audit(tmp_path / "run") == []
    again = _finish(tmp_path, tmp_path / "run")
    assert again.returncode == 0, again.stderr
    assert _history(tmp_path / "run") == reference[0]


def test_a_damaged_checkpoint_is_refused_by_name_on_resume(tmp_path):
    child = _start(tmp_path, "train.py", *TINY, "--out", "run", "--no-report")
    for line in child.stdout:
        if line.startswith("Epoch 2/"):  # epoch 1 is committed
            break
    _kill_after(child, 0.0)
    (checkpoint,) = (tmp_path / "run" / "checkpoint").glob("epoch-*.keras")
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    resumed = _run(tmp_path, "train.py", "--resume", "run")
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert f"{checkpoint.name} is not a valid .keras file" in resumed.stderr
    assert "cannot continue exactly" in resumed.stderr


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    children = [_start(tmp_path, "train.py", *TINY, "--no-report") for _ in range(3)]
    for child in children:
        child.communicate(timeout=_TIMEOUT)
        assert child.returncode == 0
    folders = sorted((tmp_path / "saved_models").iterdir())
    assert len(folders) == 3
    for folder in folders:
        sessions = _strict(folder / runs.ENVIRONMENT_FILE)["sessions"]
        assert [session["kind"] for session in sessions] == ["start"]
        assert _strict(folder / runs.METRICS_FILE)["epochs"] == EPOCHS and audit(folder) == []


def test_two_resumes_of_one_run_the_second_is_refused_with_the_holders_pid(tmp_path, reference):
    child = _start(tmp_path, "train.py", *TINY, "--out", "run", "--no-report")
    for line in child.stdout:
        if line.startswith("Epoch 2/"):
            break
    _kill_after(child, 0.0)
    first = _start(tmp_path, "train.py", "--resume", "run", "--no-report")
    assert first.stdout.readline().startswith("resuming run")  # it holds the run now
    first.send_signal(signal.SIGSTOP)  # paused while holding it: the second surely overlaps
    try:
        second = _run(tmp_path, "train.py", "--resume", "run", "--no-report")
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=_TIMEOUT)
    assert first.returncode == 0
    assert second.returncode == 2 and f"in use: process {first.pid} is resuming" in second.stderr
    assert "Traceback" not in second.stderr and _history(tmp_path / "run") == reference[0]
