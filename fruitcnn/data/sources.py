"""Readers for datasets as users download them: image folders, MNIST, CIFAR, STL-10, mini-ImageNet.

:func:`read_source` takes a folder or an archive (``.tgz``, ``.zip`` ...; see
``fruitcnn.data.trees``), recognises its layout and returns :class:`RawData`: uint8
images and labels per part (``train``/``val``/``test`` when the source has its own
split, else one part ``all``). Recognised layouts, looked for at the top and below
single wrapper folders (``fruits-360/``, ``cifar-10-batches-py/`` ...):

==================  ===========================================================
MNIST IDX           ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
CIFAR-10 / -100     ``data_batch_1..5``, ``test_batch``, ``batches.meta`` (python
                    pickles) / ``train``, ``test``, ``meta``
STL-10 binary       ``train_X.bin``, ``train_y.bin``, ``test_X.bin``, ``test_y.bin``,
                    ``class_names.txt`` (images column-major, labels 1..10)
mini-ImageNet       ``images/`` with ``train.csv``, ``val.csv``, ``test.csv``
                    (``filename,label``)
split folders       ``{Training|train, Validation|val, Test|test}/<class>/<images>``
class folders       ``<class>/<images>`` (one part, split by ``--split``)
==================  ===========================================================

All problems of one scan are collected in a :class:`Problems` and raised together.

One file: every reader is a private ``_read_<layout>`` that :func:`read_source`
dispatches to, returning the same :class:`RawData` through the shared helpers (class
files, decoding with its memory check, ``_array_data``, :func:`check_classes`); the
file reads top-down as that one dispatch and its cases.
"""

from __future__ import annotations

import csv
import io
import math
import os
import pickle
import re
import shutil
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fruitcnn.data.images import (
    ImageReadError,
    decode,
    decode_many,
    header_shape,
    is_image_name,
    resize_many,
)
from fruitcnn.data.problems import DatasetError, Problems
from fruitcnn.data.rows import Rows, RowWriter
from fruitcnn.data.trees import Tree, gunzip, is_metadata

PART_NAMES = ("train", "val", "test")
_SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_MNIST = re.compile(r"^(train|t10k|test)[-_](images|labels)[-_.]idx([13])[-_.]ubyte(\.gz)?$", re.IGNORECASE)
_CIFAR10_TRAIN = tuple(f"data_batch_{index}" for index in range(1, 6))
# Most classes a dataset may have (ImageNet-21k has 21,841): a label beyond would make
# a list of a billion class names out of one damaged number.
MAX_CLASSES = 100_000
_STL_SIDE = 96
_STL_BYTES = 3 * _STL_SIDE * _STL_SIDE
# Decoding holds each image twice (decoded list and final array) at its peak.
_MEMORY_COPIES = 2
# Files decoded at a time by a streamed read (--stream): what memory holds of the set.
_STREAM_CHUNK = 512
# Bytes of each file of a folder read for its header by a streamed read's first pass
# (a file whose header lies further, e.g. behind a large EXIF block, is read whole).
_HEAD_BYTES = 16 << 10
# Files tried to find one readable image for the memory estimate.
_MEMORY_PROBES = 20


@dataclass
class Part:
    """Images and class ids of one part of a source."""

    images: np.ndarray | Rows  # Rows: streamed (--stream), see fruitcnn.data.rows
    labels: np.ndarray


