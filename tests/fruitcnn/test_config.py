"""The architecture and run configuration: parsing, presets, validation, round trips."""

import dataclasses
import json

import pytest

from fruitcnn.config import (
    SETTING_FIELDS,
    ArchConfig,
    DataConfig,
    LayerSpec,
    RunConfig,
    TrainConfig,
    config_from_settings,
    layers_to_text,
    parse_layers,
    preset,
    resolve_arch,
    switch_flags,
)
from fruitcnn.config.settings import SECTIONS


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


def test_repeats_groups_and_blocks_expand_to_layers():
    assert layers_to_text(parse_layers("2*[conv(8) relu] 0*[fc(4) relu] 2*maxpool gap")) == (
        "conv(filters=8) relu conv(filters=8) relu maxpool maxpool gap"
    )
    blocks = {"stage": "conv({width},{kernel}) bn relu", "pair": "stage({w},3) stage(width={w},kernel=1)"}
    assert layers_to_text(parse_layers("pair(16) 2*stage(8,5) gap", blocks)) == (
        "conv(filters=16) bn relu conv(filters=16,kernel=1) bn relu "
        "conv(filters=8,kernel=5) bn relu conv(filters=8,kernel=5) bn relu gap"
    )
    deep = preset("ece4179-deep")
    assert layers_to_text(deep.layers[:6]) == (
        "conv(filters=32,stride=2,padding=1) relu conv(filters=32,kernel=1) relu conv(filters=32) relu"
    )
    assert len(deep.layers) == 4 * 6 + 1
    assert [spec.kind for spec in resolve_arch("2*[3*[relu]]").layers] == ["act"] * 6
    assert len(resolve_arch("2*gap").layers) == 2 and len(resolve_arch("ece4179_block(8)").layers) == 6
    # Removing a block is one edit of the preset's text.
    assert len(parse_layers("ece4179_block(32) ece4179_block(64) gap")) == 2 * 6 + 1


@pytest.mark.parametrize(
    ("text", "blocks", "message"),
    [
        ("stage gap", {"stage": "conv({width})"}, r"block 'stage' needs width: call it as stage\(width\)"),
        (
            "stage(8, 3) gap",
            {"stage": "conv({width})"},
            r"block 'stage' takes at most 1 positional argument\(s\) \(width\), got \(8, 3\)",
        ),
        ("stage(depth=3) gap", {"stage": "conv({width})"}, "block 'stage' has no parameter 'depth'"),
        ("loop gap", {"loop": "loop"}, "blocks nest deeper than 16 levels"),
        ("conv({filters}) gap", None, "still holds the placeholder {filters}"),
        ("2*[conv(8) gap", None, "write a repeated group as N\\*\\[layers\\]"),
        ("gap", {"conv": "relu"}, "block name 'conv' is a layer kind"),
        ("stage(8) gap", None, "unknown layer kind 'stage'.*blocks: ece4179_block"),
        (
            "2*3*[relu] gap",
            None,
            "write one count per group and nest groups, e.g. '2\\*\\[3\\*\\[relu\\]\\]'",
        ),
        ("conv(8,3,kernel=5) gap", None, "layer 'conv': argument 'kernel' is given twice"),
        (
            "stage(8, width=16) gap",
            {"stage": "conv({width})"},
            "block 'stage': argument 'width' is given twice",
        ),
    ],
)
def test_bad_blocks_are_explained(text, blocks, message):
    with pytest.raises(ValueError, match=message):
        parse_layers(text, blocks)


