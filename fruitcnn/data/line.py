"""The line dataset: 28x28 RGB images of one straight line, 96 classes.

Every image shows one line segment described by four attributes:

* length: 7 or 15 pixels (measured along the line),
* width: 1 or 3 pixels (measured across the line),
* angle: 0, 15, ..., 165 degrees, counter-clockwise from the positive x axis
  (image rows grow downwards, so a 45 degree line rises to the right),
* colour: pure red (255, 0, 0) or pure blue (0, 0, 255).

The 2 x 2 x 12 x 2 = 96 combinations are the classes, named like
``len15_w3_ang045_red`` and ordered length, width, angle, colour (so the class id is
``((length * 2 + width) * 12 + angle) * 2 + colour`` with each attribute as its index).

A pixel is drawn when its centre lies inside the rectangle of the segment:
``-length/2 <= along < length/2`` and ``-width/2 <= across < width/2`` (half-open, so
an axis-aligned line covers exactly ``length x width`` pixels). There is no
anti-aliasing, so the drawn pixels *are* the ground-truth mask that explanation
checks compare heatmaps against. The centre is drawn uniformly (sub-pixel) from the
positions that keep the whole rectangle inside the image.

The line is drawn on a background (``BACKGROUNDS``): ``black`` (the default; every
other pixel is 0, so any map multiplied by the image is the line), ``noise`` (every
pixel and channel uniform in 0..``BACKGROUND_LEVEL``) or ``texture`` (smooth random
colour patterns: per channel, uniform values on a coarse grid, one point every
``TEXTURE_CELL`` pixels, interpolated bilinearly and stretched to 0..``BACKGROUND_LEVEL``).
Backgrounds stay at or below ``BACKGROUND_LEVEL`` (160) in every channel, so the line,
255 in its colour's channel, stays visible on any background; they come from a random
stream of their own, so the lines (positions, masks) are the same on every background.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fruitcnn.config.data import LINE_BACKGROUNDS

LENGTHS = (7, 15)  # pixels along the line
WIDTHS = (1, 3)  # pixels across the line
ANGLES = tuple(range(0, 180, 15))  # degrees, counter-clockwise
COLOURS = ("red", "blue")
COLOUR_RGB = {"red": (255, 0, 0), "blue": (0, 0, 255)}
ATTRIBUTES = ("length", "width", "angle", "colour")
NUM_CLASSES = len(LENGTHS) * len(WIDTHS) * len(ANGLES) * len(COLOURS)
BACKGROUNDS = LINE_BACKGROUNDS
# Brightest background value in any channel: the line (255 in its channel) stays visible.
BACKGROUND_LEVEL = 160
# Texture: pixels between the points of the coarse random grid.
TEXTURE_CELL = 4

# Images are drawn in chunks so the float32 distance grids stay near 100 MB.
_CHUNK_IMAGES = 8192


@dataclass(frozen=True)
class LineData:
    """Images and every label of a generated line dataset.

    Attributes:
        images: uint8 array (N, size, size, 3).
        labels: int32 class ids (N,), in ``0 .. 95``.
        attributes: int32 array (N, 4): indices into LENGTHS, WIDTHS, ANGLES, COLOURS
            (columns in the order of ``ATTRIBUTES``).
        masks: bool array (N, size, size), True where the line was drawn.
        class_names: the 96 readable class names, indexed by class id.
    """

    images: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray
    masks: np.ndarray
    class_names: tuple[str, ...]


def class_name(length_index: int, width_index: int, angle_index: int, colour_index: int) -> str:
    """Return the readable name of one class, e.g. ``len15_w3_ang045_red``."""
    return (
        f"len{LENGTHS[length_index]}_w{WIDTHS[width_index]}"
        f"_ang{ANGLES[angle_index]:03d}_{COLOURS[colour_index]}"
    )


def class_id(length_index, width_index, angle_index, colour_index):
    """Class id from attribute indices (works on ints and NumPy arrays alike)."""
    return ((length_index * len(WIDTHS) + width_index) * len(ANGLES) + angle_index) * len(
        COLOURS
    ) + colour_index


def class_attributes(class_ids) -> np.ndarray:
    """Inverse of :func:`class_id`: an int32 array (..., 4) of attribute indices."""
    ids = np.asarray(class_ids, dtype=np.int64)
    colour = ids % len(COLOURS)
    rest = ids // len(COLOURS)
    angle = rest % len(ANGLES)
    rest = rest // len(ANGLES)
    width = rest % len(WIDTHS)
    length = rest // len(WIDTHS)
    return np.stack([length, width, angle, colour], axis=-1).astype(np.int32)


def attribute_values() -> dict[str, tuple[str, ...]]:
    """Readable names of every attribute's values, e.g. ``{"length": ("len7", "len15"), ...}``."""
    return {
        "length": tuple(f"len{value}" for value in LENGTHS),
        "width": tuple(f"w{value}" for value in WIDTHS),
        "angle": tuple(f"ang{value:03d}" for value in ANGLES),
        "colour": tuple(COLOURS),
    }


