"""What a decision rests on (visualize.quality.regions): region masks, importance shares
computed by hand, and the removal check on linear models whose evidence is set by hand
(one reads only the cue's pixels, one only the object's)."""

import keras
import numpy as np
import pytest

from visualize.quality.regions import RELIANCE_MARGIN, region_check, region_masks, region_shares

SIZE = 8


def _regions():
    masks = np.zeros((4, SIZE, SIZE), bool)
    masks[:, 2:6, 2:6] = True  # the object
    cue = np.zeros((4, SIZE, SIZE), bool)
    cue[:, :2, :2] = True  # a corner patch
    cue[:, 2, 2] = True  # drawn over a pixel of the object
    return masks, cue


def test_regions_split_the_image_and_a_cue_over_the_object_belongs_to_the_cue():
    masks, cue = _regions()
    regions = region_masks(masks, cue)
    assert list(regions) == ["object", "cue", "rest"]
    total = sum(region.astype(int) for region in regions.values())
    np.testing.assert_array_equal(total, 1)  # no overlap, every pixel covered
    assert not regions["object"][0, 2, 2] and regions["cue"][0, 2, 2]
    assert list(region_masks(masks)) == ["object", "rest"]
    with pytest.raises(ValueError, match="same shape"):
        region_masks(masks, cue[:, :4])


def test_shares_of_positive_mass_by_hand():
    masks, cue = _regions()
    regions = region_masks(masks[:2], cue[:2])
    maps = np.zeros((2, SIZE, SIZE), np.float32)
    maps[0, 3, 3], maps[0, 0, 0], maps[0, 7, 7] = 3.0, 1.0, -5.0  # negative: no mass
    shares = region_shares(maps, regions)
    assert shares["object"][0] == pytest.approx(0.75) and shares["cue"][0] == pytest.approx(0.25)
    assert shares["rest"][0] == 0.0
    assert all(values[1] == 0.0 for values in shares.values())  # no positive value: no mass


def _reader(where: np.ndarray) -> keras.Model:
    """Class 1's logit is 0.001 x the sum of the red channel over ``where``, class 0's is 0."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    weights = np.zeros((SIZE, SIZE, 3, 2), np.float32)
    weights[where, 0, 1] = 0.001  # small: the softmax's gradient does not vanish
    model.get_layer("class_logits").set_weights([weights.reshape(-1, 2), np.zeros(2, np.float32)])
    return model


def _images():
    masks, cue = _regions()
    cue[:, 2, 2] = False  # the corner patch only
    clean = np.zeros((4, SIZE, SIZE, 3), np.float32)
    clean[masks] = (200.0, 50.0, 50.0)  # a red object on black
    cued = clean.copy()
    cued[cue] = (255.0, 0.0, 0.0)
    return clean, cued, masks, cue


def test_a_model_that_reads_the_cue_is_flagged_and_one_that_reads_the_object_is_not():
    clean, cued, masks, cue = _images()
    sigmoid = lambda value: 1.0 / (1.0 + np.exp(-value))  # noqa: E731
    cue_reader = _reader(cue[0])
    found = region_check(cue_reader, cued, masks, cue_masks=cue, clean=clean, target=1, methods=["saliency"])
    removal = found.removal
    # with the cue: 0.001 x 255 x 4 cue pixels; without it nothing is read: p = 0.5
    np.testing.assert_allclose(removal["probability"], sigmoid(0.001 * 255 * 4), rtol=1e-5)
    np.testing.assert_allclose(removal["without_cue"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(removal["drop_object"], 0.0, atol=1e-6)  # the object is not read
    assert removal["relies_on_cue"].all() and removal["outweighs_cue"].all()
    assert not removal["relies_on_rest"].any() and not removal["outweighs_rest"].any()
    assert found.accuracy == {"images": 1.0, "clean": 0.0}  # 0.5 is not a win for class 1
    summary = found.summary()
    assert summary.loc["saliency", "cue"] == pytest.approx(1.0)  # the gradient lies on the cue only
    assert summary.loc["saliency", "more_on_cue"] == 1.0 and summary.loc["removal", "more_on_cue"] == 1.0
    assert summary.loc["removal", "relies_on_cue"] == 1.0 and found.relies
    assert found.verdict()[0].startswith("The model relies on the planted cue: for 100% of the 4 images")

    object_reader = _reader(masks[0] & ~cue[0])
    found = region_check(
        object_reader, cued, masks, cue_masks=cue, clean=clean, target=1, methods=["saliency"]
    )
    assert not found.removal["relies_on_cue"].any()
    np.testing.assert_allclose(found.removal["drop_cue"], 0.0, atol=1e-6)
    assert found.summary().loc["saliency", "object"] == pytest.approx(1.0)
    assert "No reliance on the planted cue" in found.verdict()[0] and not found.relies
    assert "looks at the object" in found.verdict()[1]


def test_equal_removals_below_the_margin_are_not_reliance():
    clean, _, masks, _ = _images()
    rest = ~masks[0]
    rest_reader = _reader(rest)  # reads only the (black) surroundings: hiding them costs
    found = region_check(rest_reader, clean, masks, target=1, methods=["saliency"])
    drop = found.removal["drop_rest"]
    # the rest filled with mid-grey (no stored training mean: 128) raises class 1's logit
    assert (drop < 0).all() and not found.removal["relies_on_rest"].any()
    assert found.regions == ("object", "rest") and "clean" not in found.accuracy
    assert RELIANCE_MARGIN > 0
    with pytest.raises(ValueError, match="both"):
        region_check(rest_reader, clean, masks, cue_masks=masks, target=1)
    with pytest.raises(ValueError, match="maps has no gradcam"):
        region_check(
            rest_reader, clean, masks, target=1, methods=["gradcam"], maps={"saliency": clean[..., 0]}
        )
    removal_only = region_check(rest_reader, clean, masks, target=1, methods=())
    assert removal_only.shares.empty and list(removal_only.summary().index) == ["area", "removal"]
