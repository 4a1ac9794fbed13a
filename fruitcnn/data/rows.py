"""Images kept on disk and read on demand: the data of ``--stream`` runs.

A streamed source is decoded once, in chunks, into one file of uint8 rows per part
(``train_images.u8`` ...: image after image, each ``height * width * channels``
bytes, no header) inside its cache entry (``fruitcnn.data.cache``). :class:`Rows`
stands where an in-memory split holds its uint8 array: it knows its shape and reads
the rows it is asked for with ``os.preadv`` (so the process never maps or holds the
whole set; the operating system's page cache keeps what fits), and subsets and
concatenations of it are index arrays, not copies. :class:`RowWriter` writes a new
entry, part by part and chunk by chunk, in a temporary folder that is renamed into
place when complete.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fruitcnn.claims import claimed_folder

ROW_SUFFIX = "_images.u8"
# Rows read per chunk by whole-set passes (statistics, np.asarray).
PASS_ROWS = 1024

_descriptors: dict[str, int] = {}
_descriptors_lock = threading.Lock()


def _descriptor(path: Path) -> int:
    """A read-only descriptor of ``path``, opened once per process (``preadv`` needs no
    file position, so threads share it)."""
    key = str(path)
    with _descriptors_lock:
        if key not in _descriptors:
            _descriptors[key] = os.open(key, os.O_RDONLY)
        return _descriptors[key]


class Rows:
    """uint8 images (N, H, W, C) stored row after row in files, read when indexed.

    It answers what the toolkit asks of a split's image array: ``len``, ``shape``,
    ``dtype``, ``ndim``, ``nbytes``; indexing with an int, a slice, or an integer or
    boolean array returns a new ``np.ndarray`` read from disk (a tuple index applies
    its first element that way and the rest to the result); ``np.asarray`` reads all
    rows. :meth:`subset` and :func:`concatenate` make new views without reading.

    Args:
        files: (path, rows) of every file, in order: together one virtual array.
        shape: (height, width, channels) of every image.
        index: positions in that virtual array of the rows this view shows (None:
            all of them, in order).
    """

    dtype = np.dtype(np.uint8)

    def __init__(
        self,
        files: Sequence[tuple[Path, int]],
        shape: tuple[int, int, int],
        index: np.ndarray | None = None,
    ):
        self.files = tuple((Path(path), int(count)) for path, count in files)
        self.image_shape = tuple(int(size) for size in shape)
        self.row_bytes = int(np.prod(self.image_shape))
        self._starts = np.cumsum([0] + [count for _, count in self.files])
        total = int(self._starts[-1])
        self.index = np.arange(total, dtype=np.int64) if index is None else np.asarray(index, np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.index.size), *self.image_shape)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return int(self.index.size) * self.row_bytes

    def __len__(self) -> int:
        return int(self.index.size)

    def __repr__(self) -> str:
        return f"Rows({len(self)} x {self.image_shape}, files={[str(path) for path, _ in self.files]})"

    def subset(self, indices) -> Rows:
        """The rows at ``indices`` (an integer or boolean array, or a slice), unread."""
        return Rows(self.files, self.image_shape, self.index[indices])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):  # the rows first, then the rest of the index on them
            if not key:
                return np.asarray(self)
            rows = self[key[0]]
            return rows[key[1:]] if np.isscalar(key[0]) else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            if not -len(self) <= key < len(self):
                raise IndexError(f"row {int(key)} is outside {len(self)} rows")
            return self.read(self.index[[int(key)]])[0]
        return self.read(self.index[key])

    def __array__(self, dtype=None, copy=None):
        result = np.empty(self.shape, np.uint8)
        for start in range(0, len(self), PASS_ROWS):
            result[start : start + PASS_ROWS] = self[start : start + PASS_ROWS]
        return result if dtype is None else result.astype(dtype)

    def chunks(self, rows: int | None = None):
        """The images in order, ``rows`` (default ``PASS_ROWS``) at a time: one pass
        that holds one chunk."""
        rows = rows or PASS_ROWS
        for start in range(0, len(self), rows):
            yield self[start : start + rows]

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` of the virtual array, as uint8 (K, H, W, C).

        Sorted positions that follow each other in one file are read with one call;
        the rows come back in the order asked for.
        """
        positions = np.asarray(positions, np.int64).reshape(-1)
        result = np.empty((positions.size, *self.image_shape), np.uint8)
        if not positions.size:
            return result
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        files = np.searchsorted(self._starts, ordered, side="right") - 1
        # a run: consecutive positions in one file, read into consecutive rows
        breaks = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(files) != 0)) + 1
        flat = np.empty((positions.size, self.row_bytes), np.uint8)
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, positions.size]):
            number = int(files[start])
            path = self.files[number][0]
            offset = int(ordered[start] - self._starts[number]) * self.row_bytes
            _read_exactly(_descriptor(path), memoryview(flat[start:stop]).cast("B"), offset, path)
        result.reshape(positions.size, -1)[order] = flat
        return result


