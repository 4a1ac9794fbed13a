"""Model files: damaged ones named as such, and models made elsewhere in fruitcnn's form."""

import zipfile

import keras
import numpy as np
import pytest

from fruitcnn import modelfile
from visualize.gradcam import gradcam
from visualize.saliency import saliency
from visualize.targets import head_names


def _images(count=4, side=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, side, side, 3)).astype(np.float32)


def _sequential(rescale=True, activation="softmax"):
    layers = [keras.Input((8, 8, 3))]
    if rescale:
        layers.append(keras.layers.Rescaling(1 / 255.0))
    layers += [
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation=activation, name="out"),
    ]
    keras.utils.set_random_seed(0)
    return keras.Sequential(layers)


def test_a_truncated_file_is_not_a_valid_keras_file(tmp_path):
    path = tmp_path / "model.keras"
    _sequential().save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match="is not a valid .keras file: it is not a zip archive"):
        modelfile.load_keras(path)


def test_a_zip_without_config_is_not_a_valid_keras_file(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.weights.h5", b"x")
    with pytest.raises(ValueError, match="not a valid .keras file: it has no config.json"):
        modelfile.load_keras(path)


def test_a_lambda_layer_is_refused(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="refused: it holds Python code"):
        modelfile.load_keras(tmp_path / "lambda.keras")


def test_a_sequential_softmax_model_gets_logits_and_the_same_probabilities(tmp_path):
    original = _sequential()
    original.save(tmp_path / "seq.keras")
    model = modelfile.load_model(tmp_path / "seq.keras")
    assert modelfile.fruitcnn_form(model) and head_names(model) == ["class"]
    images = _images()
    np.testing.assert_allclose(model.predict(images, verbose=0)["class"], original.predict(images, verbose=0),
                               atol=1e-6)  # fmt: skip
    # the logits layer holds the scores before the softmax
    logits = keras.Model(model.inputs, model.get_layer("class_logits").output).predict(images, verbose=0)
    np.testing.assert_allclose(
        keras.ops.softmax(logits).numpy(), original.predict(images, verbose=0), atol=1e-6
    )
    assert saliency(model, images).shape == (4, 8, 8) and gradcam(model, images, layer="conv").max() >= 0


def test_a_model_without_scaling_needs_its_input_range(tmp_path):
    original = _sequential(rescale=False)
    with pytest.raises(ValueError, match=r"first layer is Conv2D 'conv'.*pass --input-range 0-1"):
        modelfile.adapt_model(original)
    model = modelfile.adapt_model(original, input_range="0-1")
    images = _images()
    np.testing.assert_allclose(
        model.predict(images, verbose=0)["class"], original.predict(images / 255.0, verbose=0), atol=1e-6
    )
    centred = modelfile.adapt_model(original, input_range="-1-1")
    np.testing.assert_allclose(
        centred.predict(images, verbose=0)["class"],
        original.predict(images / 127.5 - 1.0, verbose=0),
        atol=1e-5,
    )


def test_a_functional_model_with_a_linear_and_a_sigmoid_output_gets_two_heads():
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    scores = keras.layers.Dense(4, name="scores")(features)  # logits, no activation
    flag = keras.layers.Dense(1, activation="sigmoid", name="flag")(features)
    original = keras.Model(inputs, [scores, flag])
    model = modelfile.adapt_model(original)
    assert list(model.output) == ["scores_head", "flag_head"]  # a layer already has each name
    assert sorted(head_names(model)) == ["flag_head", "scores_head"]
    images = _images()
    outputs = model.predict(images, verbose=0)
    raw_scores, raw_flag = original.predict(images, verbose=0)
    np.testing.assert_allclose(outputs["scores_head"], keras.ops.softmax(raw_scores).numpy(), atol=1e-6)
    np.testing.assert_allclose(outputs["flag_head"], raw_flag, atol=1e-6)
    named = modelfile.adapt_model(original, head_names=["digit", "odd"])
    assert list(named.output) == ["digit", "odd"] and sorted(head_names(named)) == ["digit", "odd"]


def test_an_activation_layer_output_takes_its_input_as_logits():
    inputs = keras.Input((8, 8, 3))
    scaled = keras.layers.Normalization(mean=127.0, variance=900.0)(inputs)
    dense = keras.layers.Dense(3, name="dense")(keras.layers.Flatten()(scaled))
    original = keras.Model(inputs, keras.layers.Softmax(name="probabilities")(dense))
    model = modelfile.adapt_model(original)
    images = _images()
    logits = keras.Model(model.inputs, model.get_layer("class_logits").output).predict(images, verbose=0)
    direct = keras.Model(original.inputs, original.get_layer("dense").output).predict(images, verbose=0)
    np.testing.assert_allclose(logits, direct, atol=1e-6)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: keras.Model(
                [a := keras.Input((8, 8, 3)), b := keras.Input((8, 8, 3))],
                keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Add()([a, b]))),
            ),
            "takes 2 inputs",
        ),  # fmt: skip
        (
            lambda: keras.Sequential(
                [keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]
            ),
            "accepts images of any size",
        ),  # fmt: skip
        (lambda: _sequential(activation="sigmoid"), "has 3 sigmoid units"),
        (lambda: _sequential(activation="relu"), "activation relu"),
    ],
)
def test_unusable_models_are_refused_with_what_was_found(build, message):
    with pytest.raises(ValueError, match=message):
        modelfile.adapt_model(build(), input_range="0-255")


def test_a_fruitcnn_model_is_returned_as_it_is():
    from fruitcnn.config import preset
    from fruitcnn.model import build_model
    from heads import single_head_specs

    model = build_model(preset("line"), input_shape=(28, 28, 3), heads=single_head_specs(["a", "b"]))
    assert modelfile.adapt_model(model) is model
    with pytest.raises(ValueError, match="drop --input-range 0-1"):
        modelfile.adapt_model(model, input_range="0-1")
