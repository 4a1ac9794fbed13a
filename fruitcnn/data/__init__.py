"""Datasets: what a training run reads, as uint8 images plus labels, already split.

:func:`load_dataset` is the single entry point that turns a :class:`DataConfig` into a
:class:`Dataset`; every source (the generated line dataset, folders and archives of
images, MNIST, CIFAR, STL-10, mini-ImageNet, tensorflow-datasets names) ends in the
same container, so training has one path for all of them.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fruitcnn.config import TRAINING_PART, DataConfig, parse_unpack_limits
from fruitcnn.data import cache, composite, line, rows
from fruitcnn.data.images import resize_many
from fruitcnn.data.problems import DatasetError, Problems
from fruitcnn.data.rows import Rows
from fruitcnn.data.sources import Part, RawData, check_classes, read_source
from fruitcnn.data.splits import holdout, parse_split, stratified_split
from fruitcnn.data.trees import ARCHIVE_SUFFIXES, open_tree

# Built-in names; any existing path and tfds:NAME work too.
DATASETS = ("line",)
# Split of a dataset without its own split, unless --split says otherwise.
DEFAULT_SPLIT = "60/40"
# A validation split whose accuracy moves in steps larger than this (fewer than 50
# images) cannot tell apart epochs that differ by less: the data summary warns.
VALIDATION_STEP = 0.02


@dataclass(frozen=True)
class Split:
    """One part of a dataset.

    Attributes:
        images: uint8 (N, H, W, C): an array, or for ``--stream`` the
            :class:`~fruitcnn.data.rows.Rows` on disk (indexing it reads the rows).
        labels: int32 class ids (N,).
        attributes: int32 (N, A) attribute indices, or None.
        masks: bool (N, H, W) ground-truth object pixels, or None.
        cued: the images with the cue of their class planted (uint8, as ``images``),
            kept for the test split of data with ``--cue`` (whose ``images`` are clean),
            else None.
        cue_masks: bool (N, H, W) where the cue lies in ``cued``, or None.
    """

    images: np.ndarray | Rows
    labels: np.ndarray
    attributes: np.ndarray | None = None
    masks: np.ndarray | None = None
    cued: np.ndarray | None = None
    cue_masks: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray) -> Split:
        """The images at ``indices`` with all their labels."""

        def pick(array):
            return None if array is None else array[indices]

        return Split(
            self.images.subset(indices) if isinstance(self.images, Rows) else self.images[indices],
            self.labels[indices],
            pick(self.attributes),
            pick(self.masks),
            pick(self.cued),
            pick(self.cue_masks),
        )


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits with the names of classes and attributes.

    Attributes:
        name: dataset name as given by the user.
        train, val, test: the three splits.
        class_names: class name for every class id.
        attribute_names: names of the attribute columns (empty when there are none).
        attribute_values: for each attribute, the names of its values.
        info: where the data came from and how it was read (written to the run's
            data.json): source, format, split, notes, skipped and ignored files,
            images per split, whether it came from the cache, seconds to load.
    """

    name: str
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]
    attribute_names: tuple[str, ...] = ()
    attribute_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

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
            data is read; :class:`DatasetError` (a ValueError) listing every problem
            of the data found in one scan.
    """
    if config.split != "auto":
        parse_split(config.split)  # fail on a bad split before reading anything
    if config.dataset == "line":
        return _ground_truth(line_dataset(config), config)
    started = time.monotonic()
    problems = Problems(config.dataset, strict=config.strict)
    raw, from_cache = _read(config, problems)
    check_classes(raw, problems, config.dataset, pooled=not _uses_own_split(raw, config))
    problems.raise_if_any()
    train, val, test, split_text = _assemble(raw, config)
    info = {
        "source": config.dataset,
        "format": raw.format,
        "split": split_text,
        "notes": raw.notes,
        "skipped": problems.skipped_list(),
        "ignored": raw.ignored,
        "images": {"train": len(train), "val": len(val), "test": len(test)},
        "from_cache": from_cache,
        "load_seconds": round(time.monotonic() - started, 3),
        "messages": problems.summary(),
    }
    info["warnings"] = split_warnings(len(val), len(raw.class_names))
    dataset = Dataset(
        name=config.dataset, train=train, val=val, test=test, class_names=raw.class_names, info=info
    )
    return _ground_truth(dataset, config)


def _ground_truth(dataset: Dataset, config: DataConfig) -> Dataset:
    """The dataset with what ``--object-masks``, ``--paste-on`` and ``--cue`` add
    (``fruitcnn.data.composite``): object masks, the objects pasted on photos (each split
    on backgrounds of its own), and a cue planted in the training and validation images
    (the test images kept clean, a cued copy beside them); ``info["ground_truth"]`` says
    what was done, ``info["cue"]`` which cue was planted."""
    if not (config.object_masks or config.paste_on or config.cue != "none"):
        return dataset
    splits = dict(dataset.splits)
    done = []
    if config.object_masks or config.paste_on:
        try:
            splits = {
                name: dataclasses.replace(part, masks=composite.object_masks(part.images))
                for name, part in splits.items()
            }
        except ValueError as error:
            raise DatasetError(
                f"{config.dataset}: {error}\n  fix: leave out --object-masks and --paste-on for this data "
                "(they need photos of single objects on a plain background)."
            ) from None
        share = float(np.mean([part.masks.mean() for part in splits.values()]))
        done.append(f"object masks from the plain background (the objects cover {share:.0%} of the images)")
    if config.paste_on:
        splits, text = _pasted(splits, config, dataset.image_shape)
        done.append(text)
    if config.cue != "none":
        classes = len(dataset.class_names)
        for name in ("train", "val"):
            part = splits[name]
            cued, _ = composite.plant_cue(part.images, part.labels, config.cue, classes, part.masks)
            splits[name] = dataclasses.replace(part, images=cued)
        test = splits["test"]
        cued, where = composite.plant_cue(test.images, test.labels, config.cue, classes, test.masks)
        splits["test"] = dataclasses.replace(test, cued=cued, cue_masks=where)
        done.append(
            f"cue: {config.cue} of each class's colour in the training and validation images only; the test "
            "images are clean (a cued copy is kept for the shortcut check)"
        )
    info = {**dataset.info, "ground_truth": done}
    if config.cue != "none":
        info["cue"] = config.cue  # the shortcut check plants the other classes' cues alike
    return dataclasses.replace(dataset, **splits, info=info)


def _pasted(splits: dict[str, Split], config: DataConfig, shape) -> tuple[dict[str, Split], str]:
    """The splits' objects pasted on photos of ``config.paste_on``, each split on a
    seeded share of the photos of its own (drawn again when it has fewer photos than
    images), and the words that say so."""
    if not Path(config.paste_on).expanduser().exists():
        raise DatasetError(
            f"--paste-on {config.paste_on}: no such file or folder (relative to {Path.cwd()}); expected a "
            "folder or archive of photos to paste the objects on (e.g. ../shared/data/cifar10-jpg.tgz)."
        )
    problems = Problems(config.paste_on, strict=config.strict)
    raw, _ = _read(dataclasses.replace(config, dataset=config.paste_on, paste_on="", cue="none"), problems)
    problems.raise_if_any()
    photos = [part.images for part in raw.parts.values()]
    total = sum(len(images) for images in photos)
    if total < len(splits):
        raise DatasetError(
            f"--paste-on {config.paste_on}: {total} photo(s) found; each of the {len(splits)} splits needs "
            "photos of its own: give a folder with more photos."
        )
    pool = np.concatenate(photos) if len(photos) > 1 else photos[0]
    rng = np.random.default_rng([config.seed, 2])
    order = rng.permutation(total)
    sizes = np.array([len(part) for part in splits.values()], np.float64)
    counts = 1 + np.floor((total - len(sizes)) * sizes / sizes.sum()).astype(int)  # at most ``total``
    bounds = np.concatenate([[0], np.cumsum(counts)])
    height, width, channels = shape
    result = {}
    for (name, part), start, stop in zip(splits.items(), bounds[:-1], bounds[1:]):
        own = order[start:stop]
        chosen = own[: len(part)] if len(own) >= len(part) else rng.choice(own, len(part))
        backgrounds = _as_channels(pool[np.sort(chosen)][rng.permutation(len(part))], channels)
        if backgrounds.shape[1:3] != (height, width):
            backgrounds = resize_many(backgrounds, (height, width))
        images, masks = composite.paste_objects(part.images, part.masks, backgrounds, rng)
        result[name] = dataclasses.replace(part, images=images, masks=masks)
    text = (
        f"objects pasted on {total} photos of {config.paste_on} (train / val / test on photos of their own: "
        f"{', '.join(str(int(stop - start)) for start, stop in zip(bounds[:-1], bounds[1:]))}), their longer "
        f"side {composite.PASTE_SCALE[0]:g}-{composite.PASTE_SCALE[1]:g} of the image side"
    )
    return result, text


def _as_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 images with ``channels`` channels (grey repeated into RGB, RGB averaged to grey)."""
    if images.shape[3] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=3)
    return np.round(images.mean(axis=3, keepdims=True)).astype(np.uint8)


