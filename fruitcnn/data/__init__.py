"""Datasets: what a training run reads, as uint8 images plus labels, already split.

:func:`load_dataset` is the single entry point that turns a :class:`DataConfig` into a
:class:`Dataset`; every source (for now the generated line dataset) ends in the same
container, so training has one path for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fruitcnn.config import DataConfig
from fruitcnn.data import line
from fruitcnn.data.splits import parse_split, stratified_split

DATASETS = ("line",)


@dataclass(frozen=True)
class Split:
    """One part of a dataset.

    Attributes:
        images: uint8 (N, H, W, C).
        labels: int32 class ids (N,).
        attributes: int32 (N, A) attribute indices, or None.
        masks: bool (N, H, W) ground-truth object pixels, or None.
    """

    images: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray | None = None
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray) -> Split:
        """The images at ``indices`` with all their labels."""

        def pick(array):
            return None if array is None else array[indices]

        return Split(self.images[indices], self.labels[indices], pick(self.attributes), pick(self.masks))


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits with the names of classes and attributes.

    Attributes:
        name: dataset name as given by the user.
        train, val, test: the three splits.
        class_names: class name for every class id.
        attribute_names: names of the attribute columns (empty when there are none).
        attribute_values: for each attribute, the names of its values.
    """

    name: str
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]
    attribute_names: tuple[str, ...] = ()
    attribute_values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the images."""
        return tuple(int(size) for size in self.train.images.shape[1:])

    @property
    def splits(self) -> dict[str, Split]:
        """The splits by name: ``train``, ``val``, ``test``."""
        return {"train": self.train, "val": self.val, "test": self.test}


def load_dataset(config: DataConfig) -> Dataset:
    """Load (or generate) and split the dataset that ``config`` names.

    Raises:
        ValueError: for an unknown dataset name or an unusable split, before any
            data is read.
    """
    parse_split(config.split)  # fail on a bad split before generating anything
    if config.dataset == "line":
        return line_dataset(config)
    raise ValueError(
        f"unknown dataset {config.dataset!r}; available: {', '.join(DATASETS)} "
        "(the line dataset is generated, no download needed)."
    )


def line_dataset(config: DataConfig) -> Dataset:
    """The generated line dataset, split as ``config`` says (default 60/40)."""
    data = line.generate_line_dataset(config.images_per_class, image_size=config.image_size, seed=config.seed)
    whole = Split(data.images, data.labels, data.attributes, data.masks)
    train, val, test = stratified_split(
        data.labels, config.split, val_fraction=config.val_fraction, seed=config.seed
    )
    return Dataset(
        name="line",
        train=whole.take(train),
        val=whole.take(val),
        test=whole.take(test),
        class_names=data.class_names,
        attribute_names=line.ATTRIBUTES,
        attribute_values=line.attribute_values(),
    )
