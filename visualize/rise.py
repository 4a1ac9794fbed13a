"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das and Saenko, BMVC 2018).

The image is shown through many random masks; a pixel's importance is the class
probability averaged over the masked copies, each weighted by how much that pixel was
shown: ``S = sum_i p(class | masked_i) M_i / (N * keep)``, the expected probability
given that the pixel is visible. Perturbation, like occlusion, but of many scattered
regions at once, so it sees evidence that only counts together.

Masks (:func:`rise_masks`, seeded, the same for every image): a ``cells`` x ``cells``
grid of cells, each kept with probability ``keep``, upsampled bilinearly to a grid one
cell larger than the image and cut at a random offset (so the cell edges fall anywhere)
into values in [0, 1]. A masked copy is ``M * image + (1 - M) * fill``: the fill is the
training mean colour by default (occlusion's ``mean``; the paper shows black, which on
the line dataset's black background would hide nothing).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from visualize.methods import RISE_CELLS, RISE_KEEP, RISE_MASKS
from visualize.occlusion import default_patch, fill_image
from visualize.targets import (
    as_images,
    check_per_image,
    class_probability,
    compiled,
    logits_model,
    resolve_head,
    resolve_targets,
)

# Masked copies per compiled call.
DEFAULT_BATCH = 256


def rise_masks(
    count: int, shape, *, cells: int = RISE_CELLS, keep: float = RISE_KEEP, seed: int = 0
) -> np.ndarray:
    """``count`` soft masks, float32 (count, H, W) in [0, 1] (see the module notes)."""
    if int(count) != count or count < 1:
        raise ValueError(f"RISE needs at least 1 mask (e.g. {RISE_MASKS}), got {count!r}.")
    if int(cells) != cells or cells < 1:
        raise ValueError(f"cells must be a whole number >= 1 (e.g. {RISE_CELLS}), got {cells!r}.")
    if not 0.0 < keep < 1.0:
        raise ValueError(f"keep must lie in (0, 1) (e.g. {RISE_KEEP}), got {keep!r}.")
    height, width = int(shape[0]), int(shape[1])
    rng = np.random.default_rng(seed)
    cell_height, cell_width = -(-height // cells), -(-width // cells)
    grid = (rng.random((count, cells, cells)) < keep).astype(np.float32)
    # bilinear upsampling onto (cells + 1) cells, then a random window of the image's size
    large = tf.image.resize(
        grid[..., None], ((cells + 1) * cell_height, (cells + 1) * cell_width), "bilinear"
    )
    large = large.numpy()[..., 0]
    rows, columns = rng.integers(0, cell_height, count), rng.integers(0, cell_width, count)
    masks = np.stack(
        [
            large[index, row : row + height, column : column + width]
            for index, (row, column) in enumerate(zip(rows, columns))
        ]
    )
    return np.clip(masks, 0.0, 1.0).astype(np.float32)


def _masked_probability_function(model: keras.Model, head: str, shape):
    explained = logits_model(model, head)

    @tf.function(
        input_signature=[
            tf.TensorSpec(shape, tf.float32),
            tf.TensorSpec(shape, tf.float32),
            tf.TensorSpec((None, *shape[:2]), tf.float32),
            tf.TensorSpec([], tf.int32),
        ]
    )
    def weighted(image, fill, masks, target):
        """sum_i p(target | masked_i) M_i over a chunk of masks."""
        shown = masks[..., None]
        copies = shown * image[None] + (1.0 - shown) * fill[None]
        logits = explained(copies, training=False)
        probabilities = class_probability(logits, tf.fill(tf.shape(masks)[:1], target))
        return tf.tensordot(probabilities, masks, axes=1)

    return weighted


def rise(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    masks: int = RISE_MASKS,
    cells: int = RISE_CELLS,
    keep: float = RISE_KEEP,
    fill="mean",
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """RISE maps, float32 (N, H, W): the expected class probability given each pixel shown.

    Args:
        model, images, head, target: see ``visualize.targets``.
        masks, cells, keep, seed: the masks (:func:`rise_masks`; the same for every image).
        fill: what hidden pixels show (``visualize.occlusion.fill_image``).
        batch_size: masked copies per compiled call (the maps do not depend on it).
    """
    images = as_images(images)
    head = resolve_head(model, head)
    check_per_image(model)
    targets = resolve_targets(model, images, head, target).astype(np.int32)
    shape = tuple(images.shape[1:])
    chosen = rise_masks(masks, shape, cells=cells, keep=keep, seed=seed)
    function = compiled(
        model, ("rise", head, shape), lambda: _masked_probability_function(model, head, shape)
    )
    patch = default_patch(shape)  # the blur fill's window: occlusion's default square
    maps = np.zeros(images.shape[:3], np.float64)
    for index, image in enumerate(images):
        background = tf.constant(fill_image(model, image, fill, patch))
        for start in range(0, masks, batch_size):
            part = tf.constant(chosen[start : start + batch_size])
            maps[index] += function(tf.constant(image), background, part, tf.constant(targets[index])).numpy()
    return (maps / (masks * keep)).astype(np.float32)
