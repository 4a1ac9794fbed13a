"""Bootstrap intervals of the quality measures against the exact bootstrap distribution
(every resample of a tiny sample enumerated) and against what any interval must do."""

import itertools

import numpy as np
import pandas as pd
import pytest

from visualize.quality import bootstrap_interval, interval_table


def test_the_interval_matches_the_exact_bootstrap_distribution():
    values = np.array([0.0, 1.0, 1.0, 3.0, 7.0])
    # every one of the 5**5 equally likely resamples, and the quantiles of their means
    means = np.array([values[list(pick)].mean() for pick in itertools.product(range(5), repeat=5)])
    exact = np.quantile(means, [0.05, 0.95])
    low, high = bootstrap_interval(values, confidence=0.9, resamples=50_000, seed=1)
    np.testing.assert_allclose([low, high], exact, atol=0.25)  # means lie 0.2 apart


def test_what_every_interval_does():
    rng = np.random.default_rng(0)
    hits = (rng.random(400) < 0.7).astype(float)
    wide = bootstrap_interval(hits[:25])
    narrow = bootstrap_interval(hits)
    assert wide[0] <= hits[:25].mean() <= wide[1] and narrow[0] <= hits.mean() <= narrow[1]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 2  # 16 times the images: a quarter the width
    # a share of hits: about 1.96 * sqrt(p (1 - p) / n) either side
    np.testing.assert_allclose(narrow[1] - narrow[0], 2 * 1.96 * np.sqrt(0.7 * 0.3 / 400), rtol=0.15)
    assert bootstrap_interval(hits, confidence=0.5)[1] - bootstrap_interval(hits, confidence=0.5)[0] < (
        narrow[1] - narrow[0]
    )
    assert bootstrap_interval(hits, seed=3) == bootstrap_interval(hits, seed=3)
    assert bootstrap_interval(np.full(9, 0.25)) == (0.25, 0.25)
    assert bootstrap_interval([np.nan, 2.0, np.nan]) == (2.0, 2.0)
    assert all(np.isnan(bootstrap_interval([np.nan])))


@pytest.mark.parametrize(
    ("options", "message"), [({"confidence": 1.0}, "confidence"), ({"resamples": 0}, "resamples")]
)
def test_bad_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_interval([1.0, 2.0], **options)


def test_the_table_counts_the_images_and_leaves_out_unmeasured_columns():
    scores = pd.DataFrame(
        {
            "image": [0, 1, 2, 0, 1, 2],
            "method": ["b", "b", "b", "a", "a", "a"],
            "pointing": [1.0, 0.0, 1.0, 1.0, 1.0, 1.0],
            "mask_mass": [np.nan] * 6,
        }
    )
    table = interval_table(scores, ["pointing", "mask_mass"], resamples=500)
    assert list(table.index) == ["b", "a"]
    assert list(table.columns) == ["images", "pointing_low", "pointing_high"]
    assert (table["images"] == 3).all()
    assert table.loc["a", "pointing_low"] == table.loc["a", "pointing_high"] == 1.0
    assert table.loc["b", "pointing_low"] < 2 / 3 < table.loc["b", "pointing_high"]
