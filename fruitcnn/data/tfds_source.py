"""tensorflow-datasets names: ``--dataset tfds:mnist`` (with ``--data-dir``).

A dataset already prepared in the data folder is read without any network access. One
that is not prepared is downloaded only when the download server answers within a few
seconds; offline, the run stops at once with a message naming the local formats that
work without a download (never a hang on a blocked connection).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np

from fruitcnn.data.images import resize_image
from fruitcnn.data.problems import DatasetError
from fruitcnn.data.sources import Part, RawData

PREFIX = "tfds:"
# tfds downloads from Google storage; if it does not answer within this time, we are offline.
_PROBE_HOST = ("storage.googleapis.com", 443)
_PROBE_SECONDS = 4.0
_PARTS = {"train": "train", "validation": "val", "test": "test"}
_LOCAL_FORMATS = (
    "an image folder or archive (root/<class>/*.jpg, Training/ + Test/, .tgz/.zip), MNIST IDX files, "
    "CIFAR-10 python batches or JPEG folders, STL-10 binary, or mini-ImageNet (images/ + train.csv)"
)


def online(timeout: float = _PROBE_SECONDS) -> bool:
    """Whether tfds's download server is reachable (DNS included) within ``timeout`` s."""
    result = []

    def probe():
        try:
            with socket.create_connection(_PROBE_HOST, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def read_tfds(name: str, data_dir: str | None, image_size: int | None) -> RawData:
    """Read the tfds dataset ``name`` (``mnist``, ``cifar10``, ``stl10`` ...) into memory.

    Raises:
        DatasetError: unknown name, not prepared while offline, or not an image
            classification dataset.
    """
    import tensorflow_datasets as tfds  # imported here: it takes a while and is rarely needed

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(
            f"tfds:{name}: no tensorflow-datasets dataset of that name; names are listed at "
            "https://www.tensorflow.org/datasets/catalog (e.g. tfds:mnist, tfds:cifar10, tfds:stl10)."
        ) from None
    where = Path(data_dir).expanduser() if data_dir else Path(builder.data_dir).parents[1]
    if not builder.is_prepared():
        if not online():
            raise DatasetError(
                f"tfds:{name} is not prepared in {where} and the download server cannot be reached "
                "(offline).\n"
                f"  fix: pass --data-dir with a folder where tfds:{name} was prepared, or download the "
                f"data by other means and use a local format with --dataset PATH: {_LOCAL_FORMATS}."
            )
        builder.download_and_prepare()
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DatasetError(
            f"tfds:{name} is not an image classification dataset (features: {', '.join(features)}); "
            "fruitcnn needs 'image' and 'label'."
        )
    class_names = tuple(features["label"].names)
    parts = {}
    # (a builder faked by tfds.testing.mock_data lists no splits; it serves these)
    for split in list(builder.info.splits) or list(_PARTS):
        part = _PARTS.get(split)
        if part is None:
            continue  # e.g. STL-10's 'unlabelled'
        images, labels = [], []
        dataset = builder.as_dataset(split=split, as_supervised=True)
        for image, label in tfds.as_numpy(dataset):
            if image_size and image.shape[:2] != (image_size, image_size):
                image = resize_image(image, (image_size, image_size))
            images.append(image)
            labels.append(label)
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise DatasetError(
                f"tfds:{name} has images of {len(shapes)} sizes; choose one with --image-size N."
            )
        parts[part] = Part(np.stack(images).astype(np.uint8), np.asarray(labels, np.int32))
    if "train" not in parts:
        raise DatasetError(f"tfds:{name} has no 'train' split (splits: {', '.join(builder.info.splits)}).")
    shape = parts["train"].images.shape
    notes = [f"{sum(len(p.labels) for p in parts.values())} images, {shape[1]}x{shape[2]}x{shape[3]}"]
    return RawData(f"tfds:{name}", class_names, parts, notes)
