"""The architecture and run configuration: parsing, presets, validation, round trips."""

import json

import pytest

from fruitcnn.config import (
    ArchConfig,
    DataConfig,
    LayerSpec,
    RunConfig,
    TrainConfig,
    layers_to_text,
    parse_layers,
    preset,
    resolve_arch,
)


def test_parse_compact_layers_with_positional_and_named_arguments():
    specs = parse_layers(
        "conv(32, 7, padding=valid) relu bn(momentum=0.8); maxpool(2,stride=2), flatten fc(1024) dropout(0.5)"
    )
    assert [spec.kind for spec in specs] == ["conv", "act", "bn", "maxpool", "flatten", "fc", "dropout"]
    assert specs[0].params == {"filters": 32, "kernel": 7, "stride": 1, "padding": "valid", "bias": "auto"}
    assert specs[1].params == {"fn": "relu"}
    assert specs[2].params["momentum"] == 0.8
    assert specs[3].params == {"size": 2, "stride": 2, "padding": "valid"}
    assert specs[5].params == {"units": 1024}


def test_text_round_trip():
    text = "conv(filters=16,kernel=4,stride=2) bn relu conv(filters=32,padding=1) gap fc(units=10) tanh"
    assert layers_to_text(parse_layers(text)) == text
    assert parse_layers(layers_to_text(parse_layers(text))) == parse_layers(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("conv", "needs its argument 'filters'"),
        ("conv(32, strides=2)", "has no argument strides; its arguments are filters, kernel"),
        ("pool(2)", "unknown layer kind 'pool'"),
        ("conv(0)", "filters must be a positive integer"),
        ("dropout(1.5)", "dropout rate must be in"),
        ("conv(32, padding=full)", "padding must be 'same', 'valid' or a number"),
        ("act(softplus)", "unknown activation 'softplus'"),
        ("fc(10, 3)", "at most 1 positional"),
        ("conv(32) ) relu", "cannot read the layer list"),
    ],
)
def test_bad_layer_lists_are_explained(text, message):
    with pytest.raises(ValueError, match=message):
        parse_layers(text)


def test_presets_and_resolve():
    cs671 = preset("cs671-part1")
    assert layers_to_text(cs671.layers) == (
        "conv(filters=32,kernel=7,padding=valid) relu bn maxpool(stride=2) flatten fc(units=1024) relu"
    )
    assert resolve_arch("line").name == "line"
    assert resolve_arch("conv(8) gap").name == "custom"
    with pytest.raises(ValueError, match="unknown architecture preset 'cs671'.*presets: line, cs671-part1"):
        resolve_arch("cs671")


def test_arch_from_json_file(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(
        json.dumps({"layers": [{"kind": "conv", "filters": 8}, "relu", {"kind": "gap"}], "l2": 0.001})
    )
    arch = resolve_arch(str(path))
    assert [spec.kind for spec in arch.layers] == ["conv", "act", "gap"] and arch.l2 == 0.001
    with pytest.raises(ValueError, match="does not exist"):
        resolve_arch(str(tmp_path / "missing.json"))


def test_run_config_json_round_trip():
    config = RunConfig(
        data=DataConfig(images_per_class=10, split="70/10/20"),
        arch=ArchConfig(
            name="custom", layers=parse_layers("conv(8,3,padding=1) bn relu gmp"), l2=1e-4, dropout=0.2
        ),
        train=TrainConfig(epochs=4, optimizer="sgd", schedule="step"),
        head="multi",
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["arch"]["layers_text"] == "conv(filters=8,padding=1) bn relu gmp"
    assert RunConfig.from_dict(data) == config


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: TrainConfig(optimizer="adagrad"),
            "unknown optimizer 'adagrad'; choose one of sgd, adam, rmsprop",
        ),
        (lambda: TrainConfig(schedule="linear"), "unknown schedule 'linear'"),
        (lambda: TrainConfig(epochs=0), "epochs must be >= 1"),
        (lambda: TrainConfig(epochs=2, warmup_epochs=3), "warmup_epochs must be in"),
        (lambda: DataConfig(val_fraction=0.0), "best model is chosen on validation"),
        (lambda: ArchConfig(layers=["gap"], bn_layer="torch"), "bn_layer must be one of"),
        (lambda: RunConfig(head="double"), "head must be one of"),
        (lambda: RunConfig.from_dict({"train": {"epoch": 3}}), "unknown train setting"),
        (lambda: LayerSpec("conv", {"filters": 3, "kernel": -1}), "kernel must be a positive integer"),
    ],
)
def test_bad_settings_are_explained(build, message):
    with pytest.raises(ValueError, match=message):
        build()
