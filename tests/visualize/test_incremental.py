"""Incremental occlusion against batched re-inference: the same maps, max |diff| < 1e-4.

Every model gets random weights (batch-norm statistics too) and logits scaled up, so
its softmax is far from uniform and a wrong value shows in the maps. The class explained
is the runner-up, whose loss (-log p, linear in the logits even where p is tiny) moves
with every change of the logits; each check asserts that the loss map varies, so it
cannot pass on a flat map.
"""

import keras
import numpy as np
import pytest

import visualize.incremental as incremental
import visualize.occlusion as occlusion_module
from fruitcnn.config import PRESETS, ArchConfig, parse_layers, preset
from fruitcnn.layers import Whiten
from fruitcnn.model import build_model
from fruitcnn.recipes import photo_layers
from heads import HeadSpec, single_head_specs
from visualize.occlusion import occlusion

TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def batched_without_xla(monkeypatch):
    """The batched reference without XLA: the same values, and no seconds of compiling
    per model (the incremental engine never uses XLA)."""
    monkeypatch.setattr(occlusion_module, "JIT", False)


def _randomise(model: keras.Model, seed: int, logit_scale: float = 3.0) -> keras.Model:
    """Random weights everywhere but the normalisation: He-scaled kernels (the logits
    ``logit_scale`` times larger), biases and batch-norm shifts around 0, scales and
    variances around 1."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name == "normalize" or not layer.weights:
            continue
        values = []
        for variable in layer.weights:
            shape, name = tuple(variable.shape), variable.name
            if name in ("moving_variance", "gamma"):
                values.append(rng.uniform(0.5, 1.5, shape))
            elif name in ("moving_mean", "beta", "bias"):
                values.append(rng.normal(0.0, 0.2, shape))
            else:
                scale = np.sqrt(2.0 / np.prod(shape[:-1]))
                values.append(
                    rng.normal(0.0, scale * (logit_scale if layer.name.endswith("_logits") else 1), shape)
                )
        layer.set_weights([value.astype(np.float32) for value in values])
    return model


def _model(layers: str, shape, heads=None, seed=0, **arch) -> keras.Model:
    text_arch = (
        preset(layers) if layers in PRESETS else ArchConfig(name="x", layers=parse_layers(layers), **arch)
    )
    specs = heads or single_head_specs([f"c{index}" for index in range(6)])
    return _randomise(build_model(text_arch, input_shape=shape, heads=specs, seed=seed), seed)


def _image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)


def _runner_up(model, image, head) -> int:
    """The second most likely class: its probability moves both ways under occlusion."""
    outputs = model.predict(image[None], verbose=0)
    probabilities = (outputs[head or next(iter(outputs))] if isinstance(outputs, dict) else outputs)[0]
    if probabilities.shape[-1] == 1:
        return int(probabilities[0] < 0.5)
    return int(np.argsort(probabilities)[-2])


def _difference(model, image, *, min_spread=0.02, **options) -> float:
    """Largest difference of the incremental maps from the batched ones (probability, and
    loss relative to its size) for the runner-up class unless a target is given; asserts
    the incremental engine ran and the loss map varies by more than ``min_spread``."""
    options.setdefault("spread", "centre")  # each square's own value, not a mean over squares
    if options.get("target") is None:
        options["target"] = _runner_up(model, image, options.get("head"))
    fast = occlusion(model, image, engine="incremental", **options)
    options.pop("target")
    plain = occlusion(model, image, engine="batched", target=fast.targets, **options)
    assert fast.engine == "incremental" and fast.fallback_reason is None
    assert np.ptp(plain.loss) > min_spread, "a flat map cannot show a wrong value"
    loss_scale = np.maximum(1.0, np.abs(plain.loss))
    np.testing.assert_allclose(fast.baseline_probability, plain.baseline_probability, atol=TOLERANCE)
    return max(
        np.abs(fast.probability - plain.probability).max(),
        (np.abs(fast.loss - plain.loss) / loss_scale).max(),
    )


# (preset, image shape, patch, stride): every preset at the size it is meant for
PRESET_CASES = [
    ("line", (28, 28, 3), 5, 1),
    ("cs671-part1", (28, 28, 1), 4, 1),
    ("mnist", (28, 28, 1), 6, 1),
    ("cifar10", (32, 32, 3), 7, 2),
    ("fruits", (100, 100, 3), 10, 3),
    ("ece4179-shallow", (96, 96, 3), 12, 4),
    ("ece4179-deep", (96, 96, 3), 16, 5),
    ("ece4179-better", (96, 96, 3), 12, 4),  # a frozen whitening conv (Whiten), pooling to 32 px, gmp
]


@pytest.mark.parametrize(
    ("name", "shape", "patch", "stride"), PRESET_CASES, ids=[case[0] for case in PRESET_CASES]
)
def test_every_preset_gives_the_batched_maps(name, shape, patch, stride):
    model = _model(name, shape, seed=len(name))
    assert _difference(model, _image(shape), patch=patch, stride=stride) < TOLERANCE


@pytest.mark.parametrize(("side", "patch"), [(32, 5), (72, 9)])
def test_the_photo_recipes_networks_give_the_batched_maps(side, patch):
    """What train.py builds for colour photos (fruitcnn.recipes): a Whiten first layer,
    maxpool to about 32 px above 40 px, conv blocks without bias, gmp, a scaled head."""
    shape = (side, side, 3)
    model = _model(photo_layers(8, side), shape, seed=side)
    assert any(type(layer) is Whiten for layer in model.layers)
    assert _difference(model, _image(shape, seed=side), patch=patch, stride=2) < TOLERANCE
    # its small last maps are recomputed whole, the larger ones in delta form before them
    occluder, _ = occlusion_module.incremental_occluder(model, "class", shape, patch, 2)
    whole = occluder._axes[0].whole
    assert whole[-1] and not whole[1] and any(occluder.delta[: whole.index(True)])


# Hand-picked architectures: kernels 1/3/5/7, conv strides 1/2, 'same', 'valid' and
# explicit padding, max/average pooling of sizes 2/3 with strides 1-3 and both paddings,
# batch norm before and after pooling and after flatten, flatten/gap/gmp, odd and even
# patches, evaluation strides 1-4, image sides that no stride divides.
ARCH_CASES = [
    ("conv(8,3) bn relu maxpool(2) conv(8,3) bn relu maxpool(2) flatten fc(16) relu", (23, 23, 3), 5, 1),
    (
        "conv(6,5,padding=valid) relu maxpool(3,stride=2) conv(8,7,stride=2) bn relu avgpool(2,padding=same) "
        "flatten bn relu fc(16) relu",
        (29, 31, 3),
        6,
        3,
    ),
    ("conv(8,1) relu maxpool(2,padding=same) conv(8,3,stride=2,padding=1) bn tanh gmp", (23, 20, 1), 3, 2),
    (
        "conv(8,3,stride=2,padding=valid) elu avgpool(3,stride=1,padding=same) conv(8,3) swish gap "
        "fc(8) bn relu",
        (21, 21, 3),
        7,
        1,
    ),
    (
        "conv(6,7,stride=2,padding=2) bn relu maxpool(2,stride=3) bn conv(4,1,stride=2,padding=2) bn tanh "
        "avgpool(2) flatten",
        (25, 22, 3),
        8,
        4,
    ),
    (
        "conv(4,5,padding=same) leaky_relu conv(6,1,stride=2,padding=2) bn tanh dropout(0.3) "
        "conv(8,3,padding=valid) bn relu flatten relu fc(16) relu",
        (18, 32, 3),
        9,
        2,
    ),
    (
        "conv(8,7,padding=2) swish avgpool(3,stride=3) conv(6,1,padding=1) bn elu conv(8,3,padding=1) "
        "leaky_relu maxpool(2) bn flatten bn fc(8) relu",
        (19, 29, 3),
        2,
        1,
    ),
    # even kernels ('same' pads one row more after than before), a conv bias folded with its batch norm
    (
        "conv(4,4) gelu conv(6,2,stride=2) sigmoid maxpool(2,padding=same) conv(8,3,bias=true) bn relu gap",
        (22, 19, 3),
        4,
        1,
    ),
    ("flatten fc(8) relu", (9, 11, 3), 3, 1),  # no spatial layer: the image itself is flattened
    ("gmp", (10, 8, 3), 2, 1),
]


@pytest.mark.parametrize(
    ("layers", "shape", "patch", "stride"), ARCH_CASES, ids=[f"arch{i}" for i in range(len(ARCH_CASES))]
)
def test_architectures_of_every_layer_kind_give_the_batched_maps(layers, shape, patch, stride):
    model = _model(layers, shape, seed=patch)
    assert _difference(model, _image(shape, seed=stride), patch=patch, stride=stride, fill="gray") < TOLERANCE


def _random_layers(rng: np.random.Generator) -> str:
    parts = []
    for _ in range(rng.integers(1, 4)):
        kernel, stride = rng.choice([1, 2, 3, 4, 5, 7]), rng.choice([1, 1, 2])
        padding = rng.choice(["same", "valid", "1", "2"])
        parts.append(f"conv({rng.choice([4, 8])},{kernel},stride={stride},padding={padding})")
        parts += ["bn"] * int(rng.random() < 0.5) + [
            str(rng.choice(["relu", "elu", "tanh", "gelu", "sigmoid"]))
        ]
        if rng.random() < 0.7:
            kind, size = rng.choice(["maxpool", "avgpool"]), rng.choice([2, 3])
            parts.append(
                f"{kind}({size},stride={rng.choice([1, 2, 3])},padding={rng.choice(['valid', 'same'])})"
            )
    parts.append(str(rng.choice(["flatten", "gap", "gmp", "flatten bn", "flatten relu"])))
    return " ".join(parts) + (" fc(8) relu" if rng.random() < 0.5 else "")


@pytest.mark.parametrize("seed", range(6))
def test_random_architectures_give_the_batched_maps(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):  # redraw those that do not fit their image
        layers, shape = _random_layers(rng), (int(rng.integers(15, 34)), int(rng.integers(15, 34)), 3)
        try:
            model = _model(layers, shape, seed=seed)
            break
        except ValueError:
            continue
    else:
        raise AssertionError("no random architecture fitted its image in 50 draws")
    patch, stride = int(rng.integers(1, 10)), int(rng.integers(1, 5))
    fill = ["mean", "blur", 30.0][seed % 3]
    difference = _difference(model, _image(shape, seed), patch=patch, stride=stride, fill=fill)
    assert difference < TOLERANCE, f"{layers} on {shape}, patch {patch}, stride {stride}"


def test_squares_larger_than_the_image_and_keras_batch_norm():
    model = _model("conv(8,3) bn relu maxpool(2) conv(8,3) bn relu gap", (12, 13, 3), bn_layer="keras")
    assert isinstance(model.get_layer("bn1"), keras.layers.BatchNormalization)
    image = _image((12, 13, 3))
    assert _difference(model, image, patch=5) < TOLERANCE
    # a square of 40 hides the whole image wherever it is centred: one value everywhere
    whole = occlusion(model, image, patch=40, fill="gray", engine="incremental")
    plain = occlusion(model, np.full_like(image, 128.0), target=whole.targets, patch=1, engine="batched")
    np.testing.assert_allclose(whole.probability, plain.baseline_probability[0], atol=TOLERANCE)


def test_keras_batch_norm_after_flatten_a_head_dropout_and_a_dense_activation():
    model = _model(
        "conv(8,3) bn relu maxpool(2) flatten bn fc(8) relu", (14, 14, 3), bn_layer="keras", dropout=0.3
    )
    assert model.get_layer("dropout_head") is not None
    assert _difference(model, _image((14, 14, 3)), patch=3) < TOLERANCE
    inputs = keras.Input((12, 12, 3), name="image")
    maps = keras.layers.Conv2D(6, 3, activation="elu", name="conv1")(inputs)
    hidden = keras.layers.Dense(8, activation="tanh", name="fc1")(keras.layers.Flatten(name="flatten")(maps))
    logits = keras.layers.Dense(4, name="class_logits")(hidden)
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    assert _difference(_randomise(model, 3), _image((12, 12, 3)), patch=4, fill="gray") < TOLERANCE


def test_four_heads_and_both_classes_of_a_sigmoid_head():
    heads = [
        HeadSpec("length", "sigmoid", ("short", "long")),
        HeadSpec("angle", "softmax", tuple(f"ang{15 * index:03d}" for index in range(12))),
        HeadSpec("colour", "sigmoid", ("red", "blue")),
        HeadSpec("width", "sigmoid", ("thin", "thick")),
    ]
    model = _model("conv(8,3) bn relu maxpool(2) conv(16,3) bn relu flatten fc(16) relu", (20, 20, 3), heads)
    image = _image((20, 20, 3))
    for head in ("length", "angle", "colour", "width"):
        assert _difference(model, image, head=head, patch=4) < TOLERANCE
    for target in (0, 1):
        assert _difference(model, image, head="colour", target=target, patch=3) < TOLERANCE


def test_batch_sizes_and_a_saved_model_do_not_change_the_maps(tmp_path):
    model = _model("conv(8,3) bn relu maxpool(2) flatten fc(8) relu", (15, 17, 3))
    image = _image((15, 17, 3))
    whole = occlusion(model, image, patch=4, engine="incremental")
    for batch_size in (1, 7):
        piecewise = occlusion(model, image, patch=4, engine="incremental", batch_size=batch_size)
        np.testing.assert_allclose(piecewise.probability, whole.probability, atol=1e-6)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    again = occlusion(loaded, image, patch=4, engine="auto")
    assert again.engine == "incremental"
    np.testing.assert_allclose(again.probability, whole.probability, atol=1e-6)


def test_stride_one_convs_above_the_image_run_in_delta_form_and_either_form_gives_the_maps(monkeypatch):
    """Delta form (conv(new) = conv(old) + conv(new - old)) for stride-1 convs wider than
    1x1 that read a recomputed map; every conv in window form gives the same maps."""
    layers = (
        "conv(8,3) bn relu maxpool(2) conv(8,3) bn relu conv(8,1) relu conv(8,3,stride=2) relu "
        "conv(8,5,padding=valid) bn relu flatten fc(16) relu"
    )
    model = _model(layers, (30, 30, 3), seed=3)
    occluder, _ = occlusion_module.incremental_occluder(model, "class", (30, 30, 3), 5, 1)
    kinds = [op.kind for op in occluder.chain.spatial]
    assert kinds == ["conv", "maxpool", "conv", "conv", "conv", "conv"]
    # the last conv's 4x4 output is recomputed whole (its boxes would be 5-9 wide): window form
    assert [axis.whole for axis in occluder._axes] == [[False] * 6 + [True]] * 2
    assert occluder.delta == [False, False, True, False, False, False]
    image = _image((30, 30, 3), seed=4)
    assert _difference(model, image, patch=5) < TOLERANCE
    monkeypatch.setattr(incremental.engine, "_delta_form", lambda index, op: False)
    window = incremental.IncrementalOccluder(model, "class", (30, 30, 3), 5, 1)
    assert not any(window.delta)
    fill = np.full((30, 30, 3), 128.0, np.float32)
    target = _runner_up(model, image, None)
    np.testing.assert_allclose(window(image, fill, target)[0], occluder(image, fill, target)[0], atol=1e-5)


@pytest.mark.parametrize(
    ("fault", "end"),
    [
        ("square one row low", "flatten fc(16) relu"),
        ("box one row short", "flatten fc(16) relu"),
        ("splice one column off", "flatten fc(16) relu"),
        ("box one row short", "gmp"),
        ("square one row low", "gap"),
    ],
)
def test_an_index_off_by_one_is_caught(monkeypatch, fault, end):
    """The comparison is sharp enough to see a single misplaced row or column."""
    plan = incremental._axis_plan

    def faulty(spatial, axis, centres, patch):
        result = plan(spatial, axis, centres, patch)
        if fault == "square one row low" and axis == 0:
            return incremental._Axis(result.top + 1, *list(vars(result).values())[1:])
        if fault == "box one row short" and axis == 0:
            result.window_start[1] += 1  # the first changed row of map 1 would come from the clean map
            result.window_size[1] -= 1
        if fault == "splice one column off" and axis == 1:
            result.window_start[2] += 1  # map 2's recomputed box spliced one column too far right
        return result

    monkeypatch.setattr(incremental.engine, "_axis_plan", faulty)
    model = _model(f"conv(8,3) bn relu maxpool(2) conv(8,3) bn relu maxpool(2) {end}", (21, 21, 3))
    assert not _difference(model, _image((21, 21, 3)), patch=5) < TOLERANCE  # (NaN counts as caught)


def test_a_sequential_model_gives_the_batched_maps():
    model = keras.Sequential(
        [
            keras.Input((11, 10, 3)),
            keras.layers.Conv2D(6, 3, padding="same", name="conv1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.Activation("relu", name="relu1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(5, name="class_logits"),
            keras.layers.Softmax(name="class"),
        ]
    )
    assert _difference(_randomise(model, 5), _image((11, 10, 3)), patch=3, fill="gray") < TOLERANCE


def _foreign_model(middle, flatten=None):
    inputs = keras.Input((8, 8, 2), name="image")
    maps = middle(keras.layers.Conv2D(4, 3, name="conv1")(inputs))
    flat = (flatten or keras.layers.Flatten(name="flatten"))(maps)
    logits = keras.layers.Dense(3, name="class_logits")(flat)
    return keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (
            lambda: _foreign_model(keras.layers.Activation("softmax", name="act")),
            "layer act (Activation) on the",
        ),
        (lambda: _foreign_model(keras.layers.PReLU(name="prelu")), "layer prelu (PReLU) on the image path"),
        (
            lambda: _foreign_model(
                lambda x: x, keras.layers.Flatten(data_format="channels_first", name="flat")
            ),
            "layer flat is channels_first",
        ),
    ],
    ids=["softmax", "prelu", "channels-first"],
)
def test_layers_it_cannot_follow_are_named(model, reason):
    maps = occlusion(model(), _image((8, 8, 2)), patch=3, fill="gray")
    assert maps.engine == "batched" and maps.fallback_reason.startswith(reason)


def test_unsupported_models_fall_back_with_the_reason_or_fail_when_asked_for():
    inputs = keras.Input((9, 9, 1), name="image")
    features = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="conv1")(inputs)
    logits = keras.layers.Dense(3, name="class_logits")(keras.layers.Flatten(name="flatten")(features))
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    image = _image((9, 9, 1))
    maps = occlusion(model, image, patch=3, fill="gray")
    assert maps.engine == "batched" and maps.fallback_reason == "conv conv1 is dilated or grouped"
    with pytest.raises(
        ValueError, match="incremental occlusion cannot handle this model: conv conv1 is dilated"
    ):
        occlusion(model, image, patch=3, fill="gray", engine="incremental")
    with pytest.raises(
        ValueError, match="unknown occlusion engine 'fast'; expected one of auto, incremental"
    ):
        occlusion(model, image, engine="fast")
    with pytest.raises(ValueError, match="unknown occlusion spread 'middle'; expected one of window, centre"):
        occlusion(model, image, spread="middle")
