"""Stand-ins for data sets the benchmark machines do not have, built from ones they do.

:func:`stl10_from_cifar10` writes an STL-10-format stand-in (``stl10_binary/`` with
``train_X.bin``, ``train_y.bin``, ``test_X.bin``, ``test_y.bin`` and
``class_names.txt``) from CIFAR-10: STL-10's ten classes are nearly CIFAR-10's
(STL has monkey where CIFAR has frog), its 500 training and 800 test images per class
are drawn from CIFAR-10's (seeded), and the 32x32 images are resized to STL's 96x96 with
the project's antialiased bilinear filter. The result is read by fruitcnn's STL-10
reader like the real files, and the ECE4179 handout's ``--split 8000/2000/3000`` pools
its 13,000 images and splits them as the handout does.

It is a stand-in for the *format and the size* (96x96x3, 13,000 images, ten classes),
not for STL-10's content: upsampled 32x32 pictures hold less detail than real 96x96
photos, so accuracies on it are not STL-10 accuracies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fruitcnn.config import DataConfig
from fruitcnn.data import load_dataset
from fruitcnn.data.images import resize_many

# STL-10's images per class in its labelled parts, and its side.
STL_TRAIN_PER_CLASS, STL_TEST_PER_CLASS, STL_SIDE = 500, 800, 96


def write_stl10_binary(folder: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]], class_names) -> Path:
    """Write ``{"train": (images, labels), "test": ...}`` (uint8 (N, 96, 96, 3), class ids
    0..9) in STL-10's binary format into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for part, (images, labels) in parts.items():
        # STL-10 stores each image as three 96x96 planes in column-major order
        planes = np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 3, 2, 1))
        (folder / f"{part}_X.bin").write_bytes(planes.tobytes())
        (folder / f"{part}_y.bin").write_bytes((np.asarray(labels) + 1).astype(np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(class_names) + "\n")
    return folder


def stl10_from_cifar10(cifar: str | Path, folder: Path, *, seed: int = 0) -> Path:
    """Build the STL-10 stand-in from a CIFAR-10 source (any layout fruitcnn reads) in
    ``folder`` (reused when it is there) and return it."""
    folder = Path(folder)
    if all((folder / name).is_file() for name in ("train_X.bin", "test_X.bin", "class_names.txt")):
        return folder
    data = load_dataset(DataConfig(dataset=str(cifar)))
    images = np.concatenate([split.images for split in data.splits.values()])
    labels = np.concatenate([split.labels for split in data.splits.values()])
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for label in range(len(data.class_names)):
        members = rng.permutation(np.flatnonzero(labels == label))
        chosen["train"].append(members[:STL_TRAIN_PER_CLASS])
        chosen["test"].append(members[STL_TRAIN_PER_CLASS : STL_TRAIN_PER_CLASS + STL_TEST_PER_CLASS])
    parts = {}
    for part, pieces in chosen.items():
        order = np.sort(np.concatenate(pieces))
        parts[part] = (resize_many(images[order], (STL_SIDE, STL_SIDE)), labels[order])
    return write_stl10_binary(folder, parts, data.class_names)
