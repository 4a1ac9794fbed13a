"""The method registry (visualize.methods): every heatmap method through ``compute``
against hand-computed maps of tiny models with set weights, the settings each method
reads, and the names explain.py and the quality measures take from it."""

from dataclasses import replace

import keras
import numpy as np
import pytest

import explain
from visualize import quality
from visualize.methods import (
    EXPLAIN_DEFAULT,
    EXPLAIN_METHODS,
    MEASURED,
    METHODS,
    ExplainSettings,
    compute,
    method_of,
    parse_methods,
)

SHAPE, CLASSES = (5, 4, 3), 3


def _linear_model(seed=2):
    """logits = flatten(image) @ W: every gradient map is known in closed form."""
    inputs = keras.Input(SHAPE, name="image")
    logits = keras.layers.Dense(CLASSES, name="class_logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    weights = np.random.default_rng(seed).normal(size=(int(np.prod(SHAPE)), CLASSES)).astype(np.float32)
    model.get_layer("class_logits").set_weights([weights, np.zeros(CLASSES, np.float32)])
    return model, weights.reshape(*SHAPE, CLASSES).astype(np.float64)


def _images(count=3, seed=3):
    return np.random.default_rng(seed).uniform(0, 255, (count, *SHAPE)).astype(np.float32)


def _loss_gradient(images, weights, targets):
    """d(-log softmax_t)/d image = sum_k (p_k - [k = t]) W_k, per image."""
    logits = np.einsum("nhwc,hwck->nk", images.astype(np.float64), weights)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return np.einsum("nk,hwck->nhwc", probabilities - np.eye(CLASSES)[targets], weights)


def test_each_gradient_method_is_its_closed_form_on_a_linear_model():
    model, weights = _linear_model()
    images, targets = _images(), np.array([2, 0, 1])
    gradient = _loss_gradient(images, weights, targets)
    logit_map = np.abs(weights[..., targets]).max(axis=2).transpose(2, 0, 1)
    expected = {
        "saliency": np.abs(gradient).max(axis=-1),
        "saliency_logit": logit_map,
        "gradient_x_input": np.abs(gradient * images).max(axis=-1),
    }
    for name, values in expected.items():
        found = compute(name, model, images, head="class", targets=targets, settings=MEASURED)
        assert list(found.drawn) == [name] and found.drawn[name] is found.importance[name]
        np.testing.assert_allclose(found.drawn[name], values, rtol=1e-4, atol=1e-7, err_msg=name)


def test_saliency_reads_its_settings_and_smoothgrad_reads_its_own():
    model, weights = _linear_model()
    images, targets = _images(), np.array([1, 1, 2])
    logit_map = np.abs(weights[..., targets]).max(axis=2).transpose(2, 0, 1)
    # a linear model's logit gradient is the same for every noisy copy: SmoothGrad = plain
    settings = ExplainSettings(saliency_of="logit", saliency_smoothgrad=4, smoothgrad=2)
    found = compute("saliency", model, images, head="class", targets=targets, settings=settings)
    np.testing.assert_allclose(found.drawn["saliency"], logit_map, rtol=1e-5)
    times = compute(
        "saliency", model, images, head="class", targets=targets, settings=replace(settings, times_input=True)
    )
    np.testing.assert_allclose(
        times.drawn["saliency"],
        np.abs(weights[..., targets].transpose(3, 0, 1, 2) * images).max(-1),
        rtol=1e-4,
    )
    # the loss's gradient varies with the noise: SmoothGrad differs from the plain map,
    # and "smoothgrad" follows settings.smoothgrad, not saliency_smoothgrad
    plain = compute("saliency", model, images, head="class", targets=targets, settings=MEASURED)
    smooth = compute("smoothgrad", model, images, head="class", targets=targets, settings=settings)
    assert not np.allclose(plain.drawn["saliency"], smooth.drawn["smoothgrad"])
    again = compute(
        "smoothgrad",
        model,
        images,
        head="class",
        targets=targets,
        settings=replace(settings, saliency_smoothgrad=9),
    )
    np.testing.assert_array_equal(again.drawn["smoothgrad"], smooth.drawn["smoothgrad"])


def _one_filter_model():
    """conv1 = the image (1x1 kernel of 1), gap, logits = [-1, 2] x mean."""
    inputs = keras.Input((6, 6, 1), name="image")
    features = keras.layers.Conv2D(1, 1, name="conv1")(inputs)
    relu = keras.layers.ReLU(name="relu1")(features)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(relu)
    logits = keras.layers.Dense(2, name="class_logits")(pooled)
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    model.get_layer("conv1").set_weights([np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)])
    model.get_layer("class_logits").set_weights(
        [np.array([[-1.0, 2.0]], np.float32), np.zeros(2, np.float32)]
    )
    return model