def test_arch_file_may_define_blocks(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(
        json.dumps({"blocks": {"stage": "conv({f}) relu maxpool(2)"}, "layers": "stage(8) stage(16) gap"})
    )
    arch = resolve_arch(str(path))
    assert [spec.kind for spec in arch.layers] == ["conv", "act", "maxpool"] * 2 + ["gap"]


def test_settings_make_the_same_config_as_train_flags():
    config = config_from_settings(
        {"lr": 0.05, "epochs": 3, "arch": "ece4179-deep", "multihead": True, "flip": "both"}
    )
    assert (config.train.learning_rate, config.train.epochs, config.head) == (0.05, 3, "multi")
    assert config.arch.name == "ece4179-deep" and config.augment.flip == "both"
    default = config_from_settings({"dataset": "some/folder"}, image_shape=(32, 32, 3))
    assert default.arch.name == "cifar10"  # the default preset by image size, as train.py picks it
    with pytest.raises(ValueError, match="unknown setting 'learning_rate'; did you mean 'lr'"):
        config_from_settings({"learning_rate": 0.1})
    with pytest.raises(
        ValueError, match="epochs must be a whole number, got '3' \\(str\\); write it without quotes"
    ):
        config_from_settings({"epochs": "3"})


def test_the_flags_of_every_switch_give_train_py_its_value_both_ways():
    """switch_flags reads each boolean field's flag and action; train.py's own parser is the oracle."""
    import train  # the command line whose flags these are

    parser = train.build_parser()
    switches = {
        item.metadata["setting"]: item.default
        for config_class in SECTIONS.values()
        for item in dataclasses.fields(config_class)
        if "setting" in item.metadata and isinstance(item.default, bool)
    }
    assert {"normalize", "test_each_epoch", "strict"} <= set(switches)
    for name, default in [*switches.items(), ("multihead", False)]:
        for value in (True, False):
            flags = switch_flags(name, value)
            assert train._settings(parser.parse_args(flags)).get(name, default) == value, (name, flags)
            assert flags or value == default  # a flag only when the value is not the default
    assert switch_flags("normalize", False) == ["--no-normalize"] and switch_flags("normalize", True) == []
    assert switch_flags("test_each_epoch", True) == ["--test-each-epoch"]  # both ways, always written
    with pytest.raises(ValueError, match="setting 'lr' \\(--lr\\) is not a switch"):
        switch_flags("lr", True)
    with pytest.raises(ValueError, match="unknown switch 'normalise'; did you mean 'normalize'"):
        switch_flags("normalise", False)


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
        (lambda: TrainConfig(schedule="triangle"), "unknown schedule 'triangle'"),
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


def test_setting_names_come_from_the_fields_flags():
    # the table that was written by hand before the flags moved next to their fields
    written = {
        "dataset": ("data", "dataset"),
        "image_size": ("data", "image_size"),
        "images_per_class": ("data", "images_per_class"),
        "background": ("data", "background"),
        "object_masks": ("data", "object_masks"),
        "paste_on": ("data", "paste_on"),
        "cue": ("data", "cue"),
        "split": ("data", "split"),
        "val_fraction": ("data", "val_fraction"),
        "data_seed": ("data", "seed"),
        "data_dir": ("data", "data_dir"),
        "strict": ("data", "strict"),
        "stream": ("data", "stream"),
        "unpack_limits": ("data", "unpack_limits"),
        "flip": ("augment", "flip"),
        "translate": ("augment", "translate"),
        "rotate": ("augment", "rotate"),
        "color_jitter": ("augment", "color_jitter"),
        "l2": ("arch", "l2"),
        "dropout": ("arch", "dropout"),
        "bn_momentum": ("arch", "bn_momentum"),
        "bn_test_batch_stats": ("arch", "bn_batch_stats_at_inference"),
        "bn_layer": ("arch", "bn_layer"),
        "normalize": ("arch", "normalize"),
        "init": ("arch", "init"),
        "head_layers": ("arch", "head_layers"),
        "epochs": ("train", "epochs"),
        "batch_size": ("train", "batch_size"),
        "optimizer": ("train", "optimizer"),
        "lr": ("train", "learning_rate"),
        "momentum": ("train", "momentum"),
        "schedule": ("train", "schedule"),
        "warmup_epochs": ("train", "warmup_epochs"),
        "step_epochs": ("train", "step_epochs"),
        "step_factor": ("train", "step_factor"),
        "plateau_patience": ("train", "plateau_patience"),
        "plateau_factor": ("train", "plateau_factor"),
        "seed": ("train", "seed"),
        "test_each_epoch": ("train", "test_each_epoch"),
        "label_smoothing": ("train", "label_smoothing"),
        "tta": ("train", "tta"),
        "time_budget": ("train", "time_budget"),
        "weight_decay": ("train", "weight_decay"),
        "strategy": ("train", "strategy"),
        "precision": ("train", "precision"),
    }
    assert list(SETTING_FIELDS.items()) == list(written.items())  # same names, same order in messages


def test_a_non_finite_value_is_named_with_its_flag():
    with pytest.raises(ValueError, match=r"TrainConfig.learning_rate \(--lr\) must be a finite number"):
        TrainConfig(learning_rate=float("nan"))
    with pytest.raises(ValueError, match=r"DataConfig.val_fraction \(--val-fraction\) must be a finite"):
        DataConfig(val_fraction=float("inf"))
