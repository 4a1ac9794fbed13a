"""Decoding image files into uint8 arrays, the same way for training and for explain.py.

Every mode Pillow reads is converted consistently: greyscale (``1``, ``L``, ``I``,
``I;16``, ``F``) stays one channel, unless the set also holds colour images; colour
(``RGB``, palette ``P``, ``CMYK``, ``YCbCr`` ...) becomes RGB; transparency (``RGBA``,
``LA``, palettes with a transparent colour) is composited over white. Resizing uses
Pillow's antialiased bilinear filter (JPEGs larger than twice the target are first
reduced in the decoder, as Pillow's ``draft`` allows); the aspect ratio is not kept.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_BACKGROUND = 255  # transparent pixels become white
# Files decoded per task: large enough to keep the pool's overhead small.
_CHUNK = 64
# Largest image decoded, in pixels (after a JPEG's reduction in the decoder): Pillow's
# own decompression-bomb threshold (89.5 million, about 268 MB as RGB). A small file
# that claims more (a PNG of zeros declaring 100,000 x 100,000) is refused unread. An
# image with more than 3 bands (RGBA, CMYK) counts its extra bands as pixels too: its
# conversion holds several copies (an RGBA PNG just under the pixel limit took 1.7 GB).
MAX_PIXELS = 89_478_485
_COUNTED_BANDS = 3


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageReadError(ValueError):
    """A file that is not a readable image (corrupt, truncated or another format)."""


def decode(content: bytes, size: tuple[int, int] | None = None, channels: int | None = 3) -> np.ndarray:
    """One image file as uint8 (height, width, channels).

    Args:
        content: the file's bytes (any format Pillow reads).
        size: (height, width) to resize to; None keeps the file's size.
        channels: 1 (greyscale) or 3 (RGB); None: 1 for greyscale files, else 3.

    Raises:
        ImageReadError: corrupt, truncated or not an image.
    """
    if channels not in (1, 3, None):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency"
            with Image.open(io.BytesIO(content)) as image:
                if channels is None:
                    channels = 1 if image.mode in _GREY_MODES else 3
                if size is not None and image.format == "JPEG":
                    image.draft("RGB" if channels == 3 else "L", (size[1] * 2, size[0] * 2))
                bands = max(len(image.getbands()), _COUNTED_BANDS) / _COUNTED_BANDS
                if image.width * image.height * bands > MAX_PIXELS:
                    raise ImageReadError(
                        f"{image.width} x {image.height} pixels, more than the {MAX_PIXELS:,} decoded "
                        "at most "
                        "(a decompression bomb, or a picture far larger than any training image)"
                    )
                image.load()
                image = _convert(image, channels)
                if size is not None and (image.height, image.width) != tuple(size):
                    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow's decoders fail in many ways on damaged files
        raise ImageReadError(_reason(error)) from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def _convert(image: Image.Image, channels: int) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    elif mode in ("I", "F"):
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (_BACKGROUND,) * 3 + (255,))
        image = Image.alpha_composite(background, rgba)
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def _reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(error, (OSError, ValueError, SyntaxError)):
        return (str(error) or type(error).__name__).splitlines()[0][:200]
    return f"damaged file ({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''})"


@dataclass
class Decoded:
    """Result of :func:`decode_many`: the images that could be read, and why the others failed.

    Attributes:
        images: uint8 (N_ok, H, W, C).
        kept: indices (into the input list) of the rows of ``images``.
        failed: index -> reason for every file that could not be read.
        size: (height, width) of the images.
        channels: 1 or 3.
        resized: how many images had another size and were resized.
    """

    images: np.ndarray
    kept: np.ndarray
    failed: dict[int, str]
    size: tuple[int, int]
    channels: int
    resized: int


def decode_many(
    contents: Sequence[bytes],
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    workers: int | None = None,
    *,
    uniform: tuple[tuple[int, int], int] | None = None,
) -> Decoded:
    """Decode many image files in parallel threads into one uint8 array.

    Every file is decoded once, at its own size unless ``size`` is given; then the
    set is made uniform.

    Args:
        contents: the files' bytes.
        size: (height, width) for all images; None: the most common size of the set
            (the others are resized to it).
        channels: 1 or 3; None: 1 when every image is greyscale, else 3 (greyscale
            images of a mixed set are repeated into RGB).
        workers: threads (default: one per CPU core; Pillow decodes without the GIL).
        uniform: ((height, width), channels) of the set when known beforehand (a
            streamed set decoded in chunks, see :func:`header_shape`): the images are
            made uniform to it as to the set's own choice.

    Returns:
        :class:`Decoded`; files that are not readable images are in ``failed``.
    """
    workers = workers or os.cpu_count() or 1
    count = len(contents)
    arrays: list[np.ndarray | None] = [None] * count
    failed: dict[int, str] = {}

    def decode_chunk(start):
        for index in range(start, min(start + _CHUNK, count)):
            try:
                arrays[index] = decode(contents[index], size, channels)
            except ImageReadError as error:
                failed[index] = str(error)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode_chunk, range(0, count, _CHUNK)))
    kept = np.asarray([index for index in range(count) if arrays[index] is not None], np.int64)
    if not kept.size:
        return Decoded(np.zeros((0, 1, 1, channels or 3), np.uint8), kept, failed, (1, 1), channels or 3, 0)
    if uniform is not None:
        size, channels = uniform
    if size is None:
        size = Counter(arrays[i].shape[:2] for i in kept).most_common(1)[0][0]
    if channels is None:
        channels = 1 if all(arrays[i].shape[2] == 1 for i in kept) else 3
    images = np.empty((kept.size, size[0], size[1], channels), np.uint8)
    resized = 0
    for row, index in enumerate(kept):
        array = arrays[index]
        if array.shape[:2] != tuple(size):
            array = resize_image(array, tuple(size))
            resized += 1
        images[row] = array  # a greyscale image broadcasts into RGB
        arrays[index] = None
    return Decoded(images, kept, failed, tuple(size), channels, resized)


def header_shape(content: bytes) -> tuple[tuple[int, int], int] | None:
    """((height, width), channels) an image file decodes to by :func:`decode` with
    ``channels=None``, from its header alone; None when the header is unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(content)) as image:
                return (image.height, image.width), 1 if image.mode in _GREY_MODES else 3
    except Exception:  # noqa: BLE001 - as in decode: damaged files fail in many ways
        return None


