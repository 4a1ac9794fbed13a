"""Explanation methods against tiny models with hand-set weights whose maps are known."""

import keras
import numpy as np
import pytest

from visualize.activations import activations
from visualize.filters import filter_patterns, first_layer_weights
from visualize.gradcam import gradcam
from visualize.occlusion import fill_image, occlusion
from visualize.saliency import saliency
from visualize.targets import resolve_head

REGION = (slice(2, 4), slice(5, 7))  # the only pixels the region model looks at
SCALE = 0.05


def _region_model(size=8):
    """logit1 = SCALE * sum of the 2x2 region, logit0 = 0: p1 depends on that region only."""
    inputs = keras.Input((size, size, 1), name="image")
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {"class": keras.layers.Activation("softmax", name="class")(logits)})
    weights = np.zeros((size, size, 2), np.float32)
    weights[REGION[0], REGION[1], 1] = SCALE
    model.get_layer("class_logits").set_weights([weights.reshape(-1, 2), np.zeros(2, np.float32)])
    return model


def _region_oracle(image, patch, fill):
    """Brute force: hide each square, evaluate the model by hand."""
    size = image.shape[0]
    probability, loss = np.zeros((size, size)), np.zeros((size, size))
    for row in range(size):
        for column in range(size):
            hidden = image.copy()
            top, left = row - patch // 2, column - patch // 2
            hidden[max(top, 0) : max(top + patch, 0), max(left, 0) : max(left + patch, 0)] = fill
            logit = SCALE * hidden[REGION[0], REGION[1]].sum()
            probability[row, column] = 1 / (1 + np.exp(-logit))
            loss[row, column] = -np.log(probability[row, column])
    return probability, loss


@pytest.mark.parametrize("patch", [1, 3, 4])
def test_occlusion_matches_brute_force_on_a_model_that_sees_one_region(patch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 8, 8, 1)).astype(np.float32)
    model = _region_model()
    maps = occlusion(model, images, target=1, patch=patch, fill=7.0, batch_size=5, spread="centre")
    window = occlusion(model, images, target=1, patch=patch, fill=7.0, batch_size=5)
    assert (maps.spread, window.spread) == ("centre", "window")
    for index in range(2):
        probability, loss = _region_oracle(images[index, ..., 0], patch, 7.0)
        np.testing.assert_allclose(maps.probability[index], probability, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps.loss[index], loss, rtol=1e-5, atol=1e-5)
        for values, drawn in ((probability, window.probability), (loss, window.loss)):
            np.testing.assert_allclose(drawn[index], _window_oracle(values, patch, 1), rtol=1e-5, atol=1e-5)
    # squares that miss the region change nothing: the unoccluded probability
    far = maps.probability[0, 7, 0]
    assert far == pytest.approx(maps.baseline_probability[0], abs=1e-6)