CLASS_NAMES = tuple(class_name(*attrs) for attrs in class_attributes(np.arange(NUM_CLASSES)).tolist())


def _smallest_image_size() -> int:
    """The smallest square image that holds the longest, widest line at any angle."""
    radians = np.deg2rad(np.asarray(ANGLES, dtype=np.float64))
    half_extent = 0.5 * (max(LENGTHS) * np.abs(np.cos(radians)) + max(WIDTHS) * np.abs(np.sin(radians)))
    half_extent = np.maximum(
        half_extent,
        0.5 * (max(LENGTHS) * np.abs(np.sin(radians)) + max(WIDTHS) * np.abs(np.cos(radians))),
    )
    return int(np.ceil(2 * half_extent.max())) + 1


MIN_IMAGE_SIZE = _smallest_image_size()
# Side of the images unless --image-size says otherwise.
IMAGE_SIZE = 28


def generate_line_dataset(
    images_per_class: int = 1000, *, image_size: int = IMAGE_SIZE, seed: int = 0, background: str = "black"
) -> LineData:
    """Generate the line dataset, deterministically for a given seed.

    Args:
        images_per_class: how many images of each of the 96 classes.
        image_size: side of the square images in pixels (at least ``MIN_IMAGE_SIZE``).
        seed: seed of the NumPy generator that places the lines (the background has a
            stream of its own from the same seed).
        background: one of ``BACKGROUNDS`` (see the module notes).

    Returns:
        A :class:`LineData`; images are ordered class by class
        (``labels == np.repeat(arange(96), images_per_class)``), so shuffle or split
        them with the seeded helpers in ``fruitcnn.data.splits``.

    Raises:
        ValueError: for a non-positive count, an image too small for the lines or an
            unknown background.
    """
    if int(images_per_class) != images_per_class or images_per_class < 1:
        raise ValueError(
            f"images_per_class must be a positive integer, got {images_per_class!r}; "
            "e.g. 1000 (the default) or 50 for a quick test."
        )
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size {image_size!r} is too small for the line dataset: a "
            f"{max(LENGTHS)}-pixel line of width {max(WIDTHS)} needs at least "
            f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels; pass image_size >= {MIN_IMAGE_SIZE}."
        )
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown line background {background!r}; expected one of {', '.join(BACKGROUNDS)}.")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), images_per_class)
    attributes = class_attributes(labels)
    total = labels.size
    # Draw the random numbers for all images up front so the result does not depend on
    # the chunk size.
    unit_positions = rng.random((total, 2))
    images = np.zeros((total, image_size, image_size, 3), dtype=np.uint8)
    masks = np.zeros((total, image_size, image_size), dtype=bool)
    for start in range(0, total, _CHUNK_IMAGES):
        stop = min(start + _CHUNK_IMAGES, total)
        masks[start:stop] = _draw_masks(attributes[start:stop], unit_positions[start:stop], image_size)
    if background != "black":
        images[:] = _backgrounds(background, total, image_size, np.random.default_rng([seed, 1]))
    colours = np.asarray([COLOUR_RGB[name] for name in COLOURS], dtype=np.uint8)
    images[masks] = colours[np.broadcast_to(attributes[:, 3, None, None], masks.shape)[masks]]
    return LineData(images, labels, attributes, masks, CLASS_NAMES)


