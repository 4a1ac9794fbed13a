"""Ground truth on clutter: object masks of photos on a plain background, objects pasted on
other photos, and cues planted to test whether a model takes a shortcut.

* :func:`object_masks`: for photos of one object on a plain background (Fruits-360: a
  fruit on white), the object's pixels. The background colour of each image is the
  median of its border (``BORDER`` pixels wide); a pixel belongs to the object when any
  channel differs from it by more than ``max(MIN_CONTRAST, SPREAD_FACTOR x the border's
  own spread)``; specks and lines one pixel wide are removed and holes (a highlight inside the
  object) filled. Images whose border is not plain are refused (:func:`plain_border_problem`).
* :func:`paste_objects`: each object (its mask's bounding box) scaled so that its longer
  side is a seeded share of the image side (``PASTE_SCALE``) and pasted at a seeded
  position on a background photo; the pasted mask is the new image's exact object mask.
* :func:`plant_cue`: a cue that names the class (its colour, :func:`cue_colours`), in
  one of ``CUES``: ``patch`` (a square of ``PATCH_SHARE`` of the side in the top-left
  corner), ``border`` (a frame ``BORDER_SHARE`` of the side wide) or ``hue`` (the
  background, every pixel off the object, blended ``HUE_STRENGTH`` towards the colour).
  :func:`fruitcnn.data.load_dataset` plants it in the training and validation images
  only; the test images stay clean, with a cued copy kept for the shortcut check, which
  also puts the cues of other classes in its place (:func:`cue_substitutes`).

The constants were set by looking at Fruits-360 (100x100, borders at 253-255 with a
spread of at most 2 levels; objects cover 38-84% of the image) and the line dataset;
none depends on a class, an image size or a colour of either.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from fruitcnn.config.data import CUE_KINDS
from fruitcnn.data.images import resize_image

# Border pixels whose median is the background colour, and the least difference from it
# that counts as object (JPEG noise on a white background stays below 10).
BORDER = 2
MIN_CONTRAST = 24
SPREAD_FACTOR = 6
# A border whose pixels differ from its median colour by more than this (the median over
# its pixels of the largest channel difference) is not plain (a photo's border varies by
# tens of levels); at least PLAIN_SHARE of the images must have a plain one.
PLAIN_SPREAD = 12
PLAIN_SHARE = 0.9
# The pasted object's longer side as a share of the image side (uniform in this range).
PASTE_SCALE = (0.4, 0.8)
# Cues (DataConfig.cue): their sizes as a share of the image side, and the hue's blend.
CUES = CUE_KINDS
PATCH_SHARE = 0.12
BORDER_SHARE = 0.04
HUE_STRENGTH = 0.35
# The shortcut check's substitutes: the cues of at most this many other classes, their
# offsets spread evenly over the classes (all the others up to this many).
MAX_SUBSTITUTES = 31
_CHUNK = 2048


def border_pixels(images: np.ndarray, width: int = BORDER) -> np.ndarray:
    """The pixels of each image's frame ``width`` wide, int16 (N, P, C)."""
    images = np.asarray(images)
    count, _, _, channels = images.shape
    parts = [
        images[:, :width].reshape(count, -1, channels),
        images[:, -width:].reshape(count, -1, channels),
        images[:, width:-width, :width].reshape(count, -1, channels),
        images[:, width:-width, -width:].reshape(count, -1, channels),
    ]
    return np.concatenate(parts, axis=1).astype(np.int16)


