"""Integrated Gradients, Grad-CAM++ and LayerCAM against tiny models with hand-set
weights, whose attributions and class activation maps are computed here by hand."""

import keras
import numpy as np
import pytest

from visualize.gradcam import gradcam_plus_plus, layercam
from visualize.integrated import integrated_gradients
from visualize.methods import CAM_METHODS, ExplainSettings, compute, method_of
from visualize.occlusion import fill_image
from visualize.rise import rise, rise_masks


def _linear_model(shape=(5, 4, 3), classes=3, seed=2):
    inputs = keras.Input(shape, name="image")
    logits = keras.layers.Dense(classes, name="class_logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    weights = np.random.default_rng(seed).normal(size=(int(np.prod(shape)), classes)).astype(np.float32)
    model.get_layer("class_logits").set_weights([weights, np.full(classes, 0.5, np.float32)])
    return model, weights.reshape(*shape, classes)


def test_integrated_gradients_of_a_linear_model_is_difference_times_weights():
    model, weights = _linear_model()
    images = np.random.default_rng(3).uniform(0, 255, (3, 5, 4, 3)).astype(np.float32)
    for baseline in ("zero", 40.0, "blur"):
        start = np.stack([fill_image(model, image, baseline, 3) for image in images])
        expected = (images - start) * weights[..., 1]  # exact for any number of steps
        found = integrated_gradients(model, images, target=1, baseline=baseline, steps=3, channels=True)
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-3)
        summed = integrated_gradients(model, images, target=1, baseline=baseline, steps=3, batch_size=2)
        np.testing.assert_allclose(summed, expected.sum(axis=-1), rtol=1e-4, atol=1e-3)


def _relu_model(seed=0):
    """A small ReLU network: its logit is not linear in the input."""
    inputs = keras.Input((6, 6, 2), name="image")
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    logits = keras.layers.Dense(3, name="class_logits")(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    rng = np.random.default_rng(seed)
    for layer in (model.get_layer("conv1"), model.get_layer("class_logits")):
        layer.set_weights(
            [rng.normal(0, 0.05, weight.shape).astype(np.float32) for weight in layer.get_weights()]
        )
    return model


def test_integrated_gradients_add_up_to_the_change_of_the_logit():
    """Completeness: the attributions sum to S(x) - S(baseline) as the path is refined."""
    model = _relu_model()
    images = np.random.default_rng(1).uniform(0, 255, (2, 6, 6, 2)).astype(np.float32)
    logits = keras.Model(model.inputs, model.get_layer("class_logits").output)
    change = logits.predict(images, verbose=0)[:, 2] - logits.predict(np.zeros_like(images), verbose=0)[:, 2]
    gaps = []
    for steps in (2, 256):
        found = integrated_gradients(model, images, target=2, baseline="zero", steps=steps)
        gaps.append(np.abs(found.sum(axis=(1, 2)) - change).max())
    assert gaps[1] < 0.01 * np.abs(change).max() and gaps[1] < gaps[0]


def _cam_model():
    """Feature maps A_k = relu(w_k x) of a one-channel image (a 1x1 conv with hand-set
    weights), flattened into the logits: dS/dA_kij is the logit weight of (i, j, k)."""
    inputs = keras.Input((3, 3, 1), name="image")
    features = keras.layers.Conv2D(2, 1, activation="relu", name="conv1")(inputs)
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.Flatten()(features))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    model.get_layer("conv1").set_weights([np.array([[[[1.0, 0.5]]]], np.float32), np.zeros(2, np.float32)])
    dense = np.random.default_rng(7).normal(0, 0.1, (18, 2)).astype(np.float32)
    model.get_layer("class_logits").set_weights([dense, np.zeros(2, np.float32)])
    return model, dense.reshape(3, 3, 2, 2)


