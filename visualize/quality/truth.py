"""Ground truth: the pointing game and the mask mass of maps against object masks."""

from __future__ import annotations

import numpy as np

from visualize.quality.constants import (
    POINTING_TOLERANCE,
)


def _check_pair(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, np.float64), np.asarray(masks, bool)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None] if masks.ndim == 2 else masks
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(
            f"maps and masks must both have shape (N, H, W) and agree, got {maps.shape} and {masks.shape}."
        )
    return maps, masks


def dilate(masks: np.ndarray, pixels: int) -> np.ndarray:
    """``masks`` (N, H, W) grown by ``pixels`` in every direction (a square neighbourhood)."""
    if pixels < 0:
        raise ValueError(f"tolerance must be 0 or more pixels, got {pixels}.")
    grown = np.asarray(masks, bool).copy()
    height, width = grown.shape[1:]
    padded = np.pad(grown, ((0, 0), (pixels, pixels), (pixels, pixels)))
    for row in range(2 * pixels + 1):
        for column in range(2 * pixels + 1):
            grown |= padded[:, row : row + height, column : column + width]
    return grown


def pointing_game(maps, masks, *, tolerance: int = POINTING_TOLERANCE) -> np.ndarray:
    """Whether each map's maximum falls on the object, bool (N,).

    A hit needs every pixel that attains the maximum to lie within ``tolerance`` pixels
    of the mask, so a constant map (whose maximum is everywhere) hits only when the
    object fills the image, and a tie cannot be resolved in the map's favour.
    """
    maps, masks = _check_pair(maps, masks)
    allowed = dilate(masks, tolerance)
    top = maps >= maps.max(axis=(1, 2), keepdims=True)
    return ~np.any(top & ~allowed, axis=(1, 2))


def mask_mass(maps, masks) -> np.ndarray:
    """The share of each map's positive mass that lies on the object, float (N,).

    Negative values (pixels whose hiding helped the class) carry no mass; a map with
    no positive value has no mass to place and scores 0.
    """
    maps, masks = _check_pair(maps, masks)
    positive = np.maximum(maps, 0.0)
    total = positive.sum(axis=(1, 2))
    inside = (positive * masks).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)