@dataclass
class RawData:
    """A source as read: parts ``train``/``val``/``test`` (its own split) or ``all``.

    Attributes:
        format: the recognised layout (``mnist``, ``cifar10``, ``image-folders`` ...).
        class_names: name of every class id.
        parts: the parts.
        notes: facts worth telling the user (sizes, resizing, ignored files).
        ignored: operating-system litter that was not read (``__MACOSX/`` ...).
    """

    format: str
    class_names: tuple[str, ...]
    parts: dict[str, Part]
    notes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def read_source(
    tree: Tree, problems: Problems, image_size: int | None = None, writer: RowWriter | None = None
) -> RawData:
    """Recognise the layout of ``tree`` and read it (see the module docstring).

    Problems of the files are recorded in ``problems``; the caller adds the class
    checks (:func:`check_classes`) and raises them all together. With ``writer``
    (``--stream``), image files are decoded chunk by chunk into its rows and the parts'
    images are :class:`~fruitcnn.data.rows.Rows` (the array formats are read into
    memory as usual; ``fruitcnn.data.cache.commit_streamed`` writes them).

    Raises:
        DatasetError: when the source cannot be read at all (e.g. no class folders,
            damaged array files), listing every problem found so far.
    """
    prefix, layout = _find_layout(tree)
    reader = _READERS[layout]
    if layout in _FILE_LAYOUTS:
        data = reader(tree, prefix, problems, image_size, writer)
    else:
        data = reader(tree, prefix, problems, image_size)
    data.ignored = sorted(name for name in tree.files if is_metadata(name))
    return data


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _find_layout(tree: Tree) -> tuple[str, str]:
    prefix = ""
    while True:
        subdirs, files = tree.listdir(prefix)
        subdirs = [d for d in subdirs if not is_metadata(_join(prefix, d) + "/x")]
        names = {name.lower() for name in files}
        if any(_MNIST.match(name) for name in files):
            return prefix, "mnist"
        if "test_batch" in names and "data_batch_1" in names:
            return prefix, "cifar10"
        if {"train", "test", "meta"} <= names:
            return prefix, "cifar100"
        if "train_x.bin" in names or "test_x.bin" in names:
            return prefix, "stl10"
        if "images" in subdirs and names & {"train.csv", "val.csv", "test.csv"}:
            return prefix, "mini-imagenet"
        parts = [_SPLIT_FOLDERS.get(d.lower()) for d in subdirs]
        if "train" in parts and ("test" in parts or "val" in parts):
            return prefix, "split-folders"
        images_here = [name for name in files if is_image_name(name)]
        if len(subdirs) == 1 and not images_here:
            _, inner_files = tree.listdir(_join(prefix, subdirs[0]))
            if not any(is_image_name(name) for name in inner_files):
                # a wrapper folder; a single class folder is reported as such
                prefix = _join(prefix, subdirs[0])
                continue
        return prefix, "class-folders"


# ---------------------------------------------------------------- image folders


def _class_files(tree: Tree, folder: str, problems: Problems) -> dict[str, list[str]]:
    """Image files below every class folder of ``folder`` (files in sub-folders count)."""
    classes, loose = tree.listdir(folder)
    found: dict[str, list[str]] = {}
    for name in loose:
        path = _join(folder, name)
        if is_metadata(path):
            continue
        if is_image_name(name):
            problems.skip(
                "image outside any class folder",
                path,
                fix="move it into the folder of its class (one folder per class).",
            )
    below: dict[str, list[str]] = {name: [] for name in classes}
    prefix = f"{folder}/" if folder else ""
    for path in tree.files:
        if path.startswith(prefix):
            head, _, rest = path[len(prefix) :].partition("/")
            if rest and head in below:
                below[head].append(path)
    for name in classes:
        base = _join(folder, name)
        if is_metadata(base + "/x"):
            continue
        files = sorted(path for path in below[name] if not is_metadata(path))
        images = []
        for path in files:
            if is_image_name(path):
                images.append(path)
            else:
                problems.skip(
                    "not an image file",
                    path,
                    fix="remove it, or convert it to .jpg/.png (only image files are read).",
                )
        found[name] = images
        if not images:
            problems.error(
                "empty class folder",
                base + "/",
                "no image files",
                fix="add images to it or delete the folder (every class folder needs images).",
            )
    return found


