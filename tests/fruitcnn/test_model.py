"""build_model: names, shapes, parameter counts, shape errors, save/load, logits."""

import keras
import numpy as np
import pytest

from fruitcnn.config import ArchConfig, parse_layers, preset
from fruitcnn.layers import BatchNorm
from fruitcnn.model import build_model, conv_layer_names, flops_per_image, plan_layers
from heads import single_head_specs
from heads.multi import line_attribute_specs

SPECS_96 = single_head_specs([f"c{index}" for index in range(96)])
LINE_VALUES = {
    "length": ["len7", "len15"],
    "width": ["w1", "w3"],
    "colour": ["red", "blue"],
    "angle": [f"ang{a:03d}" for a in range(0, 180, 15)],
}
MULTI = line_attribute_specs(("length", "width", "angle", "colour"), LINE_VALUES)


def _arch(text, **kwargs):
    return ArchConfig(layers=parse_layers(text), **kwargs)


def test_cs671_part1_matches_hand_counts():
    model = build_model(preset("cs671-part1"), input_shape=(28, 28, 3), heads=SPECS_96)
    names = [layer.name for layer in model.layers]
    assert names == [
        "image",
        "normalize",
        "conv1",
        "relu1",
        "bn1",
        "pool1",
        "flatten",
        "fc1",
        "relu2",
        "class_logits",
        "class",
    ]
    assert model.get_layer("conv1").output.shape == (None, 22, 22, 32)  # 28 - 7 + 1
    assert model.get_layer("pool1").output.shape == (None, 11, 11, 32)
    conv = 7 * 7 * 3 * 32 + 32  # bias: ReLU (not bn) follows the conv
    bn = 2 * 32
    fc = 11 * 11 * 32 * 1024 + 1024
    head = 1024 * 96 + 96
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert trainable == conv + bn + fc + head == 4_069_152
    assert model.count_params() == trainable + 2 * 32  # plus bn moving statistics
    assert flops_per_image(model) == 2 * (22 * 22 * 32 * 7 * 7 * 3 + 3872 * 1024 + 1024 * 96)
    assert isinstance(model.get_layer("bn1"), BatchNorm)


SPECS_10 = single_head_specs([f"c{index}" for index in range(10)])


def test_ece4179_shallow_matches_the_handout():
    model = build_model(preset("ece4179-shallow"), input_shape=(96, 96, 3), heads=SPECS_10)
    # 96 -(7x7 s2)-> 45 -(5x5 s2)-> 21 -(3x3 s2)-> 10 -(pool 3 s3)-> 3; 3*3*128 = 1152.
    shapes = {name: model.get_layer(name).output.shape[1:] for name in ("conv1", "conv2", "conv3", "pool1")}
    assert shapes == {
        "conv1": (45, 45, 96),
        "conv2": (21, 21, 64),
        "conv3": (10, 10, 128),
        "pool1": (3, 3, 128),
    }
    assert model.get_layer("flatten").output.shape == (None, 1152)
    assert model.get_layer("fc1").output.shape == (None, 128)
    assert model.get_layer("class_logits").output.shape == (None, 10)
    conv1 = 7 * 7 * 3 * 96 + 96
    conv2 = 5 * 5 * 96 * 64 + 64
    conv3 = 3 * 3 * 64 * 128 + 128
    fc1 = 1152 * 128 + 128
    fc2 = 128 * 10 + 10
    assert model.count_params() == conv1 + conv2 + conv3 + fc1 + fc2 == 390_602
    multiply_adds = 45 * 45 * 96 * 147 + 21 * 21 * 64 * 2400 + 10 * 10 * 128 * 576 + 1152 * 128 + 1280
    assert flops_per_image(model) == 2 * multiply_adds


