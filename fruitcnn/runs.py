"""Run folders: names, atomic writes, and finding runs again.

A run folder (``saved_models/<run>/`` or ``--out DIR``) holds:

===================  ===========================================================
``model.keras``      the model of the epoch with the best validation accuracy
``config.json``      the :class:`~fruitcnn.config.RunConfig` (rebuilds the run)
``classes.json``     ``{head name: [class names]}``
``history.csv``      one row per finished epoch (see ``fruitcnn.training``)
``metrics.json``     final metrics of ``model.keras`` on every split
``tb/``              TensorBoard logs (train, validation and test scalars)
``checkpoint/``      ``last.keras`` (model + optimiser of the last finished epoch)
                     and ``state.json``: what ``--resume`` continues from
===================  ===========================================================

Every file is written to a temporary name in the same folder and then renamed, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
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
TENSORBOARD_DIR = "tb"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_MODEL = "last.keras"
STATE_FILE = "state.json"


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def new_run_name(dataset: str, head: str) -> str:
    """A fresh run name such as ``line-multi-20261121-224501``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(char if char.isalnum() or char in "-_" else "-" for char in dataset)
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
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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


def find_runs(root: Path = DEFAULT_ROOT) -> list[Path]:
    """Run folders under ``root`` (those with a config.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [path for path in root.iterdir() if (path / CONFIG_FILE).is_file()]
    return sorted(runs, key=lambda path: (path / CONFIG_FILE).stat().st_mtime)


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