def _decode_parts(
    tree: Tree,
    listing: dict[str, dict[str, list[str]]],
    class_names: list[str],
    problems: Problems,
    image_size: int | None,
    writer: RowWriter | None = None,
) -> tuple[dict[str, Part], list[str]]:
    """Read and decode every listed file; failures are recorded as skips."""
    order = [
        (part, name, path)
        for part, classes in listing.items()
        for name, paths in classes.items()
        for path in paths
    ]
    if writer is not None:
        return _stream_parts(tree, listing, order, class_names, problems, image_size, writer)
    contents: dict[str, bytes] = {}
    for path, content in tree.read(path for _, _, path in order):
        if isinstance(content, Exception):
            problems.skip("unreadable file", path, str(content))
        else:
            contents[path] = content
    order = [item for item in order if item[2] in contents]
    size = (image_size, image_size) if image_size else None
    _check_memory([contents[path] for _, _, path in order], size, tree.label)
    decoded = decode_many([contents[path] for _, _, path in order], size=size)
    for index, reason in sorted(decoded.failed.items()):
        problems.skip(
            "corrupt or unreadable image", order[index][2], reason, fix="delete or replace the file."
        )
    ids = {name: index for index, name in enumerate(class_names)}
    parts_of = np.array([order[i][0] for i in decoded.kept]) if len(decoded.kept) else np.array([], str)
    labels = np.array([ids[order[i][1]] for i in decoded.kept], np.int32)
    parts = {}
    for part in listing:
        rows = np.flatnonzero(parts_of == part)  # contiguous: the files are listed part by part
        where = slice(int(rows[0]), int(rows[-1]) + 1) if rows.size else slice(0, 0)
        parts[part] = Part(decoded.images[where], labels[where])
    notes = []
    height, width = decoded.size
    kind = "greyscale" if decoded.channels == 1 else "RGB"
    notes.append(f"{len(decoded.kept)} images, {height}x{width} {kind}")
    if decoded.resized:
        sizes = "--image-size" if image_size else "the most common size; --image-size N chooses another"
        notes.append(f"{decoded.resized} images of other sizes were resized to {height}x{width} ({sizes})")
    return parts, notes


def _stream_parts(
    tree: Tree,
    listing: dict[str, dict[str, list[str]]],
    order: list[tuple[str, str, str]],
    class_names: list[str],
    problems: Problems,
    image_size: int | None,
    writer: RowWriter,
) -> tuple[dict[str, Part], list[str]]:
    """:func:`_decode_parts` for ``--stream``: the files decoded ``_STREAM_CHUNK`` at a
    time and written as rows as they arrive, so memory holds one chunk, never the set.

    The set's image size and channels must be known before the first row is written:
    the channels (1 only when every image is greyscale) and, without ``--image-size``,
    the most common size come from the files' headers in a first pass (of a folder the
    first ``_HEAD_BYTES`` of each file; an archive is read twice when its rows are
    first made). A file whose header reads but whose
    pixels do not still counts in that choice; otherwise the rows, labels and order
    are those of the in-memory path (each part's view lists its rows in the listing's
    order, whatever order the container yields them in).
    """
    counted = tree.unpacked
    shapes: Counter = Counter()
    whole = []  # files whose header lies beyond their first _HEAD_BYTES
    for path, content in tree.read_heads((path for _, _, path in order), _HEAD_BYTES):
        if not isinstance(content, Exception):
            shape = header_shape(content)
            if shape is not None:
                shapes[shape] += 1
            elif len(content) >= _HEAD_BYTES:
                whole.append(path)
    for _, content in tree.read(whole) if whole else ():
        if not isinstance(content, Exception) and (shape := header_shape(content)) is not None:
            shapes[shape] += 1
    tree.unpacked = counted  # the limits hold each file once, not once per pass
    sizes: Counter = Counter()
    for (found, _), count in shapes.items():
        sizes[found] += count
    size = (image_size, image_size) if image_size else (sizes.most_common(1)[0][0] if sizes else (1, 1))
    channels = 1 if shapes and all(found == 1 for _, found in shapes) else 3
    _check_disk(writer, len(order) * size[0] * size[1] * channels, tree.label)
    waiting: dict[str, list[int]] = {}
    for position, (_, _, path) in enumerate(order):
        waiting.setdefault(path, []).append(position)
    row_of = np.full(len(order), -1, np.int64)
    rows = resized = 0
    chunk: list[tuple[int, bytes]] = []

    def flush():
        nonlocal rows, resized
        decoded = decode_many(
            [content for _, content in chunk], size=(size if image_size else None), uniform=(size, channels)
        )
        for index, reason in sorted(decoded.failed.items()):
            problems.skip(
                "corrupt or unreadable image",
                order[chunk[index][0]][2],
                reason,
                fix="delete or replace the file.",
            )
        if len(decoded.kept):
            writer.add("all", decoded.images)
            row_of[[chunk[index][0] for index in decoded.kept]] = np.arange(rows, rows + len(decoded.kept))
            rows += len(decoded.kept)
        resized += decoded.resized
        chunk.clear()

    for path, content in tree.read(path for _, _, path in order):
        position = waiting[path].pop(0)
        if isinstance(content, Exception):
            problems.skip("unreadable file", path, str(content))
            continue
        chunk.append((position, content))
        if len(chunk) == _STREAM_CHUNK:
            flush()
    if chunk:
        flush()
    everything = writer.rows("all", (*size, channels))
    ids = {name: index for index, name in enumerate(class_names)}
    part_of = np.array([part for part, _, _ in order]) if order else np.array([], str)
    labels = np.array([ids[name] for _, name, _ in order], np.int32)
    parts = {}
    for part in listing:
        positions = np.flatnonzero((part_of == part) & (row_of >= 0))
        parts[part] = Part(everything.subset(row_of[positions]), labels[positions])
    kind = "greyscale" if channels == 1 else "RGB"
    notes = [f"{rows} images, {size[0]}x{size[1]} {kind}, streamed from disk (--stream)"]
    if resized:
        sizes = "--image-size" if image_size else "the most common size; --image-size N chooses another"
        notes.append(f"{resized} images of other sizes were resized to {size[0]}x{size[1]} ({sizes})")
    return parts, notes