def test_ece4179_deep_matches_the_handout():
    model = build_model(preset("ece4179-deep"), input_shape=(96, 96, 3), heads=SPECS_10)
    convs = conv_layer_names(model)
    assert len(convs) == 12  # four blocks of three convs
    # Each block: 3x3 stride 2 padding 1 (96 -> 48 -> 24 -> 12 -> 6), then 1x1 and 3x3 keep the side.
    sides = [model.get_layer(name).output.shape[1] for name in convs]
    assert sides == [48] * 3 + [24] * 3 + [12] * 3 + [6] * 3
    assert [model.get_layer(name).output.shape[3] for name in convs[::3]] == [32, 64, 128, 192]
    assert model.get_layer("conv1_pad").output.shape == (None, 98, 98, 3)
    assert model.get_layer("gap").output.shape == (None, 192)

    def block(channels_in, channels_out):
        return (
            (9 * channels_in + 1) * channels_out
            + (channels_out + 1) * channels_out
            + (9 * channels_out + 1) * channels_out
        )

    expected = block(3, 32) + block(32, 64) + block(64, 128) + block(128, 192) + 192 * 10 + 10
    assert model.count_params() == expected == 901_066
    assert [layer.name for layer in model.layers if layer.name.startswith("relu")] == [
        f"relu{i}" for i in range(1, 13)
    ]


def test_ece4179_shallow_on_cifar_sized_images_names_the_way_out():
    with pytest.raises(ValueError) as error:
        plan_layers(preset("ece4179-shallow"), (32, 32, 3))
    message = str(error.value)
    # 32 -> 13 -> 5 -> 2: the 3x3 pool gets a 2x2 map.
    assert "layer pool1 (maxpool(size=3,stride=3), window 3x3) receives a 2x2 map from relu3" in message
    assert "smallest input this architecture accepts is 39x39 (got 32x32): pass --image-size 39" in message
    plan_layers(preset("ece4179-shallow"), (39, 39, 3))
    plan_layers(preset("ece4179-deep"), (32, 32, 3))  # strided convs end at 2x2: fine


def test_conv_bias_is_dropped_before_bn_and_padding_numbers_work():
    model = build_model(
        _arch("conv(4,3,padding=1) bn relu conv(4,3,stride=2) gap"), input_shape=(9, 9, 3), heads=SPECS_96
    )
    assert model.get_layer("conv1").use_bias is False and model.get_layer("conv2").use_bias is True
    assert model.get_layer("conv1_pad").output.shape == (None, 11, 11, 3)
    assert model.get_layer("conv1").output.shape == (None, 9, 9, 4)
    assert model.get_layer("conv2").output.shape == (None, 5, 5, 4)  # same padding: ceil(9/2)
    assert conv_layer_names(model) == ["conv1", "conv2"]


def test_a_pool_that_does_not_fit_names_layer_shapes_and_smallest_input():
    arch = _arch("conv(8,3,padding=valid) maxpool(2) conv(8,3,padding=valid) maxpool(3) flatten")
    # 10 -> 8 -> 4 -> 2: pool2 (3x3) gets a 2x2 map.
    with pytest.raises(ValueError) as error:
        plan_layers(arch, (10, 10, 3))
    message = str(error.value)
    assert "layer pool2 (maxpool(size=3)" in message
    assert "receives a 2x2 map from conv2 but needs at least 3x3" in message
    assert "smallest input this architecture accepts is 12x12 (got 10x10)" in message
    assert "--image-size 12" in message
    plan_layers(arch, (12, 12, 3))  # the suggestion really works


def test_extractor_must_end_in_a_vector():
    with pytest.raises(ValueError, match="ends with a 7x7x8 map .*conv2.*end it with flatten, gap or gmp"):
        plan_layers(_arch("conv(8) maxpool(2) conv(8)"), (14, 14, 3))
    with pytest.raises(ValueError, match="put flatten, gap or gmp before the first fc"):
        plan_layers(_arch("conv(8) fc(10)"), (14, 14, 3))


