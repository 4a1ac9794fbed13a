"""Explanation quality measures on hand-made maps with known answers (a perfect map, an
inverted map, a constant map) and on tiny models with hand-set weights."""

from dataclasses import replace

import keras
import numpy as np
import pytest

from visualize import quality
from visualize.occlusion import occlusion

# A 6x6 image whose object is a 3-pixel horizontal line on row 2, columns 1..3.
LINE = np.zeros((6, 6), bool)
LINE[2, 1:4] = True


def _maps(*maps):
    return np.stack([np.asarray(item, np.float64) for item in maps])


def test_pointing_game_perfect_inverted_constant_and_the_tolerance():
    perfect, inverted, constant = LINE.astype(float), 1.0 - LINE, np.full(LINE.shape, 0.4)
    beside = np.zeros(LINE.shape)
    beside[3, 2] = 1.0  # one row below the line
    two_off = np.zeros(LINE.shape)
    two_off[4, 2] = 1.0
    masks = np.stack([LINE] * 5)
    hits = quality.pointing_game(_maps(perfect, inverted, constant, beside, two_off), masks)
    assert hits.tolist() == [True, False, False, True, False]
    strict = quality.pointing_game(_maps(perfect, beside), masks[:2], tolerance=0)
    assert strict.tolist() == [True, False]
    # a tie between a line pixel and a far one is not resolved in the map's favour
    tie = LINE.astype(float)
    tie[5, 5] = 1.0
    assert not quality.pointing_game(tie[None], LINE[None])[0]
    # a constant map hits only when the object fills the image
    assert quality.pointing_game(constant[None], np.ones((1, 6, 6), bool))[0]


def test_mask_mass_perfect_inverted_constant_and_negative_values():
    perfect, inverted, constant = LINE.astype(float), 1.0 - LINE, np.full(LINE.shape, 0.4)
    signed = np.where(LINE, 2.0, -5.0)  # negative values carry no mass
    signed[0, 0] = 2.0  # one positive pixel off the line: 6 of 8 on it
    nothing = np.full(LINE.shape, -1.0)
    mass = quality.mask_mass(_maps(perfect, inverted, constant, signed, nothing), np.stack([LINE] * 5))
    np.testing.assert_allclose(mass, [1.0, 0.0, 3 / 36, 6 / 8, 0.0])


def test_measures_refuse_maps_and_masks_of_other_shapes():
    with pytest.raises(ValueError, match=r"maps and masks must both have shape \(N, H, W\)"):
        quality.pointing_game(np.zeros((2, 6, 6)), np.zeros((2, 5, 6), bool))
    with pytest.raises(ValueError, match="tolerance must be 0 or more"):
        quality.pointing_game(np.zeros((1, 6, 6)), np.zeros((1, 6, 6), bool), tolerance=-1)
    with pytest.raises(ValueError, match="same shape"):
        quality.rank_correlation(np.zeros((2, 6, 6)), np.zeros((2, 6, 5)))


def test_rank_correlation_perfect_inverted_constant_and_hand_computed_values():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 6))
    found = quality.rank_correlation(_maps(base, base, base), _maps(base * 3 + 1, -base, np.zeros((6, 6))))
    np.testing.assert_allclose(found, [1.0, -1.0, 0.0], atol=1e-12)
    # 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert quality.rank_correlation([[1, 2, 3, 4]], [[10, 30, 20, 40]])[0] == pytest.approx(0.8)
    # ties take their mean rank: ranks (0.5, 0.5, 2) against (0, 1, 2) -> 1.5 / sqrt(1.5 * 2)
    assert quality.rank_correlation([[1, 1, 2]], [[1, 2, 3]])[0] == pytest.approx(1.5 / np.sqrt(3.0))
    # only the order counts: a monotone transform keeps it
    assert quality.rank_correlation(base[None], np.exp(base)[None])[0] == pytest.approx(1.0)