def _check_disk(writer: RowWriter, needed: int, where: str) -> None:
    """Refuse a streamed set whose rows would not fit on the cache's disk, before decoding."""
    free = shutil.disk_usage(writer.folder).free
    if needed > free:
        raise DatasetError(
            f"{where}: the decoded images need up to {needed / 2**30:.1f} GiB on disk for --stream, but "
            f"{free / 2**30:.1f} GiB is free where the cache is ({writer.final.parent}).\n  fix: give "
            "--cache-dir DIR on a larger disk, or a smaller --image-size."
        )


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux), or None when unknown."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(contents: list[bytes], size: tuple[int, int] | None, where: str) -> None:
    """Refuse a set whose decoded pixels would not fit in memory, before decoding it.

    The set is held in memory as uint8 (about twice while it is decoded); the estimate
    takes the first readable image's size (or ``size``) for every file.
    """
    available = _available_memory()
    if available is None or not contents:
        return
    for content in contents[:_MEMORY_PROBES]:
        try:
            shape = decode(content, size).shape
            break
        except ImageReadError:
            continue
    else:
        return
    needed = _MEMORY_COPIES * len(contents) * int(np.prod(shape))
    if needed > available:
        side = int((available / (_MEMORY_COPIES * len(contents) * shape[2])) ** 0.5)
        raise DatasetError(
            f"{where}: {len(contents)} images of {shape[0]}x{shape[1]}x{shape[2]} need about "
            f"{needed / 2**30:.1f} GiB while decoding, but {available / 2**30:.1f} GiB of memory is "
            f"available.\n  fix: pass --stream (the decoded images stay on disk and are read batch by "
            f"batch), --image-size {max(side, 1)} or smaller, or use a subset of the classes."
        )


def _read_class_folders(
    tree: Tree, prefix: str, problems: Problems, image_size: int | None, writer: RowWriter | None
) -> RawData:
    classes = _class_files(tree, prefix, problems)
    if not classes:
        images = [name for name in tree.files if is_image_name(name) and not is_metadata(name)]
        where = prefix or tree.label
        if images:
            problems.error(
                "no class folders",
                where,
                f"{len(images)} images but no folder per class",
                fix="put the images of each class in a folder named after the class: root/<class>/*.jpg.",
            )
        else:
            problems.error(
                "no images found",
                where,
                "expected class folders of images, split folders (Training/Test) or a known dataset layout",
                fix="point --dataset at the folder or archive that holds the class folders.",
            )
        problems.raise_if_any()
    names = sorted(classes)
    parts, notes = _decode_parts(tree, {"all": classes}, names, problems, image_size, writer)
    return RawData("image-folders", tuple(names), parts, notes)


def _read_split_folders(
    tree: Tree, prefix: str, problems: Problems, image_size: int | None, writer: RowWriter | None
) -> RawData:
    subdirs, files = tree.listdir(prefix)
    listing: dict[str, dict[str, list[str]]] = {}
    folder_of: dict[str, str] = {}
    for name in subdirs:
        path = _join(prefix, name)
        part = _SPLIT_FOLDERS.get(name.lower())
        if part is None:
            if is_metadata(path + "/x"):
                continue
            inside = [f for f in tree.files if f.startswith(path + "/") and is_image_name(f)]
            if inside:
                problems.skip(
                    "folder outside the split folders",
                    path + "/",
                    f"{len(inside)} images not read",
                    fix="move the folder into Training/ or Test/ if it belongs to the data.",
                )
            continue
        if part in listing:
            problems.error(
                "two folders for one split",
                path + "/",
                f"and {folder_of[part]}/",
                fix="keep one folder per split (e.g. Training/ and Test/).",
            )
            continue
        folder_of[part] = path
        listing[part] = _class_files(tree, path, problems)
    for name in files:
        if is_image_name(name):
            problems.skip("image outside any class folder", _join(prefix, name))
    names = sorted({name for classes in listing.values() for name in classes})
    parts, notes = _decode_parts(tree, listing, names, problems, image_size, writer)
    return RawData("split-folders", tuple(names), parts, notes)