def test_heads_keep_logits_separate_from_the_squashing():
    model = build_model(preset("line"), input_shape=(28, 28, 3), heads=MULTI, seed=1)
    assert sorted(model.output.keys()) == ["angle", "colour", "length", "width"]
    images = np.random.default_rng(0).integers(0, 255, (3, 28, 28, 3)).astype("float32")
    logits_model = keras.Model(
        model.input, {name: model.get_layer(f"{name}_logits").output for name in model.output}
    )
    logits = logits_model.predict(images, verbose=0)
    probabilities = model.predict(images, verbose=0)
    np.testing.assert_allclose(probabilities["length"], 1 / (1 + np.exp(-logits["length"])), rtol=1e-5)
    shifted = np.exp(logits["angle"] - logits["angle"].max(axis=1, keepdims=True))
    np.testing.assert_allclose(
        probabilities["angle"], shifted / shifted.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7
    )
    assert probabilities["angle"].shape == (3, 12) and probabilities["colour"].shape == (3, 1)


@pytest.mark.parametrize("heads", [SPECS_96, MULTI], ids=["single", "multi"])
def test_keras_file_round_trip_predicts_the_same(tmp_path, heads):
    model = build_model(
        _arch("conv(8,3) bn relu maxpool(2) dropout(0.3) conv(8,3) bn relu gap fc(16) relu"),
        input_shape=(16, 16, 3),
        heads=heads,
        channel_mean=[10, 20, 30],
        channel_variance=[4, 9, 16],
    )
    images = np.random.default_rng(1).integers(0, 255, (4, 16, 16, 3)).astype("float32")
    # Move the bn statistics away from their initial values so the test can see them.
    model(images, training=True)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    before, after = model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        loaded.get_layer("normalize").mean.numpy().ravel()
        if hasattr(loaded.get_layer("normalize").mean, "numpy")
        else np.ravel(loaded.get_layer("normalize").mean),
        [10, 20, 30],
    )


def test_normalisation_uses_the_given_channel_statistics():
    model = build_model(
        _arch("gap"),
        input_shape=(2, 2, 3),
        heads=SPECS_96,
        channel_mean=[100, 50, 0],
        channel_variance=[25, 4, 1],
    )
    normalise = keras.Model(model.input, model.get_layer("normalize").output)
    out = normalise.predict(np.full((1, 2, 2, 3), 110.0, "float32"), verbose=0)
    np.testing.assert_allclose(out[0, 0, 0], [(110 - 100) / 5, (110 - 50) / 2, 110.0], rtol=1e-5)


def test_keras_bn_option_and_seeded_weights():
    arch = _arch("conv(4) bn relu gap", bn_layer="keras")
    model = build_model(arch, input_shape=(8, 8, 3), heads=SPECS_96, seed=3)
    assert isinstance(model.get_layer("bn1"), keras.layers.BatchNormalization)
    again = build_model(arch, input_shape=(8, 8, 3), heads=SPECS_96, seed=3)
    np.testing.assert_array_equal(
        model.get_layer("conv1").kernel.numpy(), again.get_layer("conv1").kernel.numpy()
    )


def test_arch_settings_reach_the_layers():
    arch = _arch(
        "conv(4) bn bn(momentum=0.5) relu gap",
        l2=0.01,
        dropout=0.25,
        bn_momentum=0.8,
        bn_batch_stats_at_inference=True,
    )
    model = build_model(arch, input_shape=(8, 8, 3), heads=SPECS_96)
    assert model.get_layer("bn1").momentum == 0.8 and model.get_layer("bn2").momentum == 0.5
    assert model.get_layer("bn1").batch_stats_at_inference
    assert model.get_layer("dropout_head").rate == 0.25
    # one L2 penalty per kernel: conv1 and the head's logits layer
    model(np.ones((1, 8, 8, 3), "float32"))
    assert len(model.losses) == 2
    kernel = model.get_layer("conv1").kernel.numpy()
    head = model.get_layer("class_logits").kernel.numpy()
    expected = 0.01 * (np.sum(kernel**2) + np.sum(head**2))
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)
