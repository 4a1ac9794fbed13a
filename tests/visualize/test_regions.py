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
    assert found.verdict()[0].startswith(
        "The model relies on the planted cue: for 4 of the 4 images checked (100.0%)"
    )

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


def _colour_reader(object_red: float, cue_weights) -> keras.Model:
    """Class 1's logit: ``object_red`` x the object's red sum + per channel
    ``cue_weights[c]`` x the cue's sum of channel c (class 0's logit is 0)."""
    clean, _, masks, cue = _images()
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    weights = np.zeros((SIZE, SIZE, 3, 2), np.float32)
    weights[masks[0], 0, 1] = object_red
    for channel, weight in enumerate(cue_weights):
        weights[cue[0], channel, 1] = weight
    model.get_layer("class_logits").set_weights([weights.reshape(-1, 2), np.zeros(2, np.float32)])
    return model


def test_a_cue_the_model_does_not_need_but_follows_is_caught_by_substitution():
    clean, cued, masks, cue = _images()
    other = clean.copy()
    other[cue] = (0.0, 255.0, 0.0)  # the other class's cue: green where the red square was
    sigmoid = lambda value: 1.0 / (1.0 + np.exp(-value))  # noqa: E731
    object_logit, cue_logit = 0.001 * 200 * 16, 0.003 * 255 * 4
    # the object alone nearly suffices: removing the red cue costs less than the margin,
    # but a green cue, read as evidence against the class, costs most of the probability
    model = _colour_reader(0.001, (0.003, -0.003, 0.0))
    options = {"cue_masks": cue, "clean": clean, "target": 1, "methods": ()}
    removal_only = region_check(model, cued, masks, **options)
    assert not removal_only.substituted and not removal_only.removal["relies_on_cue"].any()
    found = region_check(model, cued, masks, substitutes=iter([other]), **options)
    removal = found.removal
    with_cue = sigmoid(object_logit + cue_logit)
    np.testing.assert_allclose(removal["probability"], with_cue, rtol=1e-5)
    np.testing.assert_allclose(removal["drop_cue"], with_cue - sigmoid(object_logit), rtol=1e-4)
    np.testing.assert_allclose(removal["other_cue"], sigmoid(object_logit - cue_logit), rtol=1e-4)
    assert (removal["drop_cue"] < RELIANCE_MARGIN).all() and (removal["drop_other_cue"] > 0.4).all()
    assert removal["relies_on_cue"].all() and found.substituted and found.relies
    # hiding the object (filled with mid-grey: red 128 read as evidence) costs less than the swap
    assert (removal["drop_other_cue"] > removal["drop_object"]).all() and removal["outweighs_cue"].all()
    assert found.accuracy == {"images": 1.0, "clean": 1.0, "other_cue": 1.0}  # 0.53 still wins
    assert found.summary().loc["removal", "other_cue"] == pytest.approx(removal["drop_other_cue"].mean())
    assert "putting another class's cue in its place" in found.verdict()[0]
    assert "100.0% with another class's cue" in found.verdict()[0]

    # another class's cue on the first image only: one image of four relies on the cue
    partly = cued.copy()
    partly[0] = other[0]
    found = region_check(model, cued, masks, substitutes=[partly], **options)
    assert found.removal["relies_on_cue"].tolist() == [True, False, False, False] and not found.relies
    assert found.verdict()[0].startswith(
        "The model does not rely on the planted cue for most images: for 1 of the 4 images checked (25.0%)"
    )

    # a model that reads only the object: the same probability with any cue
    found = region_check(_colour_reader(0.001, (0, 0, 0)), cued, masks, substitutes=[other], **options)
    np.testing.assert_allclose(found.removal["drop_other_cue"], 0.0, atol=1e-6)
    assert not found.removal["relies_on_cue"].any() and not found.relies

    # a model that any colour in the corner pushes away from the class, green more than red:
    # the red cue beats the green one but not the clean image: it does not help, no reliance
    found = region_check(
        _colour_reader(0.001, (-0.001, -0.003, 0)), cued, masks, substitutes=[other], **options
    )
    assert (found.removal["drop_other_cue"] >= RELIANCE_MARGIN).all() and (
        found.removal["drop_cue"] < 0
    ).all()
    assert not found.removal["relies_on_cue"].any()


def test_substitutes_need_a_cue_and_the_images_shape():
    clean, cued, masks, cue = _images()
    model = _reader(cue[0])
    with pytest.raises(ValueError, match="substitutes .other classes' cues. need a cue"):
        region_check(model, cued, masks, substitutes=[clean], target=1, methods=())
    with pytest.raises(
        ValueError, match=r"substitute 0 has shape \(4, 8, 4, 3\); it must be like the images"
    ):
        region_check(
            model,
            cued,
            masks,
            cue_masks=cue,
            clean=clean,
            substitutes=[clean[:, :, :4]],
            target=1,
            methods=(),
        )
    # no substitute (one class only): removal alone
    found = region_check(model, cued, masks, cue_masks=cue, clean=clean, substitutes=[], target=1, methods=())
    assert not found.substituted and "other_cue" not in found.accuracy