def split_warnings(validation_images: int, classes: int) -> list[str]:
    """Warnings about a validation split too small to choose the best epoch on."""
    if validation_images * VALIDATION_STEP >= 1 and validation_images >= classes:
        return []
    step = 100.0 / max(validation_images, 1)
    return [
        f"warning: the validation split holds {validation_images} image(s) for {classes} classes: its "
        f"accuracy moves in steps of {step:.3g} points, so the epoch kept as the best is close to a coin "
        "toss between similar epochs. Give it more images (--val-fraction, --split, more data)."
    ]


def describe(dataset: Dataset) -> list[str]:
    """What was read, as lines to print before training or a report: the data's name,
    format, classes, image shape, split sizes and how it was split (and whether it came
    from the cache), then the source's notes beyond the first."""
    info = dataset.info
    height, width, channels = dataset.image_shape
    origin = ""
    if "load_seconds" in info:
        origin = f"; {'from the cache' if info.get('from_cache') else 'read'} in {info['load_seconds']:.1f} s"
    summary = (
        f"data: {dataset.name} ({info.get('format', '?')}): {len(dataset.class_names)} classes, "
        f"{height}x{width}x{channels}; train {len(dataset.train)} / val {len(dataset.val)} / "
        f"test {len(dataset.test)} ({info.get('split', '')}){origin}"
    )
    return [
        summary,
        *(f"  {note}" for note in info.get("notes", [])[1:]),
        *(f"  {note}" for note in info.get("ground_truth", [])),
    ]


