"""Shared fixtures: small generated data so the suite runs in minutes on 2 CPU cores."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from fruitcnn.config import DataConfig  # noqa: E402
from fruitcnn.data import load_dataset  # noqa: E402


@pytest.fixture(scope="session")
def small_line():
    """The line dataset with 24 images per class (2,304 images), split 60/40."""
    return load_dataset(DataConfig(images_per_class=24, seed=3))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-image cache (never the user's ~/.cache)."""
    monkeypatch.setenv("FRUITCNN_CACHE", str(tmp_path_factory.mktemp("cache")))