def _read_mini_imagenet(
    tree: Tree, prefix: str, problems: Problems, image_size: int | None, writer: RowWriter | None
) -> RawData:
    image_folder = _join(prefix, "images")
    exact: dict[str, str] = {}  # path below images/ -> path; the file name alone as a fallback
    by_file: dict[str, str] = {}
    for path in tree.files:
        if path.startswith(image_folder + "/") and not is_metadata(path):
            exact[path[len(image_folder) + 1 :]] = path
            by_file.setdefault(path.rsplit("/", 1)[-1], path)
    listing: dict[str, dict[str, list[str]]] = {}
    for part in PART_NAMES:
        table = _join(prefix, f"{part}.csv")
        if table not in tree.files:
            continue
        text = tree.read_one(table).decode("utf-8-sig", "replace")
        try:  # lines split first: \r, \n and \r\n endings alike
            rows = list(enumerate(csv.reader(text.splitlines()), start=1))
        except csv.Error as error:
            problems.error(
                "malformed csv file", table, str(error), fix="save it as plain filename,label rows."
            )
            continue
        if rows and [cell.strip().lower() for cell in rows[0][1][:2]] == ["filename", "label"]:
            rows = rows[1:]
        classes: dict[str, list[str]] = {}
        for number, row in rows:
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                problems.error(
                    "malformed csv row",
                    f"{table} line {number}",
                    f"{row!r}",
                    fix="each row must be filename,label (with a header row filename,label).",
                )
                continue
            filename, label = row[0].strip(), row[1].strip()
            path = exact.get(filename) or by_file.get(filename)
            if path is None:
                problems.skip(
                    "listed in csv but missing", f"{image_folder}/{filename}", f"{table} line {number}"
                )
                continue
            classes.setdefault(label, []).append(path)
        listing[part] = classes
    if "train" not in listing:
        problems.error(
            "mini-ImageNet layout without train.csv",
            prefix or tree.label,
            fix="add train.csv (filename,label) next to images/.",
        )
        problems.raise_if_any()
    names = sorted({name for classes in listing.values() for name in classes})
    parts, notes = _decode_parts(tree, listing, names, problems, image_size, writer)
    return RawData("mini-imagenet", tuple(names), parts, notes)


# ---------------------------------------------------------------- array formats


def _maybe_gunzip(content: bytes, name: str, problems: Problems, tree: Tree) -> bytes | None:
    """``content`` unpacked when it is gzip-compressed (held to the tree's unpack limits)."""
    if content[:2] != b"\x1f\x8b":
        return content
    try:
        return gunzip(content, name, tree.limits)
    except (OSError, EOFError, zlib.error) as error:
        problems.error("corrupt gzip file", name, str(error), fix="download the file again.")
        return None


def _class_ids(values: Any, where: str, problems: Problems) -> np.ndarray | None:
    """Labels as int32 class ids 0..K-1 (K at most ``MAX_CLASSES``), or None with the
    problem recorded (negative, fractional, too large, or not a list of numbers)."""
    try:
        labels = np.asarray(values)
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise ValueError(
                f"expected a list of whole numbers, found {labels.dtype} of shape {labels.shape}"
            )
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= MAX_CLASSES):
            raise ValueError(
                f"labels run from {int(labels.min())} to {int(labels.max())}; expected class ids "
                f"0..K-1 with at most {MAX_CLASSES:,} classes"
            )
    except (TypeError, ValueError, OverflowError) as error:
        problems.error("unusable labels", where, str(error), fix="download the file again.")
        return None
    return labels.astype(np.int32)


