"""Cache of decoded sources, so a second run starts in about a second.

Decoding 16,000 JPEGs takes seconds; loading the same pixels back as ``.npy`` takes a
fraction of one. An entry is keyed by the source's fingerprint (for a folder: every
file's path, size and modification time; for an archive: its path, size and
modification time) and by the reading options (``--image-size``), so any change to
the data makes a new entry. Entries are written to a temporary folder and renamed
into place, so an interrupted run never leaves a half-written entry.

A ``--stream`` entry holds the decoded images as rows on disk (``*_images.u8``, see
``fruitcnn.data.rows``; ``<part>_index.npy`` says which rows are each part's) that runs
read batch by batch instead of loading them; it is keyed apart from the in-memory entry
of the same source.

Location: ``$FRUITCNN_CACHE`` (``train.py --cache-dir``), default
``~/.cache/fruitcnn``; ``FRUITCNN_CACHE=off`` disables it. Entries are plain
folders under ``decoded/``; delete them freely.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from fruitcnn.claims import claimed_folder
from fruitcnn.data.problems import DatasetError
from fruitcnn.data.rows import ROW_SUFFIX, Rows, RowWriter
from fruitcnn.data.sources import Part, RawData

# Bump when the decoded pixels of some source would change (e.g. new resizing).
READER_VERSION = 1
_ENV = "FRUITCNN_CACHE"
_OFF = ("off", "none", "0")
# Name of an entry being written (see fruitcnn.claims.claimed_folder: one that a killed
# process left is removed by the next write).
ENTRY_PREFIX = ".entry-"


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


def cache_key(fingerprint: str, image_size: int | None, *, streamed: bool = False) -> str:
    """The entry's name: the source's fingerprint, the reading options, the reader's
    version and, for ``--stream``, the layout (rows on disk, see ``fruitcnn.data.rows``)."""
    options = {"source": fingerprint, "image_size": image_size, "version": READER_VERSION}
    if streamed:
        options["layout"] = "rows"
    return hashlib.sha256(json.dumps(options).encode()).hexdigest()[:32]


def load(key: str) -> tuple[RawData, list[dict[str, str]]] | None:
    """The cached data and its skipped-file list, or None on a miss (or a damaged entry)."""
    root = cache_root()
    if root is None:
        return None
    folder = root / "decoded" / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        parts = {
            name: Part(_images(folder, name, meta), np.load(folder / f"{name}_labels.npy"))
            for name in meta["parts"]
        }
        data = RawData(meta["format"], tuple(meta["class_names"]), parts, meta["notes"], meta["ignored"])
        return data, list(meta["skipped"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
        # A damaged entry is a miss: the source is read again, and the entry removed so
        # that the new one can take its place (a process still reading its files keeps
        # them until it closes them).
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _images(folder: Path, name: str, meta: dict) -> np.ndarray | Rows:
    """A part's images: the array, or for a streamed entry the view of its rows
    (whose files must hold exactly the rows meta.json counts)."""
    if "rows" not in meta:
        return np.load(folder / f"{name}_images.npy")
    shape = tuple(meta["rows"]["shape"])
    files = [(folder / file, int(count)) for file, count in meta["rows"]["files"]]
    for path, count in files:
        if path.stat().st_size != count * int(np.prod(shape)):
            raise ValueError(f"{path} does not hold {count} rows of {shape}")
    index = np.load(folder / f"{name}_index.npy")
    if index.size and not 0 <= int(index.min()) <= int(index.max()) < sum(count for _, count in files):
        raise ValueError(f"{name}_index.npy points outside the rows")
    return Rows(files, shape, index)


def stream_writer(key: str, source: str) -> RowWriter:
    """A :class:`RowWriter` for a new streamed entry (see :func:`commit_streamed`).

    Raises:
        DatasetError: when caching is off or the cache folder cannot be written: the
            streamed rows live in the cache, so ``--stream`` needs one.
    """
    root = cache_root()
    if root is None:
        raise DatasetError(
            f"{source}: --stream keeps the decoded images on disk in the cache folder, and caching is off "
            f"(${_ENV} or --cache-dir is '{os.environ.get(_ENV, '')}').\n  fix: give --cache-dir DIR on a "
            "disk with room for the decoded images (height x width x channels bytes each)."
        )
    try:
        return RowWriter(root / "decoded" / key, ENTRY_PREFIX)
    except OSError as error:
        raise DatasetError(
            f"{source}: --stream cannot write the decoded images to {root} ({error.strerror or error}).\n"
            "  fix: give --cache-dir DIR on a disk you can write to, with room for the decoded images."
        ) from None


def commit_streamed(writer: RowWriter, data: RawData, skipped: list[dict[str, str]], source: str) -> RawData:
    """Finish a streamed entry: the parts still in memory (array formats) written as
    rows, each part's positions among all rows and its labels beside them, meta.json,
    the folder renamed into place; returns ``data`` with every part's images as
    :class:`Rows` of the entry."""
    views = {}
    for name, part in data.parts.items():
        if isinstance(part.images, np.ndarray):
            writer.add(name, part.images)
            views[name] = writer.rows(name, part.images.shape[1:])
        else:
            views[name] = part.images
    files = [(f"{name}{ROW_SUFFIX}", count) for name, count in writer.counts.items()]
    offsets = dict(zip((file for file, _ in files), np.cumsum([0] + [count for _, count in files])))
    shape = next(iter(views.values())).image_shape
    for name, view in views.items():
        (path, _), *others = view.files
        if others or view.image_shape != shape:
            raise ValueError(f"part {name} of a streamed entry is not a view of one file of {shape} rows.")
        np.save(writer.folder / f"{name}_index.npy", view.index + int(offsets.get(path.name, 0)))
        np.save(writer.folder / f"{name}_labels.npy", data.parts[name].labels)
    _write_meta(writer.folder, data, skipped, source, rows={"files": files, "shape": list(shape)})
    folder = writer.commit()
    loaded = load(folder.name)
    if loaded is None:
        raise DatasetError(f"{source}: the streamed rows written to {folder} cannot be read back.")
    return loaded[0]


def store(key: str, data: RawData, skipped: list[dict[str, str]], source: str) -> Path | None:
    """Write an entry atomically; returns its folder (None when caching is off, or with
    a warning when the cache folder is not writable: caching is an optimisation, never
    a failure)."""
    root = cache_root()
    if root is None:
        return None
    final = root / "decoded" / key
    try:
        with claimed_folder(final.parent, ENTRY_PREFIX) as temporary:
            _write_entry(temporary, final, data, skipped, source)
    except OSError as error:
        print(
            f"warning: the decoded images were not cached in {root} ({error.strerror or error}); "
            "the next run "
            f"decodes them again. Choose another folder with --cache-dir (or ${_ENV}), or 'off'.",
            file=sys.stderr,
        )
        return None
    return final


def _write_meta(folder: Path, data: RawData, skipped: list, source: str, **extra) -> None:
    """An entry's meta.json: where it came from, how it was read, its parts and
    skipped files (and, for a streamed entry, ``rows``: its row files and image shape)."""
    meta = {
        "source": source,
        "format": data.format,
        "class_names": list(data.class_names),
        "parts": list(data.parts),
        **extra,
        "notes": data.notes,
        "ignored": data.ignored,
        "skipped": skipped,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _write_entry(temporary: Path, final: Path, data: RawData, skipped: list, source: str) -> None:
    """An in-memory entry's files in ``temporary``, then the folder renamed to ``final``
    (kept as it is when another run stored the same entry first)."""
    for name, part in data.parts.items():
        np.save(temporary / f"{name}_images.npy", part.images)
        np.save(temporary / f"{name}_labels.npy", part.labels)
    _write_meta(temporary, data, skipped, source)
    with contextlib.suppress(OSError):  # another run stored the same entry first
        os.rename(temporary, final)