def _read_exactly(descriptor: int, buffer: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(buffer):
        count = os.preadv(descriptor, [buffer[done:]], offset + done)
        if count <= 0:
            raise ValueError(
                f"{path} ends at byte {offset + done}, before the {len(buffer)} bytes of rows asked for at "
                f"{offset}: the streamed rows were changed or cut; delete the cache entry "
                f"{path.parent} and the next run decodes the images again."
            )
        done += count


def concatenate(parts: Sequence[Rows]) -> Rows:
    """One view of several views' rows, one after another (nothing read)."""
    files: list[tuple[Path, int]] = []
    indices = []
    for rows in parts:
        if rows.image_shape != parts[0].image_shape:
            raise ValueError(f"cannot join rows of {rows.image_shape} and {parts[0].image_shape} images.")
        indices.append(rows.index + sum(count for _, count in files))
        files.extend(rows.files)
    return Rows(files, parts[0].image_shape, np.concatenate(indices))


class RowWriter:
    """A new entry of streamed rows, written chunk by chunk in a temporary folder.

    ``add(part, images)`` appends uint8 images to the part's file; :meth:`rows` is the
    view of what a part holds so far; :meth:`commit` renames the folder to ``final``
    (or, when another process committed the same entry first, keeps that one) and
    returns it; :meth:`discard` removes an unfinished folder. Used as a context
    manager, an exception discards it. The folder is a
    :func:`fruitcnn.claims.claimed_folder` (``prefix``) beside ``final``: when this
    process is killed while writing, the next writer there removes it.
    """

    def __init__(self, final: Path, prefix: str = ".rows-"):
        self.final = Path(final)
        self._claim = claimed_folder(self.final.parent, prefix)
        self.folder = self._claim.__enter__()
        self.counts: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, int, int]] = {}

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None:
            self.discard()

    def add(self, part: str, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"rows are uint8 (N, H, W, C) images, got {images.dtype} {images.shape}.")
        shape = tuple(int(size) for size in images.shape[1:])
        if self.shapes.setdefault(part, shape) != shape:
            raise ValueError(f"part {part} holds {self.shapes[part]} images; cannot add {shape} ones.")
        with open(self.folder / f"{part}{ROW_SUFFIX}", "ab") as handle:
            handle.write(np.ascontiguousarray(images).data)
        self.counts[part] = self.counts.get(part, 0) + len(images)

    def rows(self, part: str, shape: tuple[int, int, int]) -> Rows:
        """The view of what ``part`` holds so far (an empty file when nothing was added)."""
        path = self.folder / f"{part}{ROW_SUFFIX}"
        path.touch()
        self.shapes.setdefault(part, tuple(shape))
        return Rows([(path, self.counts.get(part, 0))], self.shapes[part])

    def commit(self) -> Path:
        for path in self.folder.iterdir():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
        with contextlib.suppress(OSError):  # another run stored the same entry first: use that one
            os.rename(self.folder, self.final)
        self._claim.__exit__(None, None, None)  # removes the folder if it was not renamed
        return self.final

    def discard(self) -> None:
        self._claim.__exit__(None, None, None)