def test_gradcam_maps_are_named_by_layer_when_several_are_chosen():
    model = _one_filter_model()
    images = np.random.default_rng(4).uniform(0, 255, (2, 6, 6, 1)).astype(np.float32)
    targets = np.array([1, 1])
    # d logit1 / d A = 2/36 everywhere, so the map is 2/36 x the image at either layer
    expected = images[..., 0] * 2 / 36
    one = compute(
        "gradcam", model, images, head="class", targets=targets, settings=ExplainSettings(layers=("conv1",))
    )
    assert list(one.drawn) == ["gradcam"]
    np.testing.assert_allclose(one.drawn["gradcam"], expected, rtol=1e-5)
    both = compute(
        "gradcam",
        model,
        images,
        head="class",
        targets=targets,
        settings=ExplainSettings(layers=("conv1", "relu1")),
    )
    assert list(both.drawn) == ["gradcam_conv1", "gradcam_relu1"]
    for values in both.importance.values():
        np.testing.assert_allclose(values, expected, rtol=1e-5)
    # the quality measures' gradcam_<layer> is Grad-CAM of that layer, gradcam the first chosen
    measured = quality.explanation_maps(
        model, images, ["gradcam"], target=targets, settings=replace(MEASURED, layers=("conv1",))
    )
    np.testing.assert_allclose(measured["gradcam"], expected, rtol=1e-5)
    # explain.py --layer conv1,relu1 --quality measures the maps it drew, whatever the layers
    drawn = quality.explanation_maps(model, images, ["gradcam_conv1", "gradcam_relu1"], target=targets)
    for values in drawn.values():
        np.testing.assert_allclose(values, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown explanation method gradcam_conv9; this model offers"):
        quality.explanation_maps(model, images, ["gradcam_conv9"], target=targets)


def test_occlusion_importance_is_the_drop_and_the_rise():
    model = _one_filter_model()
    images = np.zeros((1, 6, 6, 1), np.float32)
    images[0, 2:4, 2:4, 0] = 6.0  # logit margin 2: probabilities well inside (0, 1)
    settings = ExplainSettings(patch=2, fill=0.0, occlusion_engine="batched", occlusion_spread="centre")
    seen = []
    found = compute(
        "occlusion", model, images, head="class", targets=np.array([1]), settings=settings,
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert set(found.drawn) == set(found.importance) == {"occlusion_prob", "occlusion_loss"}

    # by hand: logit1 - logit0 = 3 x mean of the image; a 2x2 zero square centred at (r, c)
    # covers rows r-1..r and columns c-1..c
    def probability(image):
        margin = 3 * image.mean()
        return 1 / (1 + np.exp(-margin))

    clean = probability(images[0, ..., 0])
    expected = np.zeros((6, 6))
    for row in range(6):
        for column in range(6):
            hidden = images[0, ..., 0].copy()
            hidden[max(row - 1, 0) : row + 1, max(column - 1, 0) : column + 1] = 0
            expected[row, column] = probability(hidden)
    np.testing.assert_allclose(found.drawn["occlusion_prob"][0], expected, rtol=1e-5)
    np.testing.assert_allclose(found.importance["occlusion_prob"][0], clean - expected, atol=1e-6)
    np.testing.assert_allclose(
        found.importance["occlusion_loss"][0], np.log(clean) - np.log(expected), rtol=1e-4, atol=1e-6
    )
    assert seen and seen[-1][0] == 36
    assert any("occlusion: batched re-inference, 36 positions" in note for note in found.notes)
    # the default spread (each pixel the mean over the squares that hide it): the same drop
    averaged = ExplainSettings(patch=2, fill=0.0)
    window = compute("occlusion", model, images, head="class", targets=np.array([1]), settings=averaged)
    np.testing.assert_allclose(
        window.importance["occlusion_prob"][0], clean - window.drawn["occlusion_prob"][0], atol=1e-6
    )
    # a pixel in the middle is hidden by the squares centred on it, right, below, below-right
    assert window.drawn["occlusion_prob"][0, 2, 2] == pytest.approx(expected[2:4, 2:4].mean(), rel=1e-5)


def test_only_heatmap_methods_compute_and_unknown_names_are_refused():
    model, _ = _linear_model()
    with pytest.raises(
        ValueError, match="'filters' is not a heatmap method; the heatmap methods are occlusion"
    ):
        compute("filters", model, _images(), head="class", targets=np.zeros(3, int))
    with pytest.raises(ValueError, match="unknown method 'conv9'; choose from occlusion, saliency"):
        parse_methods("saliency,conv9")
    with pytest.raises(ValueError, match="unknown method ' , '"):
        parse_methods(" , ")
    assert parse_methods("all") == list(EXPLAIN_METHODS)


def test_names_come_from_the_registry():
    assert EXPLAIN_METHODS == (
        "occlusion", "saliency", "gradcam", "gradcampp", "layercam", "integrated_gradients", "rise",
        "activations", "filters",
    )  # fmt: skip
    assert explain.METHODS == EXPLAIN_METHODS and explain.DEFAULT_METHODS == ",".join(EXPLAIN_DEFAULT)
    assert {METHODS[name].kind for name in EXPLAIN_METHODS} == {"map", "layer", "model"}
    assert [method_of(name) for name in quality.MEASURED_MAPS] == [
        "occlusion", "occlusion", "saliency", "smoothgrad", "gradcam"
    ]  # fmt: skip
    assert method_of("gradcam_relu2") == "gradcam" and method_of("gradient_x_input") == "gradient_x_input"
    assert method_of("gradcampp") == "gradcampp" and method_of("layercam_relu1") == "layercam"
    with pytest.raises(ValueError, match="no method makes a map named 'activations'"):
        method_of("activations")
    # explain.py's defaults are the settings' defaults
    parser = explain.build_parser()
    defaults = {action.dest: action.default for action in parser._actions}
    settings = ExplainSettings()
    assert (defaults["smoothgrad"], defaults["fill"], defaults["stride"]) == (
        settings.saliency_smoothgrad, settings.fill, settings.stride
    )  # fmt: skip
    assert MEASURED.saliency_smoothgrad == 0 and MEASURED.smoothgrad == settings.smoothgrad
