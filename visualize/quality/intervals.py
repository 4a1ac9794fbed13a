"""Bootstrap confidence intervals of the quality measures: how far a mean over a few
hundred images can be trusted.

A measure's mean over the images (the share of pointing hits, the mean mask mass, the
mean deletion area ...) is one draw: other test images would give another. The
percentile bootstrap (Efron, 1979) resamples the images with replacement, takes the
mean of each resample, and reports the central ``confidence`` share of those means.
NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# Resamples per interval (the interval's ends move by about 1/sqrt(this) of its width
# from one seed to another) and the share of resampled means an interval holds.
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_interval(
    values, *, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN left out).

    Returns:
        (low, high); (nan, nan) without values, (v, v) for a single value.

    Raises:
        ValueError: a confidence outside (0, 1) or fewer than 1 resample.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence!r}.")
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(
            f"resamples must be a whole number >= 1, e.g. {BOOTSTRAP_RESAMPLES}; got {resamples!r}."
        )
    values = np.asarray(values, np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, values.size, (int(resamples), values.size))
    means = values[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def interval_table(
    scores: pd.DataFrame,
    measures: Sequence[str],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Per method (rows, in the order of ``scores``): ``images`` (how many images were
    measured) and ``<measure>_low`` / ``<measure>_high`` for each of ``measures`` that
    has values (``scores``: one row per image and method, as ``QualityResult.scores``)."""
    rows = {}
    for method, frame in scores.groupby("method", sort=False):
        row: dict[str, float] = {"images": int(len(frame))}
        for measure in measures:
            if measure in frame and frame[measure].notna().any():
                low, high = bootstrap_interval(
                    frame[measure].to_numpy(), confidence=confidence, resamples=resamples, seed=seed
                )
                row[f"{measure}_low"], row[f"{measure}_high"] = low, high
        rows[method] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table