def warning_lines(dataset: Dataset) -> list[str]:
    """What went wrong while reading (skipped files) and warnings about the split, as
    lines for the error stream."""
    return [*dataset.info.get("messages", []), *dataset.info.get("warnings", [])]


def load_and_report(config: DataConfig) -> Dataset:
    """:func:`load_dataset`, then :func:`describe` on standard output and
    :func:`warning_lines` on standard error: what the command lines and the benchmarks
    print before training or a report."""
    dataset = load_dataset(config)
    print("\n".join(describe(dataset)))
    for text in warning_lines(dataset):
        print(text, file=sys.stderr)
    return dataset


def _read(config: DataConfig, problems: Problems) -> tuple[RawData, bool]:
    """The source as read (from the cache when it is unchanged since the last read)."""
    if config.dataset.startswith("tfds:"):
        # tensorflow-datasets is optional and slow to import: only for tfds: names
        from fruitcnn.data.tfds_source import read_tfds

        name = config.dataset[len("tfds:") :]
        key = cache.cache_key(f"tfds:{name}:{config.data_dir}", config.image_size)
        cached = cache.load(key)
        if cached is not None:
            return cached[0], True
        raw = read_tfds(name, config.data_dir, config.image_size)
        cache.store(key, raw, [], config.dataset)
        return raw, False
    path = Path(config.dataset).expanduser()
    if not path.exists():
        raise DatasetError(
            f"unknown dataset {config.dataset!r}: not a built-in name ({', '.join(DATASETS)}), not "
            "tfds:NAME, and no file or folder of that name exists"
            f" (relative to {Path.cwd()}).\n"
            "  expected: 'line' (generated, no download), a folder of class folders, Fruits-360 "
            f"Training/Test, MNIST IDX, CIFAR, STL-10 or mini-ImageNet files, an archive "
            f"({', '.join(ARCHIVE_SUFFIXES)}), or tfds:NAME.\n"
            "  fix: check the path (e.g. --dataset ../shared/data/fruits-360-24.tgz)."
        )
    tree = open_tree(path, problems, parse_unpack_limits(config.unpack_limits))
    key = cache.cache_key(tree.fingerprint(), config.image_size, streamed=config.stream)
    cached = cache.load(key)
    if cached is not None:
        raw, skipped = cached
        for item in skipped:
            problems.skip(item["reason"], item["file"], item["detail"])
        return raw, True
    if config.stream:
        with cache.stream_writer(key, str(path)) as writer:
            raw = read_source(tree, problems, config.image_size, writer)
            if problems.errors:  # raised by the caller; nothing is kept
                writer.discard()
                return raw, False
            return cache.commit_streamed(writer, raw, problems.skipped_list(), str(path)), False
    raw = read_source(tree, problems, config.image_size)
    if not problems.errors:
        cache.store(key, raw, problems.skipped_list(), str(path))
    return raw, False