def test_curve_area_is_the_trapezoid_over_the_share_removed():
    np.testing.assert_allclose(quality.curve_area([[1, 0], [1, 1]]), [0.5, 1.0])
    np.testing.assert_allclose(quality.curve_area([[1, 0, 0], [0, 1, 1], [1, 0.5, 0]]), [0.25, 0.75, 0.5])
    with pytest.raises(ValueError, match="at least 2 points"):
        quality.curve_area([[1.0]])


def test_pixel_order_ranks_by_importance_and_breaks_ties_at_random():
    values = np.array([[0.1, 0.9], [0.5, 0.3]])
    assert quality.pixel_order(values[None])[0].tolist() == [[3, 0], [1, 2]]
    flat = quality.pixel_order(np.zeros((2, 6, 6)), seed=4)
    for places in flat:
        assert sorted(places.reshape(-1).tolist()) == list(range(36))
        assert places.reshape(-1).tolist() != list(range(36))  # not the raster scan
    assert not np.array_equal(flat[0], flat[1])  # each image its own order


SIZE = 4
WEIGHTS = np.array([[3.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 0.5]], np.float32)


def _weighted_model():
    """logit1 = sum(WEIGHTS * image) / 255, logit0 = 0: p1 = sigmoid of it."""
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    kernel = np.zeros((SIZE * SIZE, 2), np.float32)
    kernel[:, 1] = WEIGHTS.reshape(-1) / 255.0
    model.get_layer("class_logits").set_weights([kernel, np.zeros(2, np.float32)])
    return model


def _oracle_curve(image, order, mode):
    """The curve by hand: step k zeroes (or keeps only) the first k pixels of ``order``."""
    curve = []
    for count in range(len(order) + 1):
        chosen = np.zeros(SIZE * SIZE, bool)
        chosen[order[:count]] = True
        kept = ~chosen if mode == "deletion" else chosen
        logit = (WEIGHTS.reshape(-1) * image.reshape(-1) * kept).sum() / 255.0
        curve.append(1 / (1 + np.exp(-logit)))
    return np.array(curve)


@pytest.mark.parametrize("mode", quality.CURVE_MODES)
def test_perturbation_curves_match_a_hand_computed_model(mode):
    model = _weighted_model()
    image = np.full((1, SIZE, SIZE, 1), 255.0, np.float32)
    perfect = WEIGHTS[None]  # the model's own weights: the right order
    places = quality.pixel_order(perfect)
    curve = quality.perturbation_curves(
        model, image, places, target=1, mode=mode, baseline="zero", steps=SIZE * SIZE
    )
    order = np.argsort(places[0].reshape(-1))
    np.testing.assert_allclose(curve[0], _oracle_curve(image[0], order, mode), atol=1e-6)
    # fewer steps sample the same curve (16 pixels in 4 steps of 4)
    coarse = quality.perturbation_curves(model, image, places, target=1, mode=mode, baseline="zero", steps=4)
    np.testing.assert_allclose(coarse[0], curve[0, ::4], atol=1e-6)


def test_deletion_and_insertion_rank_perfect_random_and_inverted_maps():
    model = _weighted_model()
    images = np.full((6, SIZE, SIZE, 1), 255.0, np.float32)
    perfect = np.repeat(WEIGHTS[None], 6, axis=0)
    options = {"target": 1, "baseline": "zero", "steps": SIZE * SIZE}
    areas = {}
    for name, places in (
        ("perfect", quality.pixel_order(perfect)),
        ("inverted", quality.pixel_order(-perfect)),
        ("constant", quality.pixel_order(np.zeros_like(perfect))),
        ("random", quality.random_order(6, (SIZE, SIZE), seed=1)),
    ):
        areas[name] = {
            mode: quality.curve_area(quality.perturbation_curves(model, images, places, mode=mode, **options))
            for mode in quality.CURVE_MODES
        }
    deletion = {name: area["deletion"].mean() for name, area in areas.items()}
    insertion = {name: area["insertion"].mean() for name, area in areas.items()}
    assert deletion["perfect"] < deletion["random"] < deletion["inverted"]
    assert insertion["perfect"] > insertion["random"] > insertion["inverted"]
    # a constant map orders at random: between the two, not better than chance by design
    assert deletion["perfect"] < deletion["constant"] < deletion["inverted"]
    # the perfect order is the best possible for every image
    assert np.all(areas["perfect"]["deletion"] <= areas["constant"]["deletion"] + 1e-7)