def parse_idx(content: bytes, name: str) -> np.ndarray:
    """An IDX file (MNIST's format) as an array; raises DatasetError when malformed."""
    if len(content) < 4 or content[:2] != b"\x00\x00":
        raise DatasetError(f"{name}: not an IDX file (it must start with two zero bytes).")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = content[2], content[3]
    if code not in dtypes or ndim < 1:
        raise DatasetError(f"{name}: unknown IDX type 0x{code:02x} with {ndim} dimensions.")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DatasetError(f"{name}: IDX header truncated ({len(content)} bytes).")
    shape = tuple(int(value) for value in np.frombuffer(content, ">u4", ndim, 4))
    dtype = np.dtype(dtypes[code])
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(content) != expected:
        raise DatasetError(
            f"{name}: IDX file of shape {shape} should have {expected} bytes, has {len(content)} "
            "(truncated or damaged; download it again)."
        )
    return np.frombuffer(content, dtype, offset=header).reshape(shape)


def _read_mnist(tree: Tree, prefix: str, problems: Problems, image_size: int | None) -> RawData:
    _, files = tree.listdir(prefix)
    found: dict[tuple[str, str], str] = {}
    for name in files:
        match = _MNIST.match(name)
        if match:
            part = "train" if match.group(1).lower() == "train" else "test"
            found[(part, match.group(2).lower())] = _join(prefix, name)
    parts: dict[str, Part] = {}
    for part in ("train", "test"):
        names = {kind: found.get((part, kind)) for kind in ("images", "labels")}
        if not any(names.values()):
            continue
        missing = [kind for kind, path in names.items() if path is None]
        if missing:
            problems.error(
                "MNIST file missing",
                prefix or tree.label,
                f"{part} {missing[0]} file not found next to {next(p for p in names.values() if p)}",
                fix="put all four IDX files in one folder.",
            )
            continue
        arrays = {}
        for kind, path in names.items():
            content = _maybe_gunzip(tree.read_one(path), path, problems, tree)
            if content is None:
                continue
            try:
                arrays[kind] = parse_idx(content, path)
            except DatasetError as error:
                problems.error("malformed IDX file", path, str(error).split(": ", 1)[-1])
        if len(arrays) < 2:
            continue
        images, labels = arrays["images"], _class_ids(arrays["labels"], names["labels"], problems)
        if labels is None:
            continue
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            problems.error(
                "MNIST files do not match",
                names["images"],
                f"images {images.shape} vs labels {labels.shape} in {names['labels']}",
                fix="use the images and labels file of the same split.",
            )
            continue
        parts[part] = Part(np.ascontiguousarray(images[..., None].astype(np.uint8)), labels)
    problems.raise_if_any()
    if "train" not in parts or not len(parts["train"].labels):
        raise DatasetError(
            f"{tree.label}: MNIST training files (train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte) not found."
        )
    classes = int(max(part.labels.max() for part in parts.values() if part.labels.size)) + 1
    return _array_data("mnist", tuple(str(index) for index in range(classes)), parts, image_size)


class _RestrictedUnpickler(pickle._Unpickler):
    """Admits only what CIFAR's pickles contain: numpy arrays (rebuilt from their data,
    never allocated from a declared shape alone), dtypes, bytes (latin-1 text, as
    protocol 2 stores them) and plain containers. Anything else (``os.system``,
    ``builtins.eval`` ...) is refused, so an altered file cannot run code. It is
    Python's pure unpickler: the C one allocates whatever memo size a file declares
    (a 10-byte pickle asked for 4 GiB)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("__builtin__", "bytes"),
        ("builtins", "bytes"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (not part of the CIFAR format)")
        if module == "_codecs":
            return _latin1_encode
        if name == "bytes":
            return bytes
        if name == "_reconstruct":
            return _empty_array
        return getattr(np, name)


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles of bytes call it, latin-1 only."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "").replace("_", "") != "latin1":
        raise pickle.UnpicklingError(f"refused to encode with {encoding!r} (CIFAR's pickles use latin1)")
    return text.encode("latin1")


def _empty_array(kind, shape, dtype):
    """numpy's array reconstructor, for the empty array a pickle then fills with its data."""
    if kind is not np.ndarray or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"refused to build an array of shape {shape!r} without its data")
    return np.ndarray.__reduce__(np.zeros(1))[0](kind, shape, dtype)


