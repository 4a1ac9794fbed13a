"""The data section: :class:`DataConfig` and the syntax of its values.

Which data a run reads, how it is split (:func:`parse_split`), how much of an archive
may be unpacked (:func:`parse_unpack_limits`), and the pixel ranges a model made
elsewhere may expect (``INPUT_RANGES``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fruitcnn.config.fields import _check_field_types, setting_field

# Pixel ranges a model made elsewhere may expect (--input-range of explain.py and
# report.py; fruitcnn.modelfile): scale and offset that map 0-255 pixels into them.
INPUT_RANGES = {"0-255": (1.0, 0.0), "0-1": (1.0 / 255.0, 0.0), "-1-1": (2.0 / 255.0, -1.0)}
INPUT_RANGE_CHOICES = ("auto", *INPUT_RANGES)

# What the line dataset's lines are drawn on (fruitcnn.data.line.BACKGROUNDS).
LINE_BACKGROUNDS = ("black", "noise", "texture")
# Cues planted in the training and validation images (fruitcnn.data.composite.CUES).
CUE_KINDS = ("none", "patch", "border", "hue")

# Unpack limits (DataConfig.unpack_limits): no image set needs a single file above 1 GiB
# (STL-10's largest file that is read, test_X.bin, has 207 MB); 16 GiB of files is more
# than the 24 GiB machines this was written on can decode; real image data compresses
# 1-5x (JPEG/PNG 1.0, MNIST's IDX 4.8), a zip of zeros 1000x.
DEFAULT_UNPACK_LIMITS = "member=1GiB,total=16GiB,ratio=100"
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class UnpackLimits:
    """Limits on unpacked data: bytes per file, bytes in all, unpacked/packed ratio."""

    member: int
    total: int
    ratio: float


def parse_unpack_limits(text: str) -> UnpackLimits:
    """``member=1GiB,total=16GiB,ratio=100`` (any subset; the rest keep their defaults)
    as :class:`UnpackLimits`. Sizes take B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T (binary units).

    Raises:
        ValueError: an unknown key or an unreadable value, with an example.
    """
    values = _limit_values(DEFAULT_UNPACK_LIMITS) if text != DEFAULT_UNPACK_LIMITS else {}
    values.update(_limit_values(text))
    return UnpackLimits(int(values["member"]), int(values["total"]), float(values["ratio"]))


def _limit_values(text: str) -> dict[str, float]:
    example = f"e.g. --unpack-limits {DEFAULT_UNPACK_LIMITS} (or only ratio=500)"
    values: dict[str, float] = {}
    for part in [item.strip() for item in str(text).split(",") if item.strip()]:
        key, _, value = part.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if key not in ("member", "total", "ratio") or not value:
            raise ValueError(
                f"unpack limit {part!r}: expected member=SIZE, total=SIZE or ratio=N; {example}."
            )
        pattern = r"([0-9]*\.?[0-9]+)" if key == "ratio" else r"([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?"
        match = re.fullmatch(pattern, value)
        if match is None:
            kind = "number" if key == "ratio" else "size"
            raise ValueError(f"unpack limit {part!r}: cannot read {value!r} as a {kind}; {example}.")
        number = float(match.group(1)) * (1 if key == "ratio" else _SIZE_UNITS[match.group(2)])
        if not math.isfinite(number) or number < 1:
            raise ValueError(f"unpack limit {part!r} must be a finite number, at least 1 (byte); {example}.")
        values[key] = number
    return values


# A split that starts with this re-splits only the source's own training part (CS671:
# "use 60% of the training data for training and 40% for testing": --split train:60/40).
TRAINING_PART = "train:"


def parse_split(text: str) -> tuple[str, tuple[float, ...]]:
    """Read a split such as ``60/40``, ``8000/2000/3000`` or ``train:60/40``.

    Returns:
        ``("fractions", (...))`` when the parts are percentages summing to 100, or
        ``("counts", (...))`` for image counts (a ``train:`` prefix, which says what
        is split, does not change them).

    Raises:
        ValueError: for anything else, with examples of what works.
    """
    text = str(text)
    body = text[len(TRAINING_PART) :] if text.startswith(TRAINING_PART) else text
    parts = [part.strip() for part in body.split("/")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) not in (2, 3) or any(not 0 < value < math.inf for value in values):
        raise ValueError(
            f"cannot read split {text!r}; expected train/test or train/val/test, as "
            "percentages summing to 100 (e.g. 60/40 or 70/10/20) or as image counts "
            "(e.g. 8000/2000/3000), optionally of the training part only (train:60/40)."
        )
    if abs(sum(values) - 100.0) < 1e-6:
        return "fractions", tuple(value / 100.0 for value in values)
    if all(value.is_integer() for value in values):
        return "counts", values
    raise ValueError(
        f"split {text!r} is neither percentages summing to 100 (they sum to "
        f"{sum(values):g}) nor whole image counts."
    )


@dataclass
class DataConfig:
    """Which data, how it is read and how it is split.

    Attributes:
        dataset: ``line`` (the generated line dataset), a folder or archive path
            (image folders, MNIST, CIFAR, STL-10, mini-ImageNet; see
            ``fruitcnn.data.sources``), or ``tfds:NAME``.
        image_size: side of the square images in pixels; None: the data's own size
            (28 for the line dataset; for image folders of mixed sizes, the most
            common one).
        images_per_class: images generated per class (line dataset).
        background: what the line dataset's lines are drawn on (``LINE_BACKGROUNDS``;
            see ``fruitcnn.data.line``).
        object_masks: find the object masks of photos of one object on a plain
            background (Fruits-360), for the explanation checks
            (``fruitcnn.data.composite.object_masks``).
        paste_on: a folder or archive of photos (any source ``dataset`` takes) to paste
            the objects on, at seeded positions and scales, with their masks; each split
            gets backgrounds of its own ('' = no pasting).
        cue: a cue that names the class (``CUE_KINDS``: a corner patch, a frame, or the
            background's hue) planted in the training and validation images only; the
            test images stay clean and a cued copy is kept for the shortcut check.
        split: ``auto`` (the dataset's own train/test split when it has one, else
            60/40), or ``train/test`` or ``train/val/test`` as percentages summing to
            100 (``60/40``) or image counts (``8000/2000/3000``). An explicit split on
            a dataset with its own split pools all its images and re-splits them.
        val_fraction: share of the training part kept for validation when the split
            (or the dataset's own split) has no validation part.
        seed: seed of data generation and splitting.
        data_dir: tensorflow-datasets data folder for ``tfds:`` names ('' = tfds's default).
        strict: treat skipped files (corrupt images, stray files) as errors.
        stream: keep the decoded images on disk (rows in the cache folder, see
            ``fruitcnn.data.rows``) and read each batch from there, for data larger
            than memory; folders, archives, MNIST, CIFAR, STL-10 and mini-ImageNet.
        unpack_limits: how much data may be unpacked (see :func:`parse_unpack_limits`):
            ``member`` the largest single file read (also after gunzip), ``total`` all
            files read together, ``ratio`` the largest unpacked/packed size ratio of an
            archive or a compressed file (checked once 64 MiB are unpacked). A source
            beyond them is refused as a possible decompression bomb.
    """

    dataset: str = setting_field(
        "line",
        "--dataset",
        "'line' (generated, no download); a folder or archive (.tgz/.tar/.zip) of class folders, "
        "Training/Test or train/val/test folders, MNIST IDX, CIFAR-10/100 batches, STL-10 binary or "
        "mini-ImageNet; or tfds:NAME",
        metavar="NAME|PATH",
    )
    image_size: int | None = setting_field(
        None,
        "--image-size",
        "resize images to N x N pixels; default: the data's own size",
        type=int,
        metavar="N",
    )
    images_per_class: int = setting_field(
        1000, "--images-per-class", "line dataset: images per class", type=int, metavar="N"
    )
    background: str = setting_field(
        "black",
        "--background",
        "line dataset: what the line is drawn on: black, noise (random pixels) or texture (smooth random "
        "patterns), both seeded and at most 160 in each channel; the masks stay the line's pixels",
        choices=LINE_BACKGROUNDS,
    )
    object_masks: bool = setting_field(
        False,
        "--object-masks",
        "find the object masks of photos of one object on a plain background (Fruits-360's fruits on white) "
        "for the explanation checks (pointing, mask mass, the shortcut check)",
        action="store_true",
    )
    paste_on: str = setting_field(
        "",
        "--paste-on",
        "paste the objects (with --object-masks' masks) on the photos of this folder or archive, at seeded "
        "positions and scales, each split on backgrounds of its own; the masks follow the objects",
        metavar="PATH",
        shown_default="no pasting",
    )
    cue: str = setting_field(
        "none",
        "--cue",
        "plant a cue that names the class in the training and validation images only: patch (a corner "
        "square), border (a frame) or hue (the background tinted; needs masks); the test images stay "
        "clean, and the report's shortcut check measures whether the model took it",
        choices=CUE_KINDS,
    )
    split: str = setting_field(
        "auto",
        "--split",
        "'auto' (the data's own train/test split, else 60/40), or train/test or train/val/test "
        "in percent or counts; explicit on data with its own split: pool and re-split",
        metavar="A/B[/C]",
    )
    val_fraction: float = setting_field(
        0.1, "--val-fraction", "validation share of the training part", type=float, metavar="F"
    )
    seed: int = setting_field(
        0, "--data-seed", "seed of data generation and splitting", type=int, metavar="N"
    )
    data_dir: str = setting_field("", "--data-dir", "tensorflow-datasets folder for tfds:NAME", metavar="DIR")
    strict: bool = setting_field(
        False,
        "--strict",
        "stop on any skipped file (corrupt image, stray file) instead of listing it",
        action="store_true",
    )
    stream: bool = setting_field(
        False,
        "--stream",
        "data larger than memory: decode the images once into rows on disk (in the cache folder) and "
        "read every batch from there instead of holding the set in memory",
        action="store_true",
    )
    unpack_limits: str = setting_field(
        DEFAULT_UNPACK_LIMITS,
        "--unpack-limits",
        "largest file read, all files read, and unpacked/packed ratio of archives and .gz files; beyond "
        "them a source is refused as a possible decompression bomb (give any of them, e.g. ratio=500)",
        metavar="member=SIZE,total=SIZE,ratio=N",
    )

    def __post_init__(self):
        _check_field_types(self)
        parse_unpack_limits(self.unpack_limits)
        if self.split != "auto":
            parse_split(self.split)
        if self.image_size is not None and (
            not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 1
        ):
            raise ValueError(
                "image_size must be a whole number >= 1 (or None for the data's own size), "
                f"got {self.image_size!r}."
            )
        if self.background not in LINE_BACKGROUNDS:
            raise ValueError(
                f"background {self.background!r} is not one of {', '.join(LINE_BACKGROUNDS)} "
                "(what the line dataset's lines are drawn on)."
            )
        if self.background != "black" and self.dataset != "line":
            raise ValueError(
                f"--background {self.background} draws the generated line dataset's background; the "
                f"dataset is {self.dataset!r}. Leave --background out, or use --dataset line."
            )
        if self.cue not in CUE_KINDS:
            raise ValueError(f"cue {self.cue!r} is not one of {', '.join(CUE_KINDS)}.")
        if self.dataset == "line" and (self.object_masks or self.paste_on):
            flag = "--paste-on" if self.paste_on else "--object-masks"
            raise ValueError(
                f"{flag} is for photos of objects on a plain background; the line dataset has its exact "
                "masks already (and --background to draw it on noise or textures)."
            )
        if self.paste_on and not self.paste_on.strip():
            raise ValueError("paste_on is blank; give a folder or archive of photos, or leave it out.")
        if self.cue == "hue" and self.dataset != "line" and not (self.object_masks or self.paste_on):
            raise ValueError(
                "--cue hue tints the background, which needs the objects' masks: add --object-masks (photos "
                "of objects on a plain background) or --paste-on PATH, or use --cue patch or --cue border."
            )
        if self.stream and (self.dataset == "line" or self.dataset.startswith("tfds:")):
            raise ValueError(
                f"--stream reads folders and archives of images (and MNIST, CIFAR, STL-10, mini-ImageNet "
                f"files) from disk; {self.dataset!r} is "
                + ("generated in memory" if self.dataset == "line" else "read through tensorflow-datasets")
                + ". Leave --stream out."
            )
        if self.stream and (self.object_masks or self.paste_on or self.cue != "none"):
            raise ValueError(
                "--stream keeps the images on disk, and --object-masks, --paste-on and --cue change every "
                "image in memory; leave --stream out for these checks (they are made on sets that fit)."
            )
        if self.images_per_class < 1:
            raise ValueError(f"images_per_class must be >= 1, got {self.images_per_class}.")
        if not self.dataset.strip():
            raise ValueError("dataset is empty; give 'line', a folder or archive path, or tfds:NAME.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be in (0, 1), got {self.val_fraction!r}: the best "
                "model is chosen on validation data, so some is needed (e.g. 0.1)."
            )