def test_perturbation_curves_errors_name_the_problem():
    model = _weighted_model()
    image = np.zeros((1, SIZE, SIZE, 1), np.float32)
    with pytest.raises(ValueError, match="curve mode 'sideways'"):
        quality.perturbation_curves(model, image, np.zeros((1, SIZE, SIZE), int), mode="sideways")
    with pytest.raises(ValueError, match=r"places must have shape \(1, 4, 4\)"):
        quality.perturbation_curves(model, image, np.zeros((1, 3, 4), int))


def _fruitcnn_model(seed=0):
    from fruitcnn.config import preset
    from fruitcnn.model import build_model
    from heads import HeadSpec

    heads = [HeadSpec("class", "softmax", ("a", "b", "c"))]
    return build_model(preset("line"), input_shape=(12, 12, 3), heads=heads, seed=seed)


def test_cascade_goes_from_the_head_down_with_batch_norm_in_its_conv_block():
    model = _fruitcnn_model()
    stages = quality.cascade_stages(model)
    assert [layer for layer, _ in stages] == ["class_logits", "conv3", "conv2", "conv1"]
    assert stages[0][1] == ("class_logits",)
    assert stages[1][1] == ("class_logits", "conv3", "bn3")
    assert set(stages[-1][1]) == {
        name for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "class_logits")
    }


def test_randomized_model_redraws_only_the_chosen_layers_and_re_estimates_batch_norm():
    model = _fruitcnn_model()
    # trained-looking statistics, far from what a fresh conv gives
    for name in ("bn1", "bn2", "bn3"):
        layer = model.get_layer(name)
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 50.0, np.float32))
    images = np.random.default_rng(1).integers(0, 256, (16, 12, 12, 3)).astype(np.float32)
    before = [weight.copy() for weight in model.get_weights()]
    copy = quality.randomized_model(model, ["class_logits", "conv3", "bn3"], images, seed=2)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)  # the model itself is untouched
    for name in ("conv1", "bn1", "conv2", "bn2"):
        for old, new in zip(model.get_layer(name).get_weights(), copy.get_layer(name).get_weights()):
            np.testing.assert_array_equal(old, new)
    assert not np.allclose(
        model.get_layer("conv3").get_weights()[0], copy.get_layer("conv3").get_weights()[0]
    )
    assert not np.allclose(
        model.get_layer("class_logits").get_weights()[0], copy.get_layer("class_logits").get_weights()[0]
    )
    bn3 = copy.get_layer("bn3")
    np.testing.assert_array_equal(bn3.gamma.numpy(), 1.0)  # its initialiser: ones
    # its statistics are those of its input over the images (the oracle: a probe model)
    inputs = keras.Model(copy.inputs, bn3.input).predict(images, verbose=0).astype(np.float64)
    np.testing.assert_allclose(bn3.moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn3.moving_variance.numpy(), inputs.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)
    # batch norm below the randomised layers keeps its trained statistics
    np.testing.assert_array_equal(copy.get_layer("bn2").moving_mean.numpy(), 50.0)
    # the same seed draws the same weights
    again = quality.randomized_model(model, ["class_logits", "conv3", "bn3"], images, seed=2)
    np.testing.assert_array_equal(
        again.get_layer("conv3").get_weights()[0], copy.get_layer("conv3").get_weights()[0]
    )
    with pytest.raises(ValueError, match="unknown layer conv9"):
        quality.randomized_model(model, ["conv9"], images)


