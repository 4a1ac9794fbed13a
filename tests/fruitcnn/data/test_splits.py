"""Seeded stratified splits and the dataset container."""

import numpy as np
import pytest

from fruitcnn.config import DataConfig
from fruitcnn.data import load_dataset
from fruitcnn.data.splits import parse_split, stratified_split

LABELS = np.repeat(np.arange(4), 50)


def test_sixty_forty_with_validation_from_training():
    train, val, test = stratified_split(LABELS, "60/40", val_fraction=0.1, seed=0)
    assert (train.size, val.size, test.size) == (108, 12, 80)
    for part, per_class in ((train, 27), (val, 3), (test, 20)):
        # stratified: every class within one image of its proportional share
        assert np.abs(np.bincount(LABELS[part], minlength=4) - per_class).max() <= 1
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert len(set(train) | set(val) | set(test)) == 200


def test_counts_are_exact_and_stratified():
    # 96 classes of 140 images: the counts do not divide evenly by class.
    labels = np.repeat(np.arange(96), 140)
    train, val, test = stratified_split(labels, "8000/2000/3000", val_fraction=0.1, seed=1)
    assert (train.size, val.size, test.size) == (8000, 2000, 3000)
    for part, size in ((train, 8000), (val, 2000), (test, 3000)):
        share = size / labels.size * 140
        assert np.abs(np.bincount(labels[part], minlength=96) - share).max() < 1.0 + 1e-9


def test_unequal_classes_stay_proportional():
    labels = np.concatenate([np.zeros(1000, int), np.ones(10, int)])
    train, val, test = stratified_split(labels, "60/40", val_fraction=0.1, seed=2)
    assert test.size == round(0.4 * 1010)
    assert abs(np.sum(labels[test] == 1) - 4) <= 1 and abs(np.sum(labels[test] == 0) - 400) <= 1


def test_seeded():
    a = stratified_split(LABELS, "70/10/20", val_fraction=0.1, seed=4)
    b = stratified_split(LABELS, "70/10/20", val_fraction=0.1, seed=4)
    c = stratified_split(LABELS, "70/10/20", val_fraction=0.1, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("60-40", "cannot read split"),
        ("50.5/30", "neither percentages"),
        ("60/40/10/10", "cannot read"),
        ("0/100", "cannot read"),
        ("300/200", "asks for 500 images"),
    ],
)
def test_bad_splits_are_explained(split, message):
    with pytest.raises(ValueError, match=message):
        stratified_split(LABELS, split, val_fraction=0.1, seed=0)


def test_parse_split_modes():
    assert parse_split("60/40") == ("fractions", (0.6, 0.4))
    assert parse_split("8000/2000/3000")[0] == "counts"


def test_empty_part_is_reported():
    with pytest.raises(ValueError, match="part empty"):
        stratified_split(np.arange(4), "50/50", val_fraction=0.1, seed=0)


def test_line_dataset_splits(small_line):
    assert len(small_line.train) + len(small_line.val) + len(small_line.test) == 96 * 24
    assert len(small_line.test) == round(0.4 * 96 * 24)  # exact part sizes
    assert small_line.image_shape == (28, 28, 3)
    for split in small_line.splits.values():
        assert split.masks.shape[0] == split.images.shape[0] == split.attributes.shape[0]
        np.testing.assert_array_equal(np.unique(split.labels), np.arange(96))
    assert small_line.attribute_values["angle"][1] == "ang015"


def test_unknown_dataset_is_explained():
    with pytest.raises(ValueError, match="unknown dataset .fruits.: not a built-in name \\(line\\)"):
        load_dataset(DataConfig(dataset="fruits"))
