"""The real copies in ../shared/data (skipped, with the reason, where they are absent)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fruitcnn.config import DataConfig
from fruitcnn.data import load_dataset
from tests.fruitcnn.data.formats import idx_bytes

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the real data sets live in ../shared/data beside the checkout")
    return path


def test_mnist_test_split_is_byte_identical_to_the_official_files():
    data = load_dataset(DataConfig(dataset=str(shared("mnist"))))
    assert data.info["format"] == "mnist" and data.image_shape == (28, 28, 1)
    assert (len(data.train) + len(data.val), len(data.test)) == (60000, 10000)
    # md5 of the uncompressed official files, from ../shared/data/README.md
    images = idx_bytes(data.test.images[:, :, :, 0])
    labels = idx_bytes(data.test.labels.astype(np.uint8))
    assert hashlib.md5(images).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    assert hashlib.md5(labels).hexdigest() == "27ae3e4e09519cfbb04c329615203637"


def test_fruits_360_archive_as_downloaded():
    data = load_dataset(DataConfig(dataset=str(shared("fruits-360-24.tgz"))))
    assert data.info["format"] == "split-folders" and data.image_shape == (100, 100, 3)
    assert len(data.class_names) == 24 and "Apple Braeburn" in data.class_names
    assert (len(data.train) + len(data.val), len(data.test)) == (11961, 4010)
    assert data.info["skipped"] == []
    # white background: the corners of the photos are near white
    assert data.test.images[:, 0, 0].mean() > 240