def test_explanation_maps_point_the_same_way_for_every_method():
    model = _fruitcnn_model()
    images = np.random.default_rng(3).integers(0, 256, (2, 12, 12, 3)).astype(np.float32)
    maps = quality.explanation_maps(
        model,
        images,
        ["occlusion_prob", "occlusion_loss"],
        target=1,
        settings=replace(quality.MEASURED, patch=3),
    )
    reference = occlusion(model, images, target=1, patch=3)
    np.testing.assert_allclose(
        maps["occlusion_prob"],
        reference.baseline_probability[:, None, None] - reference.probability,
        atol=1e-6,
    )
    clean_loss = -np.log(reference.baseline_probability)[:, None, None]
    np.testing.assert_allclose(maps["occlusion_loss"], reference.loss - clean_loss, atol=1e-5)
    assert set(quality.available_methods(model)) >= {
        "gradcam",
        "gradcam_relu1",
        "gradcam_relu2",
        "smoothgrad",
        "integrated_gradients",
        "gradcampp",
        "layercam",
        "layercam_relu1",
    }
    layers = quality.gradcam_method_layers(model)
    assert layers == {"gradcam_relu1": "relu1", "gradcam_relu2": "relu2", "gradcam": "relu3"}
    with pytest.raises(ValueError, match="unknown explanation method lime; this model offers occlusion_prob"):
        quality.explanation_maps(model, images, ["lime"])


def test_quality_scores_of_a_perfectly_explained_model():
    """On the weighted model, gradient x input is exactly the evidence: its pointing,
    mask mass and deletion are the best possible; the randomised model's maps differ."""
    model = _weighted_model()
    images = np.full((3, SIZE, SIZE, 1), 255.0, np.float32)
    masks = np.zeros((3, SIZE, SIZE), bool)
    masks[:, 0, 0] = True  # the largest weight
    result = quality.quality_scores(
        model,
        images,
        target=1,
        masks=masks,
        methods=["gradient_x_input", "saliency_logit"],
        baseline="zero",
        steps=SIZE * SIZE,
        random_orders=2,
        random_models=1,
    )
    summary = result.summary()
    assert list(summary.index) == ["gradient_x_input", "saliency_logit"]
    assert summary.loc["gradient_x_input", "pointing"] == 1.0
    # |w| on a 255 image: 3 of the total 6.5 lies on the mask pixel
    assert summary.loc["gradient_x_input", "mask_mass"] == pytest.approx(3.0 / 6.5, rel=1e-5)
    assert (
        summary.loc["gradient_x_input", "deletion_auc"]
        < summary.loc["gradient_x_input", "deletion_auc_random"]
    )
    assert (
        summary.loc["gradient_x_input", "insertion_auc"]
        > summary.loc["gradient_x_input", "insertion_auc_random"]
    )
    # the logit's gradient of a linear model is its weight: the trained map is WEIGHTS / 255,
    # the randomised one the re-drawn kernel's column, and the check compares exactly these
    np.testing.assert_allclose(result.maps["saliency_logit"][0], WEIGHTS / 255.0, rtol=1e-5)
    assert not np.allclose(result.randomized_maps["saliency_logit"], result.maps["saliency_logit"])
    expected = quality.rank_correlation(
        result.maps["saliency_logit"], result.randomized_maps["saliency_logit"]
    )
    assert summary.loc["saliency_logit", "randomization_spearman"] == pytest.approx(expected.mean())
    assert set(result.curves) == {"random", "gradient_x_input", "saliency_logit"}
    assert result.curves["random"]["deletion"].shape == (SIZE * SIZE + 1,)
    assert len(result.scores) == 6 and list(result.scores.columns) == ["image", "method", *quality.MEASURES]
    with pytest.raises(ValueError, match=r"masks must have shape \(3, 4, 4\)"):
        quality.quality_scores(model, images, masks=masks[:, :2], methods=["saliency"])