def read_image_file(
    path: str | os.PathLike, size: tuple[int, int] | None = None, channels: int = 3
) -> np.ndarray:
    """An image file from disk as uint8 (H, W, C), converted as for training.

    Raises:
        ValueError: when the file is missing or not a readable image.
    """
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error.strerror or error}.") from None
    try:
        return decode(content, size, channels)
    except ImageReadError as error:
        raise ValueError(
            f"{path} is not a readable image ({error}); expected one of {', '.join(IMAGE_EXTENSIONS)}."
        ) from None


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One uint8 (H, W, C) image resized to ``size`` = (height, width) with the same
    filter as :func:`decode`."""
    channels = image.shape[2]
    plane = image[:, :, 0] if channels == 1 else image
    resized = Image.fromarray(plane).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized).reshape(size[0], size[1], channels)


def resize_many(images: np.ndarray, size: tuple[int, int], workers: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, C) images resized to ``size`` (see :func:`resize_image`), in
    parallel threads."""
    count, _, _, channels = images.shape
    result = np.empty((count, size[0], size[1], channels), np.uint8)

    def resize_chunk(start):
        for index in range(start, min(start + _CHUNK * 8, count)):
            result[index] = resize_image(images[index], size)

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(resize_chunk, range(0, count, _CHUNK * 8)))
    return result