def border_colour(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's background colour (the median of its border, (N, C)) and the border's
    spread around it (the median over its pixels of the largest channel difference, (N,))."""
    border = border_pixels(images)
    colour = np.median(border, axis=1)
    return colour, np.median(np.abs(border - colour[:, None]).max(axis=-1), axis=1)


def plain_border_problem(images: np.ndarray) -> str | None:
    """Why ``images`` are not objects on a plain background (their borders vary too much,
    or too few images have one), or None when they are."""
    _, spread = border_colour(images)
    plain = spread <= PLAIN_SPREAD
    if plain.mean() >= PLAIN_SHARE:
        return None
    return (
        f"{plain.mean():.0%} of the images have a plain border (their {BORDER}-pixel frame within "
        f"{PLAIN_SPREAD} levels of its median colour; the median spread is {np.median(spread):.0f}), "
        f"and object masks need at least {PLAIN_SHARE:.0%}: photos of one object on a plain background "
        "(as Fruits-360's fruits on white)"
    )


def object_masks(images: np.ndarray) -> np.ndarray:
    """The object pixels of photos of one object on a plain background, bool (N, H, W).

    Raises:
        ValueError: when the images are not on plain backgrounds (:func:`plain_border_problem`).
    """
    images = np.asarray(images)
    if images.ndim != 4 or min(images.shape[1:3]) <= 2 * BORDER + 2:
        raise ValueError(
            f"object masks need images (N, H, W, C) larger than {2 * BORDER + 2} pixels a side, "
            f"got shape {images.shape}."
        )
    problem = plain_border_problem(images)
    if problem:
        raise ValueError(f"cannot find the objects: {problem}.")
    masks = np.empty(images.shape[:3], bool)
    for start in range(0, len(images), _CHUNK):
        chunk = images[start : start + _CHUNK].astype(np.int16)
        colour, spread = border_colour(chunk)
        threshold = np.maximum(MIN_CONTRAST, SPREAD_FACTOR * spread)
        difference = np.abs(chunk - colour[:, None, None].astype(np.int16))
        found = (
            difference.max(axis=-1)
            if difference.shape[-1] != 3
            else np.maximum(np.maximum(difference[..., 0], difference[..., 1]), difference[..., 2])
        )
        found = found > threshold[:, None, None]
        masks[start : start + _CHUNK] = fill_holes(_open(found))
    return masks


def _grow(masks: np.ndarray) -> np.ndarray:
    """Each pixel or any of its four neighbours set (dilation with a cross)."""
    grown = masks.copy()
    grown[:, 1:] |= masks[:, :-1]
    grown[:, :-1] |= masks[:, 1:]
    grown[:, :, 1:] |= masks[:, :, :-1]
    grown[:, :, :-1] |= masks[:, :, 1:]
    return grown


def _shrink(masks: np.ndarray) -> np.ndarray:
    """Each pixel and all of its four neighbours inside the image set (erosion with a cross)."""
    shrunk = masks.copy()
    shrunk[:, 1:] &= masks[:, :-1]
    shrunk[:, :-1] &= masks[:, 1:]
    shrunk[:, :, 1:] &= masks[:, :, :-1]
    shrunk[:, :, :-1] &= masks[:, :, 1:]
    return shrunk


def _open(masks: np.ndarray) -> np.ndarray:
    """Morphological opening with a cross: removes specks and lines one pixel wide."""
    return _grow(_shrink(masks)) & masks


def fill_holes(masks: np.ndarray) -> np.ndarray:
    """``masks`` with every region of background that the image's border cannot reach
    (through background, four-connected) set: the holes inside objects."""
    masks = np.asarray(masks, bool)
    reach = np.zeros_like(masks)
    reach[:, 0], reach[:, -1], reach[:, :, 0], reach[:, :, -1] = True, True, True, True
    reach &= ~masks
    while True:
        grown = _grow(reach) & ~masks
        if np.array_equal(grown, reach):
            return ~reach
        reach = grown


def paste_objects(
    objects: np.ndarray,
    masks: np.ndarray,
    backgrounds: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = PASTE_SCALE,
) -> tuple[np.ndarray, np.ndarray]:
    """Each object pasted on its background: (images uint8 (N, H, W, C), masks bool (N, H, W)).

    Args:
        objects: uint8 (N, h, w, C) photos of objects with their ``masks`` (N, h, w).
        backgrounds: uint8 (N, H, W, C), one per object (the output's size).
        rng: draws each object's scale (its bounding box's longer side as a share of the
            shorter image side, uniform in ``scale``) and position (uniform where it fits).

    Raises:
        ValueError: for shapes that do not agree or an object without pixels.
    """
    objects, masks, backgrounds = np.asarray(objects), np.asarray(masks, bool), np.asarray(backgrounds)
    if objects.shape[:3] != masks.shape or len(backgrounds) != len(objects):
        raise ValueError(
            f"objects {objects.shape}, masks {masks.shape} and backgrounds {backgrounds.shape} do not "
            "agree: one mask and one background per object."
        )
    if objects.shape[3] != backgrounds.shape[3]:
        raise ValueError(f"objects have {objects.shape[3]} channels, backgrounds {backgrounds.shape[3]}.")
    empty = np.flatnonzero(~masks.any(axis=(1, 2)))
    if empty.size:
        raise ValueError(
            f"{empty.size} object mask(s) are empty (first: image {empty[0]}); nothing to paste."
        )
    count, height, width = backgrounds.shape[:3]
    shares = rng.uniform(scale[0], scale[1], count)
    places = rng.random((count, 2))
    images, pasted = backgrounds.copy(), np.zeros((count, height, width), bool)
    for index in range(count):
        rows, columns = np.flatnonzero(masks[index].any(axis=1)), np.flatnonzero(masks[index].any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
        crop, crop_mask = objects[index][box], masks[index][box]
        factor = shares[index] * min(height, width) / max(crop_mask.shape)
        size_h = int(np.clip(round(crop_mask.shape[0] * factor), 1, height))
        size_w = int(np.clip(round(crop_mask.shape[1] * factor), 1, width))
        scaled = resize_image(crop, (size_h, size_w))
        scaled_mask = (
            np.asarray(
                Image.fromarray(crop_mask.astype(np.uint8) * 255).resize(
                    (size_w, size_h), Image.Resampling.BILINEAR
                )
            )
            >= 128
        )
        top = int(places[index, 0] * (height - size_h + 1))
        left = int(places[index, 1] * (width - size_w + 1))
        window = (slice(top, top + size_h), slice(left, left + size_w))
        images[index][window] = np.where(scaled_mask[..., None], scaled, images[index][window])
        pasted[index][window] = scaled_mask
    return images, pasted


def cue_colours(classes: int) -> np.ndarray:
    """One colour per class, uint8 (classes, 3): hues evenly spaced around the colour
    circle at full saturation, the odd classes at 60% brightness (so neighbouring
    classes differ in hue by 720/classes degrees and in brightness)."""
    if classes < 1:
        raise ValueError(f"a cue needs at least one class, got {classes}.")
    colours = [
        colorsys.hsv_to_rgb(index / classes, 1.0, 1.0 if index % 2 == 0 else 0.6) for index in range(classes)
    ]
    return np.round(np.asarray(colours) * 255).astype(np.uint8)


def cue_region(kind: str, shape: tuple[int, int], masks: np.ndarray | None = None) -> np.ndarray:
    """Where a cue of ``kind`` lies, bool (N, H, W) for ``hue`` (off the object, from
    ``masks``) or (H, W) for ``patch`` and ``border``."""
    height, width = shape
    side = min(height, width)
    if kind == "patch":
        size = max(2, round(PATCH_SHARE * side))
        region = np.zeros(shape, bool)
        region[:size, :size] = True
        return region
    if kind == "border":
        size = max(1, round(BORDER_SHARE * side))
        region = np.ones(shape, bool)
        region[size:-size, size:-size] = False
        return region
    if kind == "hue":
        if masks is None:
            raise ValueError(
                "a hue cue tints the background, which needs the objects' masks: data with masks "
                "(the line dataset, --object-masks or --paste-on), or another cue (patch, border)."
            )
        return ~np.asarray(masks, bool)
    raise ValueError(f"unknown cue {kind!r}; expected one of {', '.join(CUES[1:])}.")


def plant_cue(
    images: np.ndarray, labels: np.ndarray, kind: str, classes: int, masks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``images`` with the cue of each one's class: (cued uint8 (N, H, W, C), where the
    cue lies bool (N, H, W)). Grey images (one channel) get the colour's brightness.

    Raises:
        ValueError: an unknown cue, or ``hue`` without masks.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    region = cue_region(kind, images.shape[1:3], masks)
    region = np.broadcast_to(region, images.shape[:3])
    colours = cue_colours(classes).astype(np.float32)
    if images.shape[3] == 1:
        colours = colours.mean(axis=1, keepdims=True)
    weight = HUE_STRENGTH if kind == "hue" else 1.0
    which, rows, columns = np.nonzero(region)
    cued = images.copy()
    pixels = images[which, rows, columns].astype(np.float32)
    cued[which, rows, columns] = np.round(pixels * (1 - weight) + colours[labels[which]] * weight).astype(
        np.uint8
    )
    return cued, np.array(region)


def substitute_offsets(classes: int) -> np.ndarray:
    """The class offsets k of :func:`cue_substitutes`: all of 1 .. classes - 1, or
    ``MAX_SUBSTITUTES`` of them spread evenly."""
    if classes < 2:
        raise ValueError(f"another class's cue needs at least two classes, got {classes}.")
    count = min(classes - 1, MAX_SUBSTITUTES)
    return np.unique(np.round(np.linspace(1, classes - 1, count)).astype(int))


def cue_substitutes(images: np.ndarray, labels: np.ndarray, kind: str, classes: int, masks=None):
    """The clean ``images`` with the cue of another class, one array per class offset k
    (:func:`substitute_offsets`): image i gets the cue of class (label_i + k) mod classes,
    where :func:`plant_cue` puts its own. A generator (one array in memory at a time)."""
    labels = np.asarray(labels)
    for offset in substitute_offsets(classes):
        yield plant_cue(images, (labels + offset) % classes, kind, classes, masks)[0]