def _two_head_model():
    """Head "side" (sigmoid): z = sum(WEIGHTS * image) / 255; head "kind" (softmax, 3
    classes) on its own dense layer; both on the same flattened image."""
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    flat = keras.layers.Flatten()(inputs)
    side = keras.layers.Dense(1, name="side_logits")(flat)
    kind = keras.layers.Dense(3, name="kind_logits")(flat)
    outputs = {
        "side": keras.layers.Activation("sigmoid", name="side")(side),
        "kind": keras.layers.Softmax(name="kind")(kind),
    }
    model = keras.Model(inputs, outputs)
    model.get_layer("side_logits").set_weights([WEIGHTS.reshape(-1, 1) / 255.0, np.zeros(1, np.float32)])
    return model


def test_a_sigmoid_head_of_a_two_head_model_is_measured_on_its_own_layers():
    model = _two_head_model()
    # the cascade of head "side" never touches head "kind"'s layer
    assert quality.cascade_stages(model, "side") == [("side_logits", ("side_logits",))]
    image = np.full((1, SIZE, SIZE, 1), 255.0, np.float32)
    places = quality.pixel_order(WEIGHTS[None])
    order = np.argsort(places[0].reshape(-1))
    for target in (0, 1):  # class 0 of a sigmoid head has logit -z
        curve = quality.perturbation_curves(
            model, image, places, head="side", target=target, baseline="zero", steps=SIZE * SIZE
        )
        one = _oracle_curve(image[0], order, "deletion")
        np.testing.assert_allclose(curve[0], one if target == 1 else 1.0 - one, atol=1e-6)
    with pytest.raises(ValueError, match="several heads"):
        quality.quality_scores(model, image, methods=["saliency"])


def test_too_few_images_leave_out_the_randomisation_and_say_why():
    """A batch norm after a dense layer sees one value per image: with 3 images its
    statistics cannot be re-estimated, so the check is left out with the reason."""
    from fruitcnn.layers import BatchNorm

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    hidden = BatchNorm(name="bn1")(keras.layers.Dense(4, name="fc1")(keras.layers.Flatten()(inputs)))
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.ReLU()(hidden))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    images = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 1)).astype(np.float32)
    with pytest.raises(
        quality.TooFewImages, match=r"randomised bn1 needs at least 8 values per channel; 3 image"
    ):
        quality.randomized_model(model, ["fc1", "bn1"], images)
    options = {"target": 1, "methods": ["saliency"], "baseline": "zero", "random_orders": 1}
    result = quality.quality_scores(model, images, **options)
    assert result.scores["randomization_spearman"].isna().all()
    assert "measure at least 8 images" in result.randomization_note
    eight = np.concatenate([images] * 3)[:8]
    assert quality.quality_scores(model, eight, **options).randomization_note is None


def test_given_maps_are_checked_against_the_methods_and_images():
    model = _weighted_model()
    images = np.zeros((2, SIZE, SIZE, 1), np.float32)
    with pytest.raises(ValueError, match="maps has no saliency; it has gradcam"):
        quality.quality_scores(
            model, images, methods=["saliency"], maps={"gradcam": np.zeros((2, SIZE, SIZE))}
        )
    with pytest.raises(ValueError, match=r"maps\['saliency'\] must have shape \(2, 4, 4\)"):
        quality.quality_scores(model, images, methods=["saliency"], maps={"saliency": np.zeros((2, SIZE))})
    with pytest.raises(ValueError, match="no explanation method given"):
        quality.explanation_maps(model, images, [])


def test_randomization_averages_independent_draws():
    model = _weighted_model()
    images = np.random.default_rng(5).uniform(0, 255, (4, SIZE, SIZE, 1)).astype(np.float32)
    options = {"target": 1, "methods": ["saliency_logit"], "baseline": "zero", "random_orders": 1}
    single = [
        quality.quality_scores(model, images, random_models=1, seed=seed, **options).scores[
            "randomization_spearman"
        ]
        for seed in (0, 1, 2)
    ]
    averaged = quality.quality_scores(model, images, random_models=3, seed=0, **options)
    np.testing.assert_allclose(averaged.scores["randomization_spearman"], np.mean(single, axis=0), atol=1e-12)
    assert not np.allclose(single[0], single[1])  # the draws differ
