"""Run folders: names, atomic writes, and finding runs again.

A run folder (``saved_models/<run>/`` or ``--out DIR``) holds:

===================  ===========================================================
``model.keras``      the model of the epoch with the best validation accuracy
``config.json``      the :class:`~fruitcnn.config.RunConfig` (rebuilds the run)
``classes.json``     ``{head name: [class names]}``
``data.json``        the data: source, format, image shape, classes, split,
                     images per split, skipped and ignored files
``history.csv``      one row per finished epoch (see ``fruitcnn.training``)
``metrics.json``     final metrics of ``model.keras`` on every split
``environment.json`` ``{"sessions": [...]}``: for the start and every resume,
                     its kind (``start``/``resume``), time, command line,
                     Python/TensorFlow/Keras/NumPy versions, platform, CPU
                     count and GPUs
``report.html``      the evaluation report (``fruitcnn.report``), self-contained
``report.md``        the same report in Markdown, its figures and tables in
``report/``          (PNG and CSV files)
``tb/``              TensorBoard logs (train, validation and test scalars)
``checkpoint/``      ``state.json`` (what ``--resume`` continues from), the
                     training model with optimiser state of the last finished
                     epoch (``epoch-NNNN.keras``) and the best model
                     (``best-NNNN.keras``), both named in state.json
===================  ===========================================================

Every file is written to a temporary name in the same folder, flushed to disk and then
renamed, so an interrupted run never leaves a half-written file behind. The files of an
epoch are written first and ``state.json``, which names them, last: it is the commit
point. Only then is the best model copied to ``model.keras`` and older checkpoint files
removed, so a kill at any moment leaves a state that resumes exactly.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("saved_models")
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
DATA_FILE = "data.json"
ENVIRONMENT_FILE = "environment.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
REPORT_DIR = "report"
TENSORBOARD_DIR = "tb"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"


def _file_mode() -> int:
    """Mode of a new file under the process umask (read without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


_FILE_MODE = _file_mode()


_ARCHIVE_ENDINGS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")


def new_run_name(dataset: str, head: str) -> str:
    """A fresh run name such as ``line-multi-20261121-224501``; a dataset path
    contributes its last component without archive suffix (``fruits-360-24``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = dataset.replace("\\", "/").rstrip("/").split("/")[-1] or dataset
    for ending in _ARCHIVE_ENDINGS:
        if name.lower().endswith(ending) and len(name) > len(ending):
            name = name[: -len(ending)]
            break
    safe = "".join(char if char.isalnum() or char in "-_" else "-" for char in name)
    return f"{safe}-{head}-{stamp}"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` by calling ``write(temporary path)`` and renaming the result.

    The temporary file keeps the final suffix, since Keras picks the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, _FILE_MODE)  # mkstemp makes files private (0600)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())  # on disk before the rename makes it visible
        os.replace(temporary, path)
        _sync_folder(path.parent)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the OS allows it."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def write_text(path: Path, text: str) -> None:
    """Atomically write a UTF-8 text file."""

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file, with a clear error when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; is {path.parent} a fruitcnn run folder?")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the run folder is damaged.") from error


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Atomically write rows of dicts as CSV (columns: union of keys, first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file, numbers converted back to float (ints stay int)."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{key: _number(value) for key, value in row.items()} for row in rows]


def _number(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except (TypeError, ValueError):
            pass
    return text


def environment() -> dict[str, Any]:
    """Where and with what this process runs: time, command line, versions, machine."""
    import datetime
    import platform
    import sys

    import keras
    import numpy as np
    import tensorflow as tf

    from fruitcnn import __version__

    return {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "fruitcnn": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
    }


def record_environment(run: Path, kind: str) -> None:
    """Append this session's :func:`environment` to the run's environment.json, with
    ``kind`` ``start`` (a new run) or ``resume``."""
    path = Path(run) / ENVIRONMENT_FILE
    sessions = read_json(path).get("sessions", []) if path.is_file() else []
    write_json(path, {"sessions": [*sessions, {"kind": kind, **environment()}]})


def checkpoint_name(kind: str, epoch: int) -> str:
    """File name of a checkpoint: ``epoch-0003.keras`` or ``best-0003.keras``."""
    return f"{kind}-{epoch:04d}.keras"


def read_state(run: Path) -> dict[str, Any]:
    """The checkpoint state of a run, with a clear error when there is none."""
    path = Path(run) / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        raise ValueError(
            f"{run} has no checkpoint to resume (expected {path}); its run never finished an "
            "epoch, so start it again without --resume."
        )
    return read_json(path)


def publish_best(run: Path, state: dict[str, Any]) -> None:
    """Copy the best checkpoint that ``state`` names to ``model.keras``."""
    best = state.get("best_checkpoint")
    if best:
        source = Path(run) / CHECKPOINT_DIR / best
        atomic_write(Path(run) / MODEL_FILE, lambda temporary: shutil.copyfile(source, temporary))


def commit_checkpoint(run: Path, state: dict[str, Any], *, best_changed: bool) -> None:
    """Write ``state.json`` (the commit point), publish the best model when this epoch
    made a new one (``best_changed``), and drop checkpoint files the state no longer names."""
    folder = Path(run) / CHECKPOINT_DIR
    write_json(folder / STATE_FILE, state)
    if best_changed:
        publish_best(run, state)
    keep = {state.get("last_checkpoint"), state.get("best_checkpoint")}
    for path in folder.glob("*.keras"):
        if path.name not in keep:
            path.unlink()


def find_runs(root: Path = DEFAULT_ROOT) -> list[Path]:
    """Run folders under ``root`` (those with a config.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [path for path in root.iterdir() if (path / CONFIG_FILE).is_file()]
    return sorted(runs, key=lambda path: (path / CONFIG_FILE).stat().st_mtime)


def finished_runs(root: Path = DEFAULT_ROOT) -> list[Path]:
    """Run folders under ``root`` that hold a trained model.keras, oldest first."""
    return [run for run in find_runs(root) if (run / MODEL_FILE).is_file()]


def latest_resumable_run(root: Path = DEFAULT_ROOT) -> Path:
    """The most recent run under ``root`` that has a checkpoint and no final metrics."""
    candidates = [
        run
        for run in find_runs(root)
        if (run / CHECKPOINT_DIR / STATE_FILE).is_file() and not (run / METRICS_FILE).is_file()
    ]
    if not candidates:
        raise ValueError(
            f"--resume found no unfinished run with a checkpoint under {root}/; name the "
            "run folder: python train.py --resume saved_models/<run>."
        )
    return max(candidates, key=lambda run: (run / CHECKPOINT_DIR / STATE_FILE).stat().st_mtime)
