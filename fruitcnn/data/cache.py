"""Cache of decoded sources, so a second run starts in about a second.

Decoding 16,000 JPEGs takes seconds; loading the same pixels back as ``.npy`` takes a
fraction of one. An entry is keyed by the source's fingerprint (for a folder: every
file's path, size and modification time; for an archive: its path, size and
modification time) and by the reading options (``--image-size``), so any change to
the data makes a new entry. Entries are written to a temporary folder and renamed
into place, so an interrupted run never leaves a half-written entry.

Location: ``$FRUITCNN_CACHE`` (``train.py --cache-dir``), default
``~/.cache/fruitcnn``; ``FRUITCNN_CACHE=off`` disables it. Entries are plain
folders under ``decoded/``; delete them freely.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from fruitcnn.data.sources import Part, RawData

# Bump when the decoded pixels of some source would change (e.g. new resizing).
READER_VERSION = 1
_ENV = "FRUITCNN_CACHE"
_OFF = ("off", "none", "0")


def add_cache_dir_argument(parser) -> None:
    """The ``--cache-dir DIR`` flag of every command that reads data (see :func:`use_cache_dir`)."""
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="cache of decoded images (default: $FRUITCNN_CACHE or ~/.cache/fruitcnn; 'off' disables)",
    )


def use_cache_dir(folder: str | None) -> None:
    """Put this process's cache in ``folder`` (a ``--cache-dir`` value; None keeps
    ``$FRUITCNN_CACHE`` or the default).

    Raises:
        ValueError: when ``folder`` cannot be created or written to (asked for by name,
            so not ignored: an unusable default only gets a warning when it is written).
    """
    if not folder:
        return
    if folder.lower() not in _OFF:
        path = Path(folder).expanduser()
        try:
            (path / "decoded").mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path / "decoded", prefix=".probe-"):
                pass
        except OSError as error:
            raise ValueError(
                f"--cache-dir {folder} is not usable ({error.strerror or error}); give a folder you can "
                "write to, or --cache-dir off to decode the images every time."
            ) from None
    os.environ[_ENV] = folder


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off."""
    value = os.environ.get(_ENV, "")
    if value.lower() in _OFF:
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "fruitcnn"


def cache_key(fingerprint: str, image_size: int | None) -> str:
    text = json.dumps({"source": fingerprint, "image_size": image_size, "version": READER_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(key: str) -> tuple[RawData, list[dict[str, str]]] | None:
    """The cached data and its skipped-file list, or None on a miss (or a damaged entry)."""
    root = cache_root()
    if root is None:
        return None
    folder = root / "decoded" / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        parts = {
            name: Part(np.load(folder / f"{name}_images.npy"), np.load(folder / f"{name}_labels.npy"))
            for name in meta["parts"]
        }
        data = RawData(meta["format"], tuple(meta["class_names"]), parts, meta["notes"], meta["ignored"])
        return data, list(meta["skipped"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
        return None  # a damaged entry is a miss: the source is read again


def store(key: str, data: RawData, skipped: list[dict[str, str]], source: str) -> Path | None:
    """Write an entry atomically; returns its folder (None when caching is off, or with
    a warning when the cache folder is not writable: caching is an optimisation, never
    a failure)."""
    root = cache_root()
    if root is None:
        return None
    final = root / "decoded" / key
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        for name, part in data.parts.items():
            np.save(temporary / f"{name}_images.npy", part.images)
            np.save(temporary / f"{name}_labels.npy", part.labels)
        meta = {
            "source": source,
            "format": data.format,
            "class_names": list(data.class_names),
            "parts": list(data.parts),
            "notes": data.notes,
            "ignored": data.ignored,
            "skipped": skipped,
        }
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(temporary, final)
        except OSError:  # another run stored the same entry first
            shutil.rmtree(temporary, ignore_errors=True)
    except OSError as error:
        print(
            f"warning: the decoded images were not cached in {root} ({error.strerror or error}); "
            "the next run "
            f"decodes them again. Choose another folder with --cache-dir (or ${_ENV}), or 'off'.",
            file=sys.stderr,
        )
        return None
    return final
