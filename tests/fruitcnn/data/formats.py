"""Writers of small files in the real dataset formats, for the reader tests."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(index: int, size: int = 8, channels: int = 3) -> np.ndarray:
    """A distinct deterministic uint8 image per index."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (size, size, channels), dtype=np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    plane = array[:, :, 0] if array.shape[2] == 1 else array
    Image.fromarray(plane).save(path)


def class_tree(
    root: Path, classes: dict[str, int], start: int = 0, size: int = 8
) -> dict[str, list[np.ndarray]]:
    """root/<class>/<n>.png with distinct patterns; returns the arrays per class."""
    written: dict[str, list[np.ndarray]] = {}
    index = start
    for name, count in classes.items():
        for number in range(count):
            array = pattern(index, size)
            write_png(root / name / f"{number:03d}.png", array)
            written.setdefault(name, []).append(array)
            index += 1
    return written


def tar_folder(folder: Path, archive: Path, mode: str = "w:gz", arcname: str | None = None) -> Path:
    with tarfile.open(archive, mode) as handle:
        handle.add(folder, arcname=arcname if arcname is not None else folder.name)
    return archive


def zip_folder(folder: Path, archive: Path, arcname: str | None = None) -> Path:
    base = arcname if arcname is not None else folder.name
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.rglob("*")):
            name = (
                f"{base}/{path.relative_to(folder).as_posix()}"
                if base
                else path.relative_to(folder).as_posix()
            )
            if path.is_dir():
                handle.writestr(name + "/", "")
            else:
                handle.write(path, name)
    return archive


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of a uint8 array (MNIST's format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_mnist(folder: Path, train: int = 30, test: int = 10, gz: bool = True) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for part, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            content = idx_bytes(array)
            name = f"{part}-{kind}-idx{dims}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(content))
            else:
                (folder / name).write_bytes(content)
        arrays[part] = (images, labels)
    return arrays


def py2_style_pickle(obj) -> bytes:
    """Protocol-2 pickle, as the CIFAR python batches are (dict with bytes keys)."""
    return pickle.dumps(obj, protocol=2)


def write_cifar10(folder: Path, per_batch: int = 6, classes: int = 10) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/ with five data batches, a test batch and batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images = {}
    train = []
    for number in range(1, 6):
        batch = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [int(value) for value in rng.integers(0, classes, per_batch)]
        labels[0], labels[1] = 0, 1  # at least two classes in every batch
        data = batch.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # R, G, B planes
        content = {b"batch_label": b"training batch", b"labels": labels, b"data": data, b"filenames": []}
        (folder / f"data_batch_{number}").write_bytes(py2_style_pickle(content))
        train.append((batch, labels))
    test = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
    test_labels = [0, 1] + [int(value) for value in rng.integers(0, 2, per_batch - 2)]
    content = {b"labels": test_labels, b"data": test.transpose(0, 3, 1, 2).reshape(per_batch, 3072)}
    (folder / "test_batch").write_bytes(py2_style_pickle(content))
    names = [f"name{index}".encode() for index in range(classes)]
    (folder / "batches.meta").write_bytes(py2_style_pickle({b"label_names": names, b"num_vis": 3072}))
    images["train"] = (
        np.concatenate([b for b, _ in train]),
        np.concatenate([np.asarray(labels) for _, labels in train]),
    )
    images["test"] = (test, np.asarray(test_labels))
    return images


def write_stl10(folder: Path, train: int = 4, test: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """stl10_binary/ files: images column-major per channel, labels 1..10."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    arrays = {}
    for part, count in (("train", train), ("test", test)):
        images = rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)
        labels = (np.arange(count) % 10 + 1).astype(np.uint8)  # 1-based
        # (N, H, W, C) -> (N, C, W, H): channel planes, each stored column after column.
        (folder / f"{part}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes())
        (folder / f"{part}_y.bin").write_bytes(labels.tobytes())
        arrays[part] = (images, labels)
    names = "airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n"
    (folder / "class_names.txt").write_text(names)
    return arrays


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def object_tree(root, classes=3, per_class=8, size=24):
    """Class folders of discs on white, a different disc colour per class."""
    rows, columns = np.mgrid[:size, :size]
    rng = np.random.default_rng(5)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            centre = rng.uniform(size * 0.4, size * 0.6, 2)
            disc = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= (size * 0.3) ** 2
            image = np.full((size, size, 3), 255, np.uint8)
            image[disc] = (60 * label, 100, 200 - 60 * label)
            write_png(folder / f"{index}.png", image)
    return root


def photo_tree(root, count=20, size=16):
    rng = np.random.default_rng(6)
    folder = root / "any"
    folder.mkdir(parents=True)
    for index in range(count):
        write_png(folder / f"{index}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return root
