"""Seeded, stratified train/validation/test splits."""

from __future__ import annotations

import numpy as np

from fruitcnn.config import parse_split  # noqa: F401  (the split syntax lives with the settings)


def stratified_split(
    labels: np.ndarray, split: str, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split indices into train, validation and test, stratified by class.

    Part sizes are exact: the given counts, or ``round(share * total)`` for
    percentages. Every class is spread over the parts in proportion: each class's
    images get evenly spaced keys in [0, 1) (in a seeded random order, with a random
    offset per class), all images are sorted by key, and the sorted list is cut at the
    part sizes. So each class's count in a part is within one image of the same
    share w of it for every class, and w differs from the part's share by less than
    (classes / images): with balanced classes, within two images of its proportional
    share (and within one for all but tiny datasets). Validation is carved from the training part
    when the split has two parts, never from the test part.

    Args:
        labels: integer class label of every image.
        split: see :func:`parse_split`.
        val_fraction: share of the training part that becomes validation when the
            split names only train and test.
        seed: seed of the shuffling.

    Returns:
        Three sorted int64 index arrays (train, val, test).
    """
    labels = np.asarray(labels)
    mode, values = parse_split(split)  # (which part is split, train:, is the caller's)
    total = labels.size
    if mode == "counts" and sum(values) > total:
        raise ValueError(
            f"split {split!r} asks for {int(sum(values))} images but the dataset has "
            f"{total}; lower the counts or use percentages such as 60/40."
        )
    sizes = [int(value) for value in values] if mode == "counts" else _sizes(values, total)
    if len(sizes) == 2:
        train, test = sizes
        val = int(round(train * val_fraction))
        sizes = [train - val, val, test]
    order = _stratified_order(labels, seed)
    bounds = np.cumsum(sizes)
    parts = (order[: bounds[0]], order[bounds[0] : bounds[1]], order[bounds[1] : bounds[2]])
    names = ("training", "validation", "test")
    for name, indices in zip(names, parts):
        if indices.size == 0:
            raise ValueError(
                f"split {split!r} (validation fraction {val_fraction}) leaves the {name} "
                f"part empty for {total} images; give it a larger share."
            )
    return tuple(np.sort(part).astype(np.int64) for part in parts)


def holdout(labels: np.ndarray, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into a kept part and a held-out ``fraction`` (e.g. validation
    carved from a dataset's own training part), stratified as :func:`stratified_split`.

    Returns:
        Two sorted int64 index arrays (kept, held out).
    """
    labels = np.asarray(labels)
    held = int(round(labels.size * fraction))
    if held < 1 or held >= labels.size:
        raise ValueError(
            f"holding out {fraction:g} of {labels.size} images leaves a part empty; "
            "use a fraction that keeps at least one image on each side."
        )
    order = _stratified_order(labels, seed)
    return np.sort(order[held:]).astype(np.int64), np.sort(order[:held]).astype(np.int64)


def _stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All indices in an order whose every prefix holds each class in proportion
    (within one image): evenly spaced keys per class in a seeded random order."""
    rng = np.random.default_rng(seed)
    keys = np.empty(labels.size)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        keys[members] = (np.arange(members.size) + rng.random()) / members.size
    return np.argsort(keys, kind="stable")


def _sizes(fractions: tuple[float, ...], total: int) -> list[int]:
    """Part sizes of percentages: rounded cumulative bounds, so they sum to ``total``."""
    bounds = np.round(np.cumsum(fractions) * total).astype(int)
    bounds[-1] = total
    return np.diff(np.concatenate([[0], bounds])).tolist()
