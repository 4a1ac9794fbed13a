"""Run folders: names, atomic writes, and finding runs again.

A run folder (``saved_models/<run>/`` or ``--out DIR``) holds:

===================  ===========================================================
``model.keras``      the model of the epoch with the best validation accuracy
                     (float32, also after ``--precision mixed_bfloat16``)
``config.json``      the :class:`~fruitcnn.config.RunConfig` (rebuilds the run)
``classes.json``     ``{head name: [class names]}``
``data.json``        the data: source, format, image shape, classes, split,
                     images per split, skipped and ignored files, what
                     ``--object-masks``/``--paste-on``/``--cue`` did
``history.csv``      one row per finished epoch (see ``fruitcnn.training``)
``metrics.json``     final metrics of ``model.keras`` on every split
``environment.json`` ``{"sessions": [...]}``: for the start and every resume,
                     its kind (``start``/``resume``), time, command line,
                     Python/TensorFlow/Keras/NumPy versions, platform, CPU
                     count and GPUs
``report.html``      the evaluation report (``app.report``), self-contained
``report.md``        the same report in Markdown, its figures and tables in
``report/``          (PNG and CSV files)
``tb/``              TensorBoard logs (train, validation and test scalars)
``checkpoint/``      ``state.json`` (what ``--resume`` continues from), the
                     training model with optimiser state of the last finished
                     epoch (``epoch-NNNN.keras``, in the training precision) and
                     the best model
                     (``best-NNNN.keras``), both named in state.json
``.lock``            the lock of the process that trains, resumes or reports on
                     the run (its pid, purpose, command and start time)
===================  ===========================================================

A new run's folder is created exclusively: two runs started in the same second get
``<name>`` and ``<name>-2``. While a process trains, resumes or writes the report of a
run it holds the folder's lock (``fcntl.flock`` on ``.lock``, released by the operating
system when the process ends, also on ``kill -9``); a second process is refused with the
holder's pid (:class:`RunInUse`).

Every file is written to a temporary name in the same folder, flushed to disk and then
renamed, so an interrupted run never leaves a half-written file behind. The files of an
epoch are written first and ``state.json``, which names them, last: it is the commit
point. Only then is the best model copied to ``model.keras`` and older checkpoint files
removed, so a kill at any moment leaves a state that resumes exactly.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

try:  # POSIX (Linux, macOS); elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

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
LOCK_FILE = ".lock"
# Suffixes -2, -3 ... tried for a run name that exists already (runs started in one second).
_MAX_NAME_SUFFIX = 1000


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


def check_run_name(name: str) -> str:
    """``name`` if it is a plain folder name (``--run NAME`` lives under saved_models/).

    Raises:
        ValueError: for a path (``/``, ``\\``, ``..``, an absolute name) or an empty name.
    """
    text = str(name)
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise ValueError(
            f"--run {text!r} is not a run name: it must be a plain folder name such as 'baseline-lr0.1' "
            f"(the run goes to {DEFAULT_ROOT}/<name>/); to write somewhere else, use --out DIR."
        )
    return text


def create_run_folder(root: Path, name: str) -> Path:
    """Create ``root/name`` exclusively and return it; when it exists already (another
    run started in the same second), ``name-2``, ``name-3`` ... instead."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for number in range(1, _MAX_NAME_SUFFIX + 1):
        folder = root / (name if number == 1 else f"{name}-{number}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise ValueError(f"{root}/ already holds {_MAX_NAME_SUFFIX} runs named {name}[-N]; use --out or --run.")


def check_out_folder(path: Path) -> Path:
    """``path`` if it can be a run folder (absent, or a folder), else a clear error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"--out {path} is an existing file, not a folder; a run needs a folder of its own: "
            "name a new folder (or an existing run folder) instead."
        )
    return path


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
    """Atomically write ``data`` as indented, strict JSON: a number that is not finite
    (NaN, infinity) becomes ``null``, never the ``NaN`` token that JSON does not have."""
    text = json.dumps(finite_json(data), indent=2, sort_keys=False, allow_nan=False)
    write_text(path, text + "\n")


def finite_json(data: Any) -> Any:
    """``data`` with every non-finite float (also NumPy's) replaced by None, and NumPy
    numbers turned into Python ones, recursively."""
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    if isinstance(data, bool) or data is None or isinstance(data, str):
        return data
    if hasattr(data, "item") and callable(data.item) and getattr(data, "ndim", 1) == 0:
        data = data.item()  # a NumPy scalar
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    return data


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
    # TensorFlow only here: the command lines read run folders (the latest run) before
    # --help would otherwise load it
    import keras
    import numpy as np
    import tensorflow as tf

    from fruitcnn import __version__  # the package imports this module

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


def record_environment(run: Path, kind: str, **details: Any) -> None:
    """Append this session's :func:`environment` to the run's environment.json, with
    ``kind`` ``start`` (a new run) or ``resume`` and ``details`` (e.g. the session's
    ``strategy``, which a resume may change)."""
    path = Path(run) / ENVIRONMENT_FILE
    sessions = read_json(path).get("sessions", []) if path.is_file() else []
    write_json(path, {"sessions": [*sessions, {"kind": kind, **details, **environment()}]})


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


# ---------------------------------------------------------------- locks


class RunInUse(ValueError):
    """Another live process holds the run folder (training, resuming or reporting on it)."""


# Locks this process holds: real path of the run -> the lock file's descriptor.
_HELD: dict[str, int] = {}


@contextlib.contextmanager
def hold(run: Path, purpose: str, *, created: bool = False) -> Iterator[Path]:
    """Hold the lock of the run folder ``run`` (created if missing) for the block.

    Reentrant within a process (train.py holds it across training and the report,
    ``train()`` holds it too). The lock is ``fcntl.flock`` on ``run/.lock``, which the
    operating system releases when the process ends in any way, ``kill -9`` included.

    Args:
        run: the run folder.
        purpose: what the holder does (``training``, ``resuming``, ``writing the
            report``), shown to a process that is refused.
        created: the caller has just created the folder for this block; like a folder
            created here, it is removed at the end if nothing but the lock was written
            into it (a run that failed before its first file leaves no empty folder).

    Raises:
        RunInUse: another live process holds it; the message names its pid.
    """
    run = Path(run)
    created = created or not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run)
    if key in _HELD:  # held by an enclosing block of this process, which releases it
        yield run
        return
    handle = _acquire(run, purpose)
    _HELD[key] = handle
    try:
        remove_leftovers(run)
        yield run
    finally:
        del _HELD[key]
        if handle >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(handle, 0)
            if created and {path.name for path in run.iterdir()} <= {LOCK_FILE}:
                with contextlib.suppress(OSError):
                    (run / LOCK_FILE).unlink()
                    run.rmdir()
            os.close(handle)  # releases the flock


def remove_leftovers(run: Path) -> list[str]:
    """Delete what a killed process left half-written in ``run`` (temporary files of
    :func:`atomic_write`, temporary report folders) and return their names. Only safe
    while holding the run: then no live process is writing them."""
    removed = []
    for folder in (run, run / CHECKPOINT_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            temporary_file = path.name.startswith(".") and ".tmp" in path.name and path.is_file()
            temporary_report = path.name.startswith(f".{REPORT_DIR}.") and path.is_dir()
            if temporary_file:
                path.unlink(missing_ok=True)
            elif temporary_report:
                shutil.rmtree(path, ignore_errors=True)
            if temporary_file or temporary_report:
                removed.append(str(path.relative_to(run)))
    return removed


def _acquire(run: Path, purpose: str) -> int:
    if fcntl is None:  # pragma: no cover - no flock on this platform
        return -1
    handle = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        found = _holder_of(handle)
        os.close(handle)
        raise RunInUse(_in_use_message(run, found, purpose)) from None
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "purpose": purpose,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
    }
    os.ftruncate(handle, 0)
    os.pwrite(handle, (json.dumps(me) + "\n").encode(), 0)
    return handle


def _holder_of(handle: int) -> dict[str, Any]:
    """What the holder wrote into the lock file (empty while it is still writing it)."""
    try:
        text = os.pread(handle, 4096, 0).decode("utf-8", "replace")
        found = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        found = {}
    return found if isinstance(found, dict) else {}


def _in_use_message(run: Path, holder: dict[str, Any], purpose: str) -> str:
    pid = holder.get("pid", "unknown")
    what = holder.get("purpose", "using it")
    where = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    since = f" since {holder['since']}" if holder.get("since") else ""
    command = f" ({holder['command']})" if holder.get("command") else ""
    return (
        f"{run} is in use: process {pid}{where} is {what}{since}{command}. Refused {purpose} it too, "
        f"since two processes would overwrite each other's files; wait for process {pid} to end "
        f"(or stop it: kill {pid}), or use another run folder."
    )


def holder(run: Path) -> dict[str, Any] | None:
    """The live process holding the run's lock (``{"pid", "purpose", ...}``; this very
    process included), or None when nobody holds it."""
    path = Path(run) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    if os.path.realpath(run) in _HELD:
        return {"pid": os.getpid(), "purpose": "this process"}
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder_of(handle) or {"pid": "unknown"}
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
    finally:
        os.close(handle)


# ---------------------------------------------------------------- finding runs


def find_runs(root: Path = DEFAULT_ROOT) -> list[Path]:
    """Run folders under ``root`` (those with a config.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [path for path in root.iterdir() if (path / CONFIG_FILE).is_file()]
    return sorted(runs, key=lambda path: (path / CONFIG_FILE).stat().st_mtime)


def is_finished(run: Path) -> bool:
    """Whether ``run`` finished: its metrics.json and model.keras are written, it did not
    diverge, and no live process holds it (a run still writing its report is not)."""
    run = Path(run)
    if not ((run / METRICS_FILE).is_file() and (run / MODEL_FILE).is_file()):
        return False
    try:
        metrics = read_json(run / METRICS_FILE)
    except ValueError:
        return False
    return isinstance(metrics, dict) and not metrics.get("diverged") and holder(run) is None


def finished_runs(root: Path = DEFAULT_ROOT) -> list[Path]:
    """Run folders under ``root`` that finished (:func:`is_finished`), oldest first."""
    return [run for run in find_runs(root) if is_finished(run)]


def latest_resumable_run(root: Path = DEFAULT_ROOT) -> Path:
    """The most recent run under ``root`` that has a checkpoint and no final metrics."""
    unfinished = [
        run
        for run in find_runs(root)
        if (run / CHECKPOINT_DIR / STATE_FILE).is_file() and not (run / METRICS_FILE).is_file()
    ]
    busy = [run for run in unfinished if holder(run) is not None]
    candidates = [run for run in unfinished if run not in busy]
    if not candidates:
        training = (
            f" ({len(busy)} other(s) are being trained now: {', '.join(map(str, busy))})" if busy else ""
        )
        raise ValueError(
            f"--resume found no unfinished run with a checkpoint under {root}/{training}; name the "
            "run folder: python train.py --resume saved_models/<run>."
        )
    return max(candidates, key=lambda run: (run / CHECKPOINT_DIR / STATE_FILE).stat().st_mtime)