def load_cifar_pickle(content: bytes, name: str) -> dict[str, Any]:
    """A CIFAR python pickle with str keys; raises DatasetError on anything unexpected."""
    try:
        data = _RestrictedUnpickler(io.BytesIO(content), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise DatasetError(f"{name}: unsafe or damaged pickle: {error}.") from None
    except (
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
        LookupError,
        struct.error,
        RecursionError,
    ) as error:
        raise DatasetError(f"{name}: damaged CIFAR pickle ({type(error).__name__}: {error}).") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{name}: expected a dict in the CIFAR pickle, found {type(data).__name__}.")
    return {
        key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in data.items()
    }


def _cifar_batch(tree: Tree, path: str, label_key: str, problems: Problems) -> Part | None:
    try:
        batch = load_cifar_pickle(tree.read_one(path), path)
    except DatasetError as error:
        problems.error(
            "unreadable CIFAR batch", path, str(error).split(": ", 1)[-1], fix="download it again."
        )
        return None
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or labels is None:
        problems.error("unreadable CIFAR batch", path, f"no 'data' array or '{label_key}' list")
        return None
    labels = _class_ids(labels if isinstance(labels, (list, tuple, np.ndarray)) else [labels], path, problems)
    if labels is None:
        return None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        problems.error(
            "unreadable CIFAR batch",
            path,
            f"data {data.dtype} {data.shape} with {labels.shape[0]} labels; "
            "expected uint8 (N, 3072) and N labels",
        )
        return None
    # Each row is the red, green and blue 32x32 planes in turn.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Part(np.ascontiguousarray(images), labels)


def _label_names(tree: Tree, path: str, key: str, count: int) -> tuple[str, ...]:
    if path in tree.files:
        try:
            names = load_cifar_pickle(tree.read_one(path), path).get(key)
            if names is not None:
                return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        except DatasetError:
            pass
    return tuple(str(index) for index in range(count))


def _read_cifar(tree: Tree, prefix: str, problems: Problems, image_size: int | None, fine: bool) -> RawData:
    _, files = tree.listdir(prefix)
    present = set(files)
    if fine:
        sources = {"train": ["train"], "test": ["test"]}
        label_key, meta, names_key, fmt = "fine_labels", "meta", "fine_label_names", "cifar100"
    else:
        sources = {"train": [n for n in _CIFAR10_TRAIN if n in present], "test": ["test_batch"]}
        label_key, meta, names_key, fmt = "labels", "batches.meta", "label_names", "cifar10"
        missing = [name for name in _CIFAR10_TRAIN if name not in present]
        if missing:
            problems.error(
                "CIFAR-10 batch missing",
                prefix or tree.label,
                ", ".join(missing),
                fix="the training set has five batches data_batch_1..5; download the archive again.",
            )
    parts = {}
    for part, names in sources.items():
        batches = [_cifar_batch(tree, _join(prefix, name), label_key, problems) for name in names]
        if batches and all(batch is not None for batch in batches):
            parts[part] = Part(
                np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches])
            )
    problems.raise_if_any()
    if "train" not in parts or not len(parts["train"].labels):
        raise DatasetError(f"{tree.label}: the CIFAR training batches hold no images.")
    count = int(max(part.labels.max() for part in parts.values() if part.labels.size)) + 1
    class_names = _label_names(tree, _join(prefix, meta), names_key, count)
    return _array_data(fmt, class_names, parts, image_size)