def test_grad_cam_plus_plus_and_layercam_match_their_formulas():
    model, dense = _cam_model()
    images = np.random.default_rng(5).uniform(0, 10, (2, 3, 3, 1)).astype(np.float32)
    features = np.maximum(images * np.array([1.0, 0.5], np.float32), 0.0)  # (N, 3, 3, 2)
    gradients = np.broadcast_to(dense[..., 1], features.shape)  # dS_1 / dA, the same for every image
    # LayerCAM: ReLU(sum_k ReLU(g_kij) A_kij)
    expected = np.maximum((np.maximum(gradients, 0) * features).sum(axis=-1), 0)
    np.testing.assert_allclose(layercam(model, images, target=1, layer="conv1"), expected, rtol=1e-5)
    # Grad-CAM++: alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), w_k = sum_ij alpha ReLU(g)
    total = features.sum(axis=(1, 2), keepdims=True)
    alpha = gradients**2 / (2 * gradients**2 + total * gradients**3)
    weights = (alpha * np.maximum(gradients, 0)).sum(axis=(1, 2), keepdims=True)
    expected = np.maximum((weights * features).sum(axis=-1), 0)
    np.testing.assert_allclose(gradcam_plus_plus(model, images, target=1, layer="conv1"), expected, rtol=1e-4)


def test_the_registry_runs_them_and_names_their_maps():
    model, _ = _cam_model()
    images = np.random.default_rng(6).uniform(0, 10, (2, 3, 3, 1)).astype(np.float32)
    targets = np.array([0, 1])
    assert set(CAM_METHODS) == {"gradcam", "gradcampp", "layercam"}
    for method in CAM_METHODS:
        one = compute(method, model, images, head="class", targets=targets, settings=ExplainSettings())
        assert list(one.drawn) == [method] and one.drawn[method].shape == (2, 3, 3)
        two = compute(
            method,
            model,
            images,
            head="class",
            targets=targets,
            settings=ExplainSettings(layers=("conv1",) * 2),
        )
        assert list(two.drawn) == [f"{method}_conv1"]
        assert method_of(f"{method}_conv1") == method
    found = compute("integrated_gradients", model, images, head="class", targets=targets)
    assert found.drawn["integrated_gradients"].shape == (2, 3, 3)
    assert method_of("integrated_gradients") == "integrated_gradients"
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(model, images, target=0, steps=0)


REGION = (slice(2, 4), slice(5, 7))


def _region_model(size=8):
    """logit1 = 0.05 * sum of the 2x2 region - 20, logit0 = 0: p1 depends on that region
    only, near 1 when it shows the image (pixels above 100) and near 0 when hidden (30)."""
    inputs = keras.Input((size, size, 1), name="image")
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    weights = np.zeros((size, size, 2), np.float32)
    weights[REGION[0], REGION[1], 1] = 0.05
    model.get_layer("class_logits").set_weights([weights.reshape(-1, 2), np.array([0.0, -20.0], np.float32)])
    return model


def test_rise_is_the_mask_weighted_mean_of_the_masked_probabilities():
    model = _region_model()
    image = np.random.default_rng(2).uniform(100, 255, (8, 8, 1)).astype(np.float32)
    masks = rise_masks(60, (8, 8), cells=3, keep=0.5, seed=4)
    assert masks.shape == (60, 8, 8) and 0.0 <= masks.min() and masks.max() <= 1.0
    assert 0.4 < masks.mean() < 0.6  # about the share of cells kept
    # brute force: every masked copy through the model by hand (fill: 30 in pixel units)
    copies = masks[..., None] * image + (1 - masks[..., None]) * 30.0
    logit = 0.05 * copies[:, REGION[0], REGION[1], 0].sum(axis=(1, 2)) - 20.0
    probability = 1 / (1 + np.exp(-logit))
    expected = (probability[:, None, None] * masks).sum(axis=0) / (60 * 0.5)
    found = rise(model, image[None], target=1, masks=60, cells=3, keep=0.5, fill=30.0, seed=4, batch_size=7)
    np.testing.assert_allclose(found[0], expected, rtol=1e-5)
    # with many masks the region's pixels, the only evidence, come out on top
    many = rise(model, image[None], target=1, masks=2000, cells=4, fill=30.0)[0]
    inside = np.zeros((8, 8), bool)
    inside[REGION] = True
    assert many[inside].mean() > many[~inside].max()
    with pytest.raises(ValueError, match="at least 1 mask"):
        rise_masks(0, (8, 8))