def _backgrounds(kind: str, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` backgrounds (count, size, size, 3) uint8 in 0..BACKGROUND_LEVEL."""
    if kind == "noise":
        return rng.integers(0, BACKGROUND_LEVEL + 1, (count, size, size, 3), dtype=np.uint8)
    points = -(-(size - 1) // TEXTURE_CELL) + 1  # grid points per side, covering the image
    images = np.empty((count, size, size, 3), np.uint8)
    place = np.arange(size, dtype=np.float32) / TEXTURE_CELL
    low = np.minimum(place.astype(np.int64), points - 2)  # the grid point before each pixel
    down, across = (place - low)[None, :, None, None], (place - low)[None, None, :, None]
    for start in range(0, count, _CHUNK_IMAGES):
        stop = min(start + _CHUNK_IMAGES, count)
        grid = rng.random((stop - start, points, points, 3), dtype=np.float32)
        rows = grid[:, low] * (1 - down) + grid[:, low + 1] * down  # (n, size, points, 3)
        smooth = rows[:, :, low] * (1 - across) + rows[:, :, low + 1] * across
        lowest = smooth.min(axis=(1, 2), keepdims=True)
        spread = np.maximum(smooth.max(axis=(1, 2), keepdims=True) - lowest, 1e-6)
        images[start:stop] = np.round((smooth - lowest) / spread * BACKGROUND_LEVEL).astype(np.uint8)
    return images


def _draw_masks(attributes: np.ndarray, unit_positions: np.ndarray, image_size: int) -> np.ndarray:
    """Rasterise the line rectangles of one chunk; returns bool (n, size, size)."""
    length = np.asarray(LENGTHS, dtype=np.float32)[attributes[:, 0]]
    width = np.asarray(WIDTHS, dtype=np.float32)[attributes[:, 1]]
    radians = np.deg2rad(np.asarray(ANGLES, dtype=np.float32)[attributes[:, 2]])
    cos, sin = np.cos(radians), np.sin(radians)
    # Half extent of the rectangle along x (columns) and y (rows), in pixels.
    half_x = 0.5 * (length * np.abs(cos) + width * np.abs(sin))
    half_y = 0.5 * (length * np.abs(sin) + width * np.abs(cos))
    # Pixel centres are at integer coordinates 0 .. size-1; keep the rectangle inside.
    low_x, low_y = half_x - 0.5, half_y - 0.5
    centre_x = low_x + unit_positions[:, 0].astype(np.float32) * (image_size - 1 - 2 * low_x)
    centre_y = low_y + unit_positions[:, 1].astype(np.float32) * (image_size - 1 - 2 * low_y)
    grid = np.arange(image_size, dtype=np.float32)
    dx = grid[None, None, :] - centre_x[:, None, None]
    dy = centre_y[:, None, None] - grid[None, :, None]  # rows grow downwards
    along = dx * cos[:, None, None] + dy * sin[:, None, None]
    across = -dx * sin[:, None, None] + dy * cos[:, None, None]
    half_length = 0.5 * length[:, None, None]
    half_width = 0.5 * width[:, None, None]
    # A tiny tolerance keeps exact axis-aligned cases from flipping on float rounding.
    tolerance = np.float32(1e-4)
    return (
        (along >= -half_length - tolerance)
        & (along < half_length - tolerance)
        & (across >= -half_width - tolerance)
        & (across < half_width - tolerance)
    )


def write_png_folders(data: LineData, root) -> int:
    """Write the images as ``root/<class name>/<index>.png`` (an image-folder tree).

    Returns:
        The number of files written.
    """

    root = Path(root)
    for name in set(data.class_names[label] for label in data.labels):
        (root / name).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(data.images, data.labels)):
        Image.fromarray(image).save(root / data.class_names[label] / f"{index:06d}.png")
    return int(len(data.labels))


def main(argv=None) -> int:
    """``python -m fruitcnn.data.line --out DIR``: write the dataset as PNG folders."""
    parser = argparse.ArgumentParser(
        prog="python -m fruitcnn.data.line",
        description="Write the line dataset as PNG files, one folder per class.",
    )
    parser.add_argument("--out", required=True, help="folder to write into")
    parser.add_argument("--images-per-class", type=int, default=1000, help="default: 1000")
    parser.add_argument("--image-size", type=int, default=28, help="default: 28")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--background", choices=BACKGROUNDS, default="black", help="default: black")
    args = parser.parse_args(argv)
    try:
        data = generate_line_dataset(
            args.images_per_class, image_size=args.image_size, seed=args.seed, background=args.background
        )
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    count = write_png_folders(data, args.out)
    print(f"wrote {count} PNG files in {NUM_CLASSES} class folders under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