def _read_stl10(tree: Tree, prefix: str, problems: Problems, image_size: int | None) -> RawData:
    _, files = tree.listdir(prefix)
    lower = {name.lower(): name for name in files}
    parts = {}
    for part in ("train", "test"):
        x_name, y_name = lower.get(f"{part}_x.bin"), lower.get(f"{part}_y.bin")
        if x_name is None and y_name is None:
            continue
        if x_name is None or y_name is None:
            problems.error(
                "STL-10 file missing",
                _join(prefix, x_name or y_name),
                f"its partner {part}_{'y' if y_name is None else 'X'}.bin is missing",
            )
            continue
        x_path, y_path = _join(prefix, x_name), _join(prefix, y_name)
        pixels = tree.read_one(x_path)
        labels = np.frombuffer(tree.read_one(y_path), np.uint8).astype(np.int32)
        if len(pixels) % _STL_BYTES:
            problems.error(
                "truncated STL-10 file",
                x_path,
                f"{len(pixels)} bytes is not a whole number of 96x96x3 images ({_STL_BYTES} bytes each)",
                fix="download stl10_binary again.",
            )
            continue
        count = len(pixels) // _STL_BYTES
        if count != labels.size:
            problems.error(
                "STL-10 files do not match", x_path, f"{count} images but {labels.size} labels in {y_path}"
            )
            continue
        if labels.size and (labels.min() < 1 or labels.max() > 10):
            problems.error(
                "STL-10 labels out of range",
                y_path,
                f"labels run {labels.min()}..{labels.max()}, expected 1..10",
            )
            continue
        # Stored per image as 3 planes, each 96x96 in column-major (Fortran) order.
        images = np.frombuffer(pixels, np.uint8).reshape(count, 3, _STL_SIDE, _STL_SIDE).transpose(0, 3, 2, 1)
        parts[part] = Part(np.ascontiguousarray(images), labels - 1)
    if "unlabeled_x.bin" in lower:
        problems.skip(
            "unlabelled images (not used for supervised training)", _join(prefix, lower["unlabeled_x.bin"])
        )
    problems.raise_if_any()
    if "train" not in parts:
        raise DatasetError(f"{tree.label}: STL-10 train_X.bin/train_y.bin not found.")
    class_names = tuple(str(index) for index in range(10))
    names_file = lower.get("class_names.txt")
    if names_file:
        text = tree.read_one(_join(prefix, names_file)).decode("utf-8", "replace")
        listed = [line.strip() for line in text.splitlines()]
        listed = [name for name in listed if name]
        if len(listed) == 10:
            class_names = tuple(listed)
    return _array_data("stl10", class_names, parts, image_size)


def _array_data(
    fmt: str, class_names: tuple[str, ...], parts: dict[str, Part], image_size: int | None
) -> RawData:
    first = next(iter(parts.values())).images
    notes = []
    if image_size and first.shape[1:3] != (image_size, image_size):
        notes.append(
            f"resized from {first.shape[1]}x{first.shape[2]} to {image_size}x{image_size} (--image-size)"
        )
        parts = {
            name: Part(resize_many(part.images, (image_size, image_size)), part.labels)
            for name, part in parts.items()
        }
        first = next(iter(parts.values())).images
    total = sum(len(part.labels) for part in parts.values())
    kind = "greyscale" if first.shape[-1] == 1 else "RGB"
    notes.insert(0, f"{total} images, {first.shape[1]}x{first.shape[2]} {kind}")
    return RawData(fmt, class_names, parts, notes)


def check_classes(data: RawData, problems: Problems, where: str, *, pooled: bool) -> None:
    """Record an error for fewer than two classes, and (unless the parts are pooled and
    re-split) for a class that has images in val/test but none in train."""
    counts: Counter[int] = Counter()
    for part in data.parts.values():
        values, numbers = np.unique(part.labels, return_counts=True)
        counts.update(dict(zip(values.tolist(), numbers.tolist())))
    if len(data.class_names) < 2 or len(counts) < 2:
        shown = ", ".join(data.class_names[:3]) or "none"
        problems.error(
            "fewer than two classes",
            where,
            f"found {len(counts)} class(es) with images ({shown})",
            fix="a classifier needs at least two classes: one folder of images per class.",
        )
    if "train" in data.parts and not pooled:
        present = {name: set(np.unique(part.labels).tolist()) for name, part in data.parts.items()}
        for index, name in enumerate(data.class_names):
            if counts[index] and index not in present["train"]:
                where = "/".join(part for part, labels in present.items() if index in labels)
                problems.error(
                    "class missing from the training split",
                    name,
                    f"it has images in {where} but none in train",
                    fix="the model cannot learn a class it never sees: add training images of it, or "
                    "pool and re-split the data with --split (e.g. --split 60/20/20).",
                )


_FILE_LAYOUTS = ("class-folders", "split-folders", "mini-imagenet")
_READERS = {
    "class-folders": _read_class_folders,
    "split-folders": _read_split_folders,
    "mini-imagenet": _read_mini_imagenet,
    "mnist": _read_mnist,
    "cifar10": lambda tree, prefix, problems, size: _read_cifar(tree, prefix, problems, size, fine=False),
    "cifar100": lambda tree, prefix, problems, size: _read_cifar(tree, prefix, problems, size, fine=True),
    "stl10": _read_stl10,
}