def _assemble(raw: RawData, config: DataConfig) -> tuple[Split, Split, Split, str]:
    """Train/val/test of a source: its own split when it has one (validation carved
    from its training part when missing), else (or with an explicit --split) a
    seeded stratified split of all its images."""
    parts = raw.parts
    if _uses_own_split(raw, config):
        train = _split_of(parts["train"])
        if "val" in parts and "test" in parts:
            return train, _split_of(parts["val"]), _split_of(parts["test"]), "own train/val/test"
        kept, held = holdout(train.labels, config.val_fraction, seed=config.seed)
        if "test" in parts:
            how = f"own train/test, val = {config.val_fraction:g} of train"
            return train.take(kept), train.take(held), _split_of(parts["test"]), how
        # train/ + val/ as ImageNet-style sets ship them: results are reported on val/,
        # so it is the test split here, and the model is chosen on a part of train/
        how = (
            f"own train/val: val/ is the test split (as such sets are reported), "
            f"validation = {config.val_fraction:g} of train/"
        )
        return train.take(kept), train.take(held), _split_of(parts["val"]), how
    split = DEFAULT_SPLIT if config.split == "auto" else config.split
    how = f"{split} stratified"
    if split.startswith(TRAINING_PART):
        split = split[len(TRAINING_PART) :]
        if "train" in parts:  # the own test part is not used
            parts = {"train": parts["train"]}
            how += (
                f" of the own training part only ({len(parts['train'].labels)} images; its test part unused)"
            )
    if len(parts) == 1:
        whole = _split_of(next(iter(parts.values())))
    else:
        images = [part.images for part in parts.values()]
        whole = Split(
            rows.concatenate(images) if isinstance(images[0], Rows) else np.concatenate(images),
            np.concatenate([part.labels for part in parts.values()]).astype(np.int32),
        )
        how += ", pooled from the own parts"
    train, val, test = stratified_split(
        whole.labels, split, val_fraction=config.val_fraction, seed=config.seed
    )
    return whole.take(train), whole.take(val), whole.take(test), how


def _uses_own_split(raw: RawData, config: DataConfig) -> bool:
    """Whether the source's own split (train/test, train/val/test, or train/val) is used
    (else, with an explicit --split or no train part, all parts are pooled)."""
    return config.split == "auto" and "train" in raw.parts and ("test" in raw.parts or "val" in raw.parts)


def _split_of(part: Part) -> Split:
    return Split(part.images, part.labels.astype(np.int32))


def line_dataset(config: DataConfig) -> Dataset:
    """The generated line dataset, split as ``config`` says (default 60/40)."""
    data = line.generate_line_dataset(
        config.images_per_class,
        image_size=config.image_size or line.IMAGE_SIZE,
        seed=config.seed,
        background=config.background,
    )
    whole = Split(data.images, data.labels, data.attributes, data.masks)
    split = DEFAULT_SPLIT if config.split == "auto" else config.split.removeprefix(TRAINING_PART)
    train, val, test = (
        whole.take(part)
        for part in stratified_split(data.labels, split, val_fraction=config.val_fraction, seed=config.seed)
    )
    return Dataset(
        name="line",
        train=train,
        val=val,
        test=test,
        class_names=data.class_names,
        attribute_names=line.ATTRIBUTES,
        attribute_values=line.attribute_values(),
        info={
            "source": "line",
            "format": "generated",
            "background": config.background,
            "split": f"{split} stratified",
            "warnings": split_warnings(len(val), len(data.class_names)),
        },
    )