def _window_oracle(values, patch, stride, untouched=np.nan):
    """Brute force: each pixel the mean of the values of the squares (centred on every
    stride-th row and column) that hide it; ``untouched`` where none does."""
    size = values.shape[0]
    mean = np.full((size, size), untouched, np.float64)
    for row in range(size):
        for column in range(size):
            found = [
                values[top + patch // 2, left + patch // 2]
                for top in range(-(patch // 2), size, 1)
                for left in range(-(patch // 2), size, 1)
                if (top + patch // 2) % stride == 0
                and (left + patch // 2) % stride == 0
                and 0 <= top + patch // 2 < size
                and 0 <= left + patch // 2 < size
                and top <= row < top + patch
                and left <= column < left + patch
            ]
            if found:
                mean[row, column] = np.mean(found)
    return mean


def test_occlusion_is_the_same_for_any_batch_size_and_exact_at_strided_positions():
    rng = np.random.default_rng(1)
    images = rng.integers(1, 20, (1, 8, 8, 1)).astype(np.float32)  # no zero pixel; unsaturated
    model = _region_model()
    full = occlusion(model, images, target=1, patch=3, fill="zero", batch_size=64)
    small = occlusion(model, images, target=1, patch=3, fill="zero", batch_size=3)
    np.testing.assert_allclose(full.probability, small.probability, atol=1e-7)
    squares = occlusion(model, images, target=1, patch=3, fill="zero", spread="centre").probability[0]
    for stride in (2, 3):
        strided = occlusion(model, images, target=1, patch=3, fill="zero", stride=stride, spread="centre")
        # every pixel holds the exact value of the evaluated pixel at the top-left of its block
        blocks = (np.arange(8) // stride) * stride
        expected = squares[np.ix_(blocks, blocks)]
        np.testing.assert_allclose(strided.probability[0], expected, atol=1e-7)
        assert np.unique(strided.probability[0]).size > 1  # the region changes some blocks
    # the window spread averages only the evaluated squares; with a stride larger than the
    # square, the pixels no square hides keep the unoccluded probability
    for stride in (2, 4):
        window = occlusion(model, images, target=1, patch=3, fill="zero", stride=stride)
        oracle = _window_oracle(squares, 3, stride, untouched=window.baseline_probability[0])
        np.testing.assert_allclose(window.probability[0], oracle, rtol=1e-6, atol=1e-7)
    gaps = np.isnan(_window_oracle(squares, 3, 4))
    assert gaps.any() and not gaps.all()


def test_fills_are_in_pixel_units():
    inputs = keras.Input((4, 4, 3), name="image")
    normalized = keras.layers.Normalization(
        mean=[10.0, 20.0, 30.0], variance=[1.0, 1.0, 1.0], name="normalize"
    )
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.Flatten()(normalized(inputs)))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    image = np.arange(48, dtype=np.float32).reshape(4, 4, 3)
    np.testing.assert_allclose(fill_image(model, image, "mean", 2)[1, 2], [10, 20, 30])
    assert (fill_image(model, image, "gray", 2) == 128).all() and (fill_image(model, image, 5, 2) == 5).all()
    assert (fill_image(model, image, "zero", 2) == 0).all()
    blurred = fill_image(model, image, "blur", 3)
    assert blurred[1, 1, 0] == pytest.approx(image[0:3, 0:3, 0].mean())
    with pytest.raises(ValueError, match="unknown fill 'pink'"):
        fill_image(model, image, "pink", 2)
    # a model that stores no training mean (--no-normalize, or made elsewhere) is filled with mid-grey
    assert (fill_image(_region_model(), image[..., :1], "mean", 2) == 128).all()


def _linear_model(shape=(5, 4, 3), classes=3, seed=2):
    inputs = keras.Input(shape, name="image")
    logits = keras.layers.Dense(classes, name="class_logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    weights = np.random.default_rng(seed).normal(size=(int(np.prod(shape)), classes)).astype(np.float32)
    model.get_layer("class_logits").set_weights([weights, np.zeros(classes, np.float32)])
    return model, weights.reshape(*shape, classes)


def test_saliency_of_a_linear_model_is_its_weights():
    model, weights = _linear_model()
    images = np.random.default_rng(3).uniform(0, 255, (4, 5, 4, 3)).astype(np.float32)
    logit_map = saliency(model, images, target=2, of="logit", batch_size=3)
    np.testing.assert_allclose(logit_map[1], np.abs(weights[..., 2]).max(axis=-1), rtol=1e-5)
    times = saliency(model, images, target=2, of="logit", times_input=True)
    np.testing.assert_allclose(times[0], np.abs(weights[..., 2] * images[0]).max(axis=-1), rtol=1e-4)
    # loss = -log softmax: its gradient is sum_k (p_k - y_k) w_k
    logits = np.einsum("nhwc,hwck->nk", images.astype(np.float64), weights)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    coefficient = probabilities - np.eye(3)[[0, 0, 0, 0]]
    expected = np.abs(np.einsum("nk,hwck->nhwc", coefficient, weights)).max(axis=-1)
    np.testing.assert_allclose(saliency(model, images, target=0), expected, rtol=1e-4, atol=1e-7)
    # SmoothGrad of a linear model: every noisy copy has the same logit gradient
    smooth = saliency(model, images, target=2, of="logit", smoothgrad=4)
    np.testing.assert_allclose(smooth, logit_map, rtol=1e-5)


def _one_filter_model(tmp_path=None):
    inputs = keras.Input((6, 6, 1), name="image")
    features = keras.layers.Conv2D(1, 1, name="conv1")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    logits = keras.layers.Dense(2, name="class_logits")(pooled)
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    model.get_layer("conv1").set_weights([np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)])
    model.get_layer("class_logits").set_weights(
        [np.array([[-1.0, 2.0]], np.float32), np.zeros(2, np.float32)]
    )
    if tmp_path is not None:  # through a .keras file, as explain.py loads models
        model.save(tmp_path / "m.keras")
        model = keras.models.load_model(tmp_path / "m.keras")
    return model


@pytest.mark.parametrize("saved", [False, True], ids=["built", "loaded-from-keras-file"])
def test_gradcam_of_one_conv_filter_is_the_weighted_feature_map(tmp_path, saved):
    model = _one_filter_model(tmp_path if saved else None)
    images = np.random.default_rng(4).uniform(0, 255, (3, 6, 6, 1)).astype(np.float32)
    # d logit1 / d A_ij = 2 / 36 everywhere, so the map is relu(2/36 * A) with A = the image
    cam = gradcam(model, images, target=1, layer="conv1", batch_size=2)
    np.testing.assert_allclose(cam, images[..., 0] * 2 / 36, rtol=1e-5)
    assert not gradcam(model, images, target=0).any()  # weight -1/36: all negative, ReLU'd away
    np.testing.assert_allclose(activations(model, images, layer="conv1")[..., 0], images[..., 0], rtol=1e-6)


def _two_head_model():
    inputs = keras.Input((3, 3, 1), name="image")
    flat = keras.layers.Flatten()(inputs)
    colour = keras.layers.Dense(1, name="colour_logits")(flat)
    angle = keras.layers.Dense(3, name="angle_logits")(flat)
    outputs = {
        "colour": keras.layers.Activation("sigmoid", name="colour")(colour),
        "angle": keras.layers.Softmax(name="angle")(angle),
    }
    model = keras.Model(inputs, outputs)
    weights = np.arange(9, dtype=np.float32).reshape(9, 1) / 10
    model.get_layer("colour_logits").set_weights([weights, np.zeros(1, np.float32)])
    return model, weights.reshape(3, 3)


def test_multi_head_targets_name_the_head_and_sigmoid_classes_are_symmetric():
    model, weights = _two_head_model()
    images = np.ones((2, 3, 3, 1), np.float32)
    positive = saliency(model, images, head="colour", target=1, of="logit")
    negative = saliency(model, images, head="colour", target=0, of="logit")
    np.testing.assert_allclose(positive[0], np.abs(weights), rtol=1e-6)
    np.testing.assert_allclose(negative, positive, rtol=1e-6)  # class 0 has logit -z
    with pytest.raises(ValueError, match="several heads \\(angle, colour\\); choose one"):
        saliency(model, images)
    with pytest.raises(ValueError, match="unknown head 'shape'; this model's heads are angle, colour"):
        resolve_head(model, "shape")
    with pytest.raises(ValueError, match="target class 3 does not exist; head 'angle' has classes 0..2"):
        saliency(model, images, head="angle", target=3)


def test_layer_errors_list_the_model_layers():
    model = _one_filter_model()
    with pytest.raises(ValueError, match="unknown layer 'conv9'; this model's conv layers are conv1"):
        gradcam(model, np.zeros((1, 6, 6, 1)), layer="conv9")
    with pytest.raises(ValueError, match="not feature maps; choose a conv layer: conv1"):
        gradcam(model, np.zeros((1, 6, 6, 1)), layer="gap")
    with pytest.raises(ValueError, match="patch must be at least 1"):
        occlusion(model, np.zeros((1, 6, 6, 1)), patch=0)


def test_filter_visualisation_of_the_map_mean_raises_the_filter_activation():
    inputs = keras.Input((8, 8, 1), name="image")
    conv = keras.layers.Conv2D(2, 3, padding="same", name="conv1")(inputs)
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.GlobalAveragePooling2D()(conv))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    kernel = np.zeros((3, 3, 1, 2), np.float32)
    kernel[1, 1, 0, 0] = 1.0  # filter 0: the pixel itself (brighter is better)
    kernel[1, 1, 0, 1] = -1.0  # filter 1: darker is better
    model.get_layer("conv1").set_weights([kernel, np.zeros(2, np.float32)])
    patterns = filter_patterns(model, layer="conv1", objective="mean", steps=20, jitter=0, blur=False)
    assert patterns.shape == (2, 8, 8, 1)
    assert patterns[0].mean() > 128 + 40 and patterns[1].mean() < 128 - 40
    np.testing.assert_array_equal(first_layer_weights(model), np.transpose(kernel, (3, 0, 1, 2)))
    with pytest.raises(ValueError, match="has filters 0..1"):
        filter_patterns(model, layer="conv1", filters=[5])


def _bn_model(batch_stats_at_inference=False):
    from fruitcnn.layers import BatchNorm

    inputs = keras.Input((6, 6, 1), name="image")
    features = keras.layers.Conv2D(2, 3, padding="same", name="conv1")(inputs)
    normalised = BatchNorm(batch_stats_at_inference=batch_stats_at_inference, name="bn1")(features)
    rectified = keras.layers.ReLU(name="relu1")(normalised)
    logits = keras.layers.Dense(2, name="class_logits")(
        keras.layers.GlobalAveragePooling2D(name="gap")(rectified)
    )
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    bn = model.get_layer("bn1")
    bn.set_weights([np.array([1.5, 0.5]), np.array([0.1, -0.2]), np.array([3.0, -1.0]), np.array([4.0, 9.0])])
    return model


def test_batch_norm_models_give_the_same_maps_for_any_batch_size_and_smoothgrad_too():
    from visualize.gradcam import default_layer

    model = _bn_model()
    images = np.random.default_rng(5).uniform(0, 255, (5, 6, 6, 1)).astype(np.float32)
    one = occlusion(model, images[:2], target=1, patch=2, batch_size=1, fill="gray")
    many = occlusion(model, images[:2], target=1, patch=2, batch_size=64, fill="gray")
    np.testing.assert_allclose(one.probability, many.probability, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        saliency(model, images, target=1, smoothgrad=3, batch_size=1),
        saliency(model, images, target=1, smoothgrad=3, batch_size=4),
        rtol=1e-5,
        atol=1e-7,
    )
    assert default_layer(model) == "relu1"  # Grad-CAM's default: the rectified maps, not the raw conv
    with pytest.raises(ValueError, match="depends on the other images of its batch"):
        occlusion(_bn_model(batch_stats_at_inference=True), images, patch=2)


def test_occlusion_of_a_sigmoid_head_class_zero_is_one_minus_class_one():
    model, _ = _two_head_model()
    images = np.random.default_rng(6).uniform(0, 255, (1, 3, 3, 1)).astype(np.float32)
    positive = occlusion(model, images, head="colour", target=1, patch=1, fill=0.0)
    negative = occlusion(model, images, head="colour", target=0, patch=1, fill=0.0)
    np.testing.assert_allclose(positive.probability + negative.probability, 1.0, rtol=1e-6)
    hidden = images.copy()
    hidden[0, 1, 2] = 0.0
    logit = float((hidden.reshape(-1) * np.arange(9) / 10).sum())
    assert positive.probability[0, 1, 2] == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-5)


def test_explain_images_of_a_model_without_conv_layers_runs_occlusion(tmp_path):
    from visualize.explain_run import explain_images
    from visualize.methods import ExplainSettings
    from visualize.targets import class_probabilities

    model = _region_model()
    images = np.random.default_rng(7).uniform(0, 255, (1, 8, 8, 1)).astype(np.float32)
    classes = {"class": ["a", "b"]}
    probabilities = class_probabilities(model, images, classes)
    common = {"head": None, "target": None, "truth": None, "out": tmp_path}
    written = explain_images(
        model, images, ["x"], classes, probabilities, methods=["occlusion", "saliency"],
        options=ExplainSettings(patch=3, fill=0.0), **common,
    )  # fmt: skip
    assert written == 3 * 2 + 1 and (tmp_path / "x_occlusion_loss.npy").is_file()
    with pytest.raises(ValueError, match="no conv layer; Grad-CAM, activations and filters need one"):
        explain_images(model, images, ["x"], classes, probabilities, methods=["gradcam"],
                       options=ExplainSettings(), **common)  # fmt: skip


def _first_layer_model(seed=0):
    """normalize -> conv1 (4 random 5x5x3 kernels, one with a bias that keeps it off) -> relu1."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((12, 12, 3), name="image")
    normalized = keras.layers.Normalization(mean=[60.0, 90.0, 120.0], variance=[900.0, 1600.0, 2500.0],
                                            name="normalize")(inputs)  # fmt: skip
    conv = keras.layers.Conv2D(4, 5, padding="same", name="conv1")(normalized)
    rectified = keras.layers.ReLU(name="relu1")(conv)
    logits = keras.layers.Dense(2, name="class_logits")(keras.layers.GlobalAveragePooling2D()(rectified))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    kernel = rng.normal(0, 1, (5, 5, 3, 4)).astype(np.float32)
    bias = np.array([0.0, 0.0, 0.0, -1e4], np.float32)  # filter 3 never fires: dead
    model.get_layer("conv1").set_weights([kernel, bias])
    return model, kernel


def test_a_first_layer_unit_is_maximised_by_its_own_kernel():
    from visualize.filters import receptive_field, window_correlation

    model, kernel = _first_layer_model()
    assert receptive_field(model, "conv1") == (slice(4, 9), slice(4, 9))  # the centre unit's 5x5 window
    from visualize.filters import input_frame

    patterns = filter_patterns(model, layer="conv1", filters=[0, 1, 2])
    normalised = input_frame(model).to_normalised(patterns)
    for index in range(3):  # the maximiser of a linear unit under an energy bound is its kernel
        assert window_correlation(normalised[index], kernel[..., index]) > 0.999
    # in pixel units: the kernel scaled by each channel's spread around the mean colour
    centre = patterns[0][4:9, 4:9] - np.array([60.0, 90.0, 120.0])
    scaled = (centre / [30.0, 40.0, 50.0]).ravel()
    assert np.corrcoef(scaled, kernel[..., 0].ravel())[0, 1] == pytest.approx(1.0, abs=1e-4)
    assert np.abs(patterns[0][:4] - [60.0, 90.0, 120.0]).max() < 1e-3  # outside the field: the mean colour


def test_filter_measures_find_dead_filters_percentiles_and_structure():
    from visualize.filters import filter_measures, spatial_structure

    model, _ = _first_layer_model()
    images = np.random.default_rng(1).uniform(0, 255, (16, 12, 12, 3)).astype(np.float32)
    patterns = filter_patterns(model, layer="relu1", images=images)
    found = filter_measures(model, patterns, layer="relu1", filters=range(4), images=images)
    assert found.dead.tolist() == [False, False, False, True] and found.images == 16
    # each living filter's image drives it past the 99th percentile of real images' activations
    assert (found.activation[:3] > found.percentile[:3]).all()
    assert spatial_structure(np.ones((5, 5, 3))) == 0.0  # a flat colour field
    stripes = np.tile(np.array([1.0, -1.0])[:, None, None], (3, 6, 3))
    assert spatial_structure(stripes) == pytest.approx(1.0)
    assert (found.structure[:3] > 0.5).all()
