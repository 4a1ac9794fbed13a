"""Property-based tests of the parsers of run configuration: the architecture language
(``parse_layers``/``resolve_arch``), ``RunConfig.from_dict``, ``config_from_settings``, the
unpack limits, study files (``load_study``/``study_from_dict``/``check_settings``) and data
splits (``parse_split``/``stratified_split``/``holdout``).

Whatever the input, a parser gives a result or a ValueError with a message, never another
exception type, a hang or unbounded memory (see ``bounded`` and ``isolated`` in
tests/fruitcnn/data/test_fuzz_readers.py); generated valid inputs round-trip exactly, and
accepted configurations hold only valid, finite values. Examples are derandomized;
``FRUITCNN_FUZZ_EXAMPLES=N`` runs N random ones per property. Tests marked
``xfail(strict=True, reason="bug: ...")`` fail because of a library bug.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.study.plan import check_settings, load_study, study_from_dict
from fruitcnn import config as config_module
from fruitcnn.config import (
    ACTIVATIONS,
    BN_LAYERS,
    FLIPS,
    HEADS,
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    SETTING_EXTRAS,
    SETTING_FIELDS,
    TTAS,
    ArchConfig,
    AugmentConfig,
    DataConfig,
    LayerSpec,
    RunConfig,
    TrainConfig,
    config_from_settings,
    layers_to_text,
    parse_layers,
    resolve_arch,
)
from fruitcnn.data.splits import holdout, parse_split, stratified_split
from tests.fruitcnn.data.test_fuzz_readers import bounded, fuzz, isolated_all, outcome

STUDIES = Path(__file__).resolve().parents[2] / "studies"


@contextlib.contextmanager
def in_empty_folder():
    """Run in an empty working folder (``resolve_arch`` reads ``*.json`` paths)."""
    before = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(before)


def finite_numbers(value) -> bool:
    """Whether every number in a (nested) config value is finite."""
    if isinstance(value, dict):
        return all(finite_numbers(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite_numbers(item) for item in value)
    return not isinstance(value, float) or math.isfinite(value)


# ---------------------------------------------------------------- layers

_unit = st.floats(0.0, 1.0, exclude_max=True)
_PARAMS = {
    "conv": {
        "filters": st.integers(1, 512),
        "kernel": st.integers(1, 11),
        "stride": st.integers(1, 4),
        "padding": st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 5)),
        "bias": st.sampled_from(["auto", True, False]),
    },
    "bn": {
        "momentum": st.one_of(st.none(), _unit),
        "epsilon": st.floats(1e-12, 1.0),
    },
    "act": {"fn": st.sampled_from(ACTIVATIONS)},
    "maxpool": {
        "size": st.integers(1, 5),
        "stride": st.one_of(st.none(), st.integers(1, 5)),
        "padding": st.sampled_from(["same", "valid"]),
    },
    "avgpool": {
        "size": st.integers(1, 5),
        "stride": st.one_of(st.none(), st.integers(1, 5)),
        "padding": st.sampled_from(["same", "valid"]),
    },
    "dropout": {"rate": _unit},
    "flatten": {},
    "gap": {},
    "gmp": {},
    "fc": {"units": st.integers(1, 4096)},
}
_REQUIRED = {"conv": {"filters"}, "act": {"fn"}, "dropout": {"rate"}, "fc": {"units"}}


@st.composite
def layer_specs(draw):
    kind = draw(st.sampled_from(sorted(_PARAMS)))
    names = draw(st.sets(st.sampled_from(sorted(_PARAMS[kind])))) if _PARAMS[kind] else set()
    names |= _REQUIRED.get(kind, set())
    return LayerSpec(kind, {name: draw(_PARAMS[kind][name]) for name in sorted(names)})


_layer_lists = st.lists(layer_specs(), min_size=1, max_size=8)
_separators = st.sampled_from([" ", ",", ";", ", ", " ; ", "\n", "\t", "  "])


@fuzz(80)
@given(_layer_lists, st.data())
def test_layer_lists_round_trip_through_their_text(specs, data):
    assert parse_layers(layers_to_text(specs)) == specs
    text = "".join(spec.to_text() + data.draw(_separators) for spec in specs)
    assert parse_layers(text) == specs


@st.composite
def grouped(draw, depth: int = 2):
    """(text, layers): a layer list written with ``N*layer`` and nested ``N*[...]`` groups."""
    texts, layers = [], []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["layer", "repeat", "group"] if depth else ["layer", "repeat"]))
        if kind == "layer":
            spec = draw(layer_specs())
            texts.append(spec.to_text())
            layers.append(spec)
        elif kind == "repeat":
            spec, times = draw(layer_specs()), draw(st.integers(0, 3))
            texts.append(f"{times}*{spec.to_text()}")
            layers.extend([spec] * times)
        else:
            inner_text, inner = draw(grouped(depth - 1))
            times = draw(st.integers(0, 3))
            texts.append(f"{times}{draw(st.sampled_from(['', ' ']))}*[{inner_text}]")
            layers.extend(inner * times)
    return " ".join(texts), layers


@fuzz(60)
@given(grouped(), layer_specs())
def test_groups_expand_to_their_repetitions(drawn, last):
    text, layers = drawn
    assert parse_layers(f"{text} {last.to_text()}") == [*layers, last]


@fuzz(40)
@given(_layer_lists, st.data())
def test_blocks_expand_to_their_body_with_the_arguments_filled_in(specs, data):
    """A block whose body is ``specs`` with some arguments made {placeholders}, called with
    those arguments (positionally or by name), gives ``specs``."""
    values, pieces = {}, []
    for index, spec in enumerate(specs):
        text = spec.to_text()
        written = [(name, value) for name, value in re.findall(r"(\w+)=(\d+)(?=[,)])", text)]
        if written and data.draw(st.booleans()):
            name, value = data.draw(st.sampled_from(written))
            values[f"p{index}"] = value
            text = re.sub(rf"\b{name}={value}(?=[,)])", f"{name}={{p{index}}}", text)
        pieces.append(text)
    body = " ".join(pieces)
    if data.draw(st.booleans()):
        call = ", ".join(str(value) for value in values.values())
    else:
        call = ", ".join(f"{key}={value}" for key, value in reversed(list(values.items())))
    assert parse_layers(f"stage({call})", {"stage": body}) == specs


_TOKENS = [
    *["conv", "bn", "relu", "maxpool", "avgpool", "dropout", "flatten", "gap", "gmp", "fc", "dense"],
    *["act", "tanh", "Conv2D", "ece4179_block", "stage", "other", "x"],
    *["(", ")", "[", "]", "*", ",", ";", "=", "{", "}", "{f}", "{filters}", " ", "\n"],
    *["0", "1", "2", "3", "32", "0.5", "-1", "1e3", "nan", "inf", "true", "none", "valid", "same"],
    *["padding", "stride", "kernel", "filters", "rate", "momentum", "epsilon", "bias", "size", "units", "fn"],
]
_arch_texts = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=14).map("".join),
    st.text(max_size=24),
)
_block_tables = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["stage", "other", "conv", "x y", "_b1"]),
        st.one_of(_arch_texts, st.just("conv({f}) relu"), st.just("stage(8)")),
        max_size=2,
    ),
)


def expansion(text: str, blocks) -> int:
    """An upper bound of the repetition counts written in ``text`` and ``blocks``."""
    counts = [int(n) for part in [text, *(blocks or {}).values()] for n in re.findall(r"(\d+)\s*\*", part)]
    return math.prod(counts)


def check_layers(layers) -> None:
    assert layers and all(isinstance(spec, LayerSpec) for spec in layers)
    assert [LayerSpec(spec.kind, dict(spec.params)) for spec in layers] == layers  # valid arguments
    assert parse_layers(layers_to_text(layers)) == layers
    assert finite_numbers([spec.params for spec in layers]), layers


@fuzz(160)
@given(_arch_texts, _block_tables)
def test_any_layer_text_gives_valid_layers_or_a_value_error(text, blocks):
    # Larger expansions are the bug of test_a_short_layer_text_cannot_expand_to_millions_of_layers.
    assume(expansion(text, blocks) <= 100)
    result = outcome(lambda: parse_layers(text, blocks), seconds=5, memory=1 << 30)
    if not isinstance(result, Exception):
        check_layers(result)


@fuzz(80)
@given(st.one_of(_arch_texts, st.sampled_from([*PRESETS, "line ", "cifar", "x.json", "RELU"])), _block_tables)
def test_any_arch_value_gives_an_architecture_or_a_value_error(value, blocks):
    assume(expansion(value, blocks) <= 100)
    with in_empty_folder():
        result = outcome(lambda: resolve_arch(value, blocks), seconds=5, memory=1 << 30)
    if not isinstance(result, Exception):
        assert isinstance(result, ArchConfig)
        check_layers(result.layers)


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(max_size=10),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@fuzz(60)
@given(
    st.one_of(
        _json_values, st.fixed_dictionaries({"layers": _json_values}, optional={"blocks": _json_values})
    )
)
def test_any_architecture_file_gives_an_architecture_or_a_value_error(content):
    with in_empty_folder() as folder:
        (folder / "arch.json").write_text(json.dumps(content))
        result = outcome(lambda: resolve_arch("arch.json"), seconds=5, memory=1 << 30)
    if not isinstance(result, Exception):
        check_layers(result.layers)


@pytest.mark.parametrize(
    "content",
    [5, None, {"layers": 5}, {"layers": [{"kind": []}]}, {"layers": [{"kind": "conv", "params": 5}]}],
    ids=["int", "null", "layers-int", "kind-list", "params-int"],
)
def test_malformed_architecture_files_are_a_value_error(content):
    with in_empty_folder() as folder:
        (folder / "arch.json").write_text(json.dumps(content))
        with pytest.raises(ValueError):
            resolve_arch("arch.json")


@pytest.mark.parametrize("case", ["group-overflow", "repeat-hang", "nested-groups", "block-chain"])
def test_a_short_layer_text_cannot_expand_to_millions_of_layers(children, case):
    result = children[case]
    assert result["outcome"] == "ValueError", result


@pytest.mark.parametrize(
    "text",
    [
        "conv(32, padding=true)",
        "conv(32, padding=false)",
        "bn(epsilon=inf)",
        "bn(momentum=-0.0, epsilon=1e309)",
    ],
)
def test_layer_arguments_of_the_wrong_kind_are_refused(text):
    with pytest.raises(ValueError):
        parse_layers(text)


# ---------------------------------------------------------------- RunConfig

_SECTIONS = {"data": DataConfig, "arch": ArchConfig, "train": TrainConfig, "augment": AugmentConfig}
# Float fields by section; a value of another type is the bug of test_float_settings_of_another_type...
FLOAT_FIELDS = {
    section: {item.name for item in dataclasses.fields(cls) if item.type == "float"}
    for section, cls in _SECTIONS.items()
}
FLOAT_SETTINGS = sorted(
    name for name, (section, field) in SETTING_FIELDS.items() if field in FLOAT_FIELDS[section]
)
_numbers = st.one_of(st.integers(-(2**64), 2**64), st.floats())

_finite = {"allow_nan": False, "allow_infinity": False}


@st.composite
def run_configs(draw):
    epochs = draw(st.integers(1, 500))
    bn_layer = draw(st.sampled_from(BN_LAYERS))
    return RunConfig(
        data=DataConfig(
            dataset=draw(st.text(min_size=1, max_size=12).filter(str.strip)),
            image_size=draw(st.one_of(st.none(), st.integers(1, 512))),
            images_per_class=draw(st.integers(1, 10**6)),
            split=draw(st.sampled_from(["auto", "60/40", "70/10/20", "800/100/100"])),
            val_fraction=draw(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)),
            seed=draw(st.integers(-(2**63), 2**63)),
            data_dir=draw(st.text(max_size=8)),
            strict=draw(st.booleans()),
        ),
        arch=ArchConfig(
            name=draw(st.text(max_size=8)),
            layers=draw(_layer_lists),
            l2=draw(st.floats(0.0, 1e3, **_finite)),
            dropout=draw(_unit),
            bn_momentum=draw(_unit),
            bn_batch_stats_at_inference=draw(st.booleans()) if bn_layer == "fruitcnn" else False,
            bn_layer=bn_layer,
        ),
        train=TrainConfig(
            epochs=epochs,
            batch_size=draw(st.integers(1, 4096)),
            optimizer=draw(st.sampled_from(OPTIMIZERS)),
            learning_rate=draw(st.floats(1e-9, 10.0)),
            momentum=draw(_unit),
            schedule=draw(st.sampled_from(SCHEDULES)),
            warmup_epochs=draw(st.floats(0.0, float(epochs))),
            step_epochs=draw(st.integers(1, 100)),
            step_factor=draw(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)),
            plateau_patience=draw(st.integers(1, 100)),
            plateau_factor=draw(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)),
            seed=draw(st.integers(0, 2**32)),
            test_each_epoch=draw(st.booleans()),
            label_smoothing=draw(_unit),
            tta=draw(st.sampled_from(TTAS)),
        ),
        augment=AugmentConfig(
            flip=draw(st.sampled_from(FLIPS)),
            translate=draw(st.integers(0, 64)),
            rotate=draw(st.floats(0.0, 180.0)),
            color_jitter=draw(_unit),
        ),
        head=draw(st.sampled_from(HEADS)),
    )


def json_round_trip(data):
    return json.loads(json.dumps(data, allow_nan=False))


@fuzz(60)
@given(run_configs())
def test_run_configs_round_trip_through_json(config):
    saved = json_round_trip(config.to_dict())  # allow_nan=False: a config is strict JSON
    assert RunConfig.from_dict(saved) == config
    assert saved["arch"]["layers_text"] == layers_to_text(config.arch.layers)


def check_config(config) -> None:
    """What an accepted configuration promises: valid sections, finite numbers, a round trip."""
    assert isinstance(config, RunConfig)
    assert finite_numbers(dataclasses.asdict(config)), config
    for section in (config.data, config.arch, config.train, config.augment):
        assert dataclasses.replace(section) == section  # its checks pass again
    assert RunConfig.from_dict(json_round_trip(config.to_dict())) == config


@st.composite
def damaged_config_dicts(draw):
    """A saved config with values replaced by junk, keys added or removed (sections stay dicts)."""
    data = draw(run_configs()).to_dict()
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(["data", "arch", "train", "augment", None]))
        table = data if section is None else data[section]
        kind = draw(st.sampled_from(["replace", "replace", "add", "remove", "layer"]))
        if kind == "layer" and data["arch"].get("layers"):
            layer = draw(st.sampled_from(data["arch"]["layers"]))
            key = draw(st.sampled_from(sorted(layer)))
            if key == "kind":  # a list or dict kind is the TypeError of test_malformed_architecture_files...
                layer[key] = draw(
                    st.one_of(st.text(max_size=8), st.sampled_from(sorted(_PARAMS)), _json_scalars)
                )
            else:
                layer[key] = draw(_json_values)
        elif kind == "replace" and section is not None:
            key = draw(st.sampled_from([key for key in table if key != "layers"]))
            floats = key in FLOAT_FIELDS[section]
            table[key] = draw(
                _numbers if floats else st.one_of(_json_values, st.sampled_from([math.nan, -math.inf]))
            )
        elif kind == "add":
            table[draw(st.text(max_size=8))] = draw(_json_scalars)
        elif kind == "remove" and table:
            key = draw(st.sampled_from(sorted(table)))
            if (section, key) not in ((None, "data"), (None, "arch"), (None, "train"), (None, "augment")):
                del table[key]
    return data


@fuzz(120)
@given(damaged_config_dicts())
def test_damaged_config_dicts_give_a_valid_config_or_a_value_error(data):
    result = outcome(lambda: RunConfig.from_dict(data), seconds=5, memory=1 << 30)
    if not isinstance(result, Exception):
        check_config(result)


@fuzz(40)
@given(
    st.one_of(
        _json_values,
        st.dictionaries(st.sampled_from(["data", "arch", "train", "augment", "head"]), _json_values),
    )
)
def test_any_json_config_gives_a_valid_config_or_a_value_error(data):
    result = outcome(lambda: RunConfig.from_dict(data), seconds=5, memory=1 << 30)
    if not isinstance(result, Exception):
        check_config(result)


@pytest.mark.parametrize(
    "data",
    [{"data": 5}, {"data": None}, {"train": []}, {"arch": 5}, {"arch": {"layers": 5}}, [1, 2]],
    ids=["data-int", "data-null", "train-list", "arch-int", "layers-int", "top-list"],
)
def test_config_files_of_the_wrong_shape_are_a_value_error(data):
    with pytest.raises(ValueError):
        RunConfig.from_dict(data)


_setting_names = st.one_of(
    st.sampled_from([*SETTING_FIELDS, *SETTING_EXTRAS]), st.sampled_from(["learning_rate", "lr ", "epoch"])
)
_setting_values = st.one_of(
    _json_scalars,
    st.integers(0, 64),
    st.floats(0.0, 1.0),
    st.sampled_from([*FLIPS, *OPTIMIZERS, *SCHEDULES, *TTAS, *BN_LAYERS, "60/40", "line", "cifar10", ""]),
    _arch_texts,
)


@fuzz(120)
@given(st.dictionaries(_setting_names, _setting_values, max_size=5), st.booleans())
def test_any_settings_give_a_valid_config_that_applies_them_or_a_value_error(settings, with_base):
    assume(expansion(str(settings.get("arch", "")), None) <= 100)
    assume(all(_is_number(settings[name]) for name in FLOAT_SETTINGS if name in settings))
    base = RunConfig() if with_base else None
    with in_empty_folder():
        result = outcome(lambda: config_from_settings(settings, base=base), seconds=5, memory=1 << 30)
    if isinstance(result, Exception):
        return
    check_config(result)
    for name, value in settings.items():
        if name in SETTING_FIELDS:
            section, field = SETTING_FIELDS[name]
            assert getattr(getattr(result, section), field) == value, name
    if "multihead" in settings:
        assert result.head == ("multi" if settings["multihead"] else "single")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@fuzz(20)
@given(
    st.sampled_from(FLOAT_SETTINGS),
    st.one_of(st.booleans(), st.none(), st.text(max_size=4), st.lists(st.integers(), max_size=2)),
)
def test_float_settings_of_another_type_are_a_value_error(name, value):
    with pytest.raises(ValueError):
        config_from_settings({name: value})


parse_unpack_limits = getattr(config_module, "parse_unpack_limits", None)
_needs_limits = pytest.mark.skipif(
    parse_unpack_limits is None, reason="no parse_unpack_limits in this version"
)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20}
_UNITS |= {"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}


@_needs_limits
@fuzz(60)
@given(st.integers(1, 4096), st.sampled_from(sorted(_UNITS)), st.integers(1, 64), st.integers(1, 10**4))
def test_unpack_limits_read_back_what_they_say(member, unit, total, ratio):
    text = f"member={member}{unit.upper() if member % 2 else unit}, total = {total}G,ratio={ratio}"
    limits = parse_unpack_limits(text)
    assert (limits.member, limits.total, limits.ratio) == (member * _UNITS[unit], total << 30, ratio)


_limit_texts = st.one_of(
    st.lists(
        st.tuples(
            st.sampled_from(["member", "total", "ratio", "MEMBER", "size", ""]),
            st.sampled_from(["=", "", "=="]),
            st.from_regex(r"[0-9.]{0,6}\s?[kmgtKMGTb]?i?[bB]?", fullmatch=True),
        ).map("".join),
        max_size=4,
    ).map(",".join),
    st.text(max_size=20),
)


@_needs_limits
@fuzz(80)
@given(_limit_texts)
def test_any_unpack_limits_text_gives_positive_limits_or_a_value_error(text):
    result = outcome(lambda: parse_unpack_limits(text))
    if not isinstance(result, Exception):
        assert result.member >= 1 and result.total >= 1 and 1 <= result.ratio < math.inf, (text, result)


@_needs_limits
@pytest.mark.parametrize("text", ["member=" + "9" * 400, "ratio=" + "9" * 400, "member=0.5"])
def test_unreadable_unpack_limits_are_a_value_error(text):
    with pytest.raises(ValueError):
        parse_unpack_limits(text)


# ---------------------------------------------------------------- studies

_STUDY_FILES = sorted(STUDIES.glob("*.toml"))


@pytest.mark.parametrize("path", _STUDY_FILES, ids=[path.stem for path in _STUDY_FILES])
def test_the_shipped_studies_load_and_plan_valid_runs(path):
    study = load_study(path)
    check_study(study)
    check_settings(study)


def check_study(study) -> None:
    """What a planned study promises: every combination once, in order, filled-in settings."""
    sizes = [len(parameter.labels) for parameter in study.parameters]
    assert [trial.number for trial in study.trials] == list(range(1, math.prod(sizes) + 1))
    combinations = itertools.product(*(parameter.labels for parameter in study.parameters))
    names = [parameter.name for parameter in study.parameters]
    assert [trial.labels for trial in study.trials] == [dict(zip(names, combo)) for combo in combinations]
    known = {*SETTING_FIELDS, *SETTING_EXTRAS}
    for trial in study.trials:
        assert set(trial.settings) <= known
        for value in trial.settings.values():
            assert not (isinstance(value, str) and re.search(r"\{[A-Za-z_]\w*\}", value)), trial


@st.composite
def mutated_text(draw, text: str) -> str:
    """``text`` with lines deleted, duplicated or swapped, and characters changed."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        index = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "char", "insert"]))
        if kind == "delete":
            del lines[index]
        elif kind == "duplicate":
            lines.insert(index, lines[index])
        elif kind == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
        else:
            line = lines[index]
            at = draw(st.integers(0, len(line)))
            piece = draw(
                st.sampled_from(['"', "[", "]", "{", "}", "=", ",", "0", "-", "x", "{bn}", "\\", "."])
            )
            lines[index] = line[:at] + piece + line[at + (kind == "char") :]
    return "\n".join(lines)


def check_loaded(path: Path) -> None:
    result = outcome(lambda: load_study(path), seconds=10, memory=1 << 30)
    if isinstance(result, Exception):
        return
    check_study(result)
    checked = outcome(lambda: check_settings(result), seconds=10, memory=1 << 30)
    assert checked is None or isinstance(checked, ValueError)


@fuzz(50)
@given(st.sampled_from(_STUDY_FILES), st.data())
def test_damaged_study_files_plan_valid_trials_or_give_a_value_error(path, data):
    text = data.draw(mutated_text(path.read_text(encoding="utf-8")))
    assume(expansion(text, None) <= 100 and "10*" not in text.replace(" ", ""))
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        copy.write_text(text, encoding="utf-8")
        check_loaded(copy)


@fuzz(50)
@given(st.sampled_from(_STUDY_FILES), st.data())
def test_damaged_json_study_files_plan_valid_trials_or_give_a_value_error(path, data):
    import tomllib

    text = json.dumps(tomllib.loads(path.read_text(encoding="utf-8")), indent=1, default=str)
    text = data.draw(mutated_text(text))
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / f"{path.stem}.json"
        copy.write_text(text, encoding="utf-8")
        result = outcome(lambda: load_study(copy), seconds=10, memory=1 << 30)
    if not isinstance(result, Exception):
        check_study(result)


_study_keys = st.sampled_from(["name", "description", "base", "blocks", "grid", "variants", "other"])
_settings_tables = st.dictionaries(
    st.one_of(
        st.sampled_from(["lr", "epochs", "arch", "dataset", "bn", "filters", "label", "image-size"]),
        st.text(max_size=5),
    ),
    st.one_of(_json_scalars, st.sampled_from(["conv({filters}) {bn} relu gap", "{bn}", "gap", "line"])),
    max_size=4,
)
_grid_values = st.one_of(
    st.lists(st.one_of(_json_scalars, st.sampled_from(["bn", "", "gap"])), max_size=3),
    st.dictionaries(st.text(max_size=4), _json_scalars, max_size=3),
    _json_values,
)


@fuzz(120)
@given(
    st.dictionaries(
        _study_keys,
        st.one_of(
            _json_values,
            _settings_tables,
            st.dictionaries(
                st.sampled_from(["lr", "bn", "filters", "epochs", "variant", "trial"]),
                _grid_values,
                max_size=3,
            ),
            st.lists(_settings_tables, max_size=3),
        ),
        max_size=5,
    )
)
def test_any_study_dict_plans_valid_trials_or_gives_a_value_error(data):
    result = outcome(lambda: study_from_dict(data), seconds=10, memory=1 << 30)
    if isinstance(result, Exception):
        return
    check_study(result)
    checked = outcome(lambda: check_settings(result), seconds=10, memory=1 << 30)
    assert checked is None or isinstance(checked, ValueError)


@pytest.mark.parametrize(
    "name, content",
    [
        ("study.json", "5"),
        ("study.json", "null"),
        ("study.json", "[1]"),
        ("study.json", '["name"]'),
        ("study.json", "[" * 100_000 + "]" * 100_000),
        ("study.toml", "a = " + "[" * 5_000 + "]" * 5_000),
    ],
    ids=["json-int", "json-null", "json-list", "json-list-of-name", "json-deep", "toml-deep"],
)
def test_study_files_of_the_wrong_shape_are_a_value_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError):
        load_study(path)


def test_a_study_file_that_is_not_utf8_is_named_in_the_error(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'description = "caf\xe9"\n[grid]\nlr = [0.1]\n')
    with pytest.raises(ValueError, match="latin.toml"):
        load_study(path)


def test_a_setting_given_twice_as_dash_and_underscore_is_an_error():
    with pytest.raises(ValueError):
        study_from_dict({"base": {"image-size": 32, "image_size": 64}, "grid": {"lr": [0.1]}})


@pytest.mark.parametrize("case", ["grid-of-16-million-trials", "template-bomb", "layer-count"])
def test_a_small_study_cannot_plan_without_bound(children, case):
    result = children[case]
    assert result["outcome"] == "ValueError", result


# ---------------------------------------------------------------- splits


@st.composite
def split_texts(draw):
    """(text, mode, values): percentages summing to 100, or image counts."""
    parts = draw(st.integers(2, 3))
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(1, 99), min_size=parts - 1, max_size=parts - 1, unique=True)))
        values = tuple(float(b - a) for a, b in zip([0, *cuts], [*cuts, 100]))
        mode = "fractions"
    else:
        values = tuple(float(v) for v in draw(st.lists(st.integers(1, 40), min_size=parts, max_size=parts)))
        assume(abs(sum(values) - 100) > 1e-6)
        mode = "counts"
    spaces = draw(st.sampled_from(["", " "]))
    text = f"{spaces}/{spaces}".join(f"{value:g}" for value in values)
    return text, mode, values


@fuzz(80)
@given(split_texts())
def test_splits_read_back_what_they_say(drawn):
    text, mode, values = drawn
    assert parse_split(text) == (mode, tuple(v / 100 for v in values) if mode == "fractions" else values)


_split_junk = st.one_of(
    st.lists(
        st.sampled_from(
            ["60", "40", "0", "-5", "100", "1e2", "nan", "inf", "0.5", "1_0", " ", "/", "x", "٣"]
        ),
        max_size=6,
    ).map("".join),
    st.text(max_size=12),
)


@fuzz(120)
@given(_split_junk)
def test_any_split_text_gives_a_split_or_a_value_error(text):
    result = outcome(lambda: parse_split(text))
    if not isinstance(result, Exception):
        mode, values = result
        assert len(values) in (2, 3) and all(math.isfinite(v) and v > 0 for v in values)
        if mode == "fractions":
            assert abs(sum(values) - 1.0) < 1e-6
        else:
            assert mode == "counts" and all(float(v).is_integer() for v in values)


_labels = st.lists(st.integers(0, 5), min_size=0, max_size=80).map(
    lambda labels: np.asarray(labels, np.int64)
)
_val_fractions = st.floats(0.05, 0.95)


def expected_sizes(mode, values, total, val_fraction, parts) -> list[int]:
    if mode == "counts":
        sizes = [int(v) for v in values]
    else:
        bounds = [round(sum(values[: i + 1]) * total) for i in range(len(values))]
        bounds[-1] = total
        sizes = [b - a for a, b in zip([0, *bounds], bounds)]
    if parts == 2:
        val = int(round(sizes[0] * val_fraction))
        sizes = [sizes[0] - val, val, sizes[1]]
    return sizes


@fuzz(120)
@given(_labels, split_texts(), _val_fractions, st.integers(0, 2**32))
def test_stratified_splits_are_exact_disjoint_and_seeded(labels, drawn, val_fraction, seed):
    text, mode, values = drawn
    result = outcome(lambda: stratified_split(labels, text, val_fraction=val_fraction, seed=seed))
    if isinstance(result, Exception):
        return
    parts = result
    assert all(part.dtype == np.int64 and np.all(np.diff(part) > 0) for part in parts)  # sorted, unique
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == joined.size and np.all((0 <= joined) & (joined < labels.size))
    fractions = parse_split(text)[1] if mode == "fractions" else values
    assert [part.size for part in parts] == expected_sizes(
        mode, fractions, labels.size, val_fraction, len(values)
    )
    if mode == "fractions":
        assert joined.size == labels.size  # covering
    again = stratified_split(labels, text, val_fraction=val_fraction, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@fuzz(120)
@given(
    st.lists(st.integers(1, 40), min_size=2, max_size=12).map(
        lambda sizes: np.repeat(np.arange(len(sizes)), sizes)
    ),
    split_texts().filter(lambda drawn: drawn[1] == "fractions"),
    _val_fractions,
    st.integers(0, 2**32),
)
def test_stratified_splits_hold_every_class_in_proportion(labels, drawn, val_fraction, seed):
    text = drawn[0]
    try:
        parts = stratified_split(labels, text, val_fraction=val_fraction, seed=seed)
    except ValueError:
        return
    classes = np.unique(labels)
    for part in parts:
        for label in classes:
            members = np.sum(labels == label)
            share = part.size * members / labels.size
            # the docstring's bound: within one image of a share common to all classes, which
            # itself is off the part's share by less than (classes / images) per image
            bound = 1 + classes.size * members / labels.size
            assert abs(np.sum(labels[part] == label) - share) < bound, (label, part.size)


@fuzz(80)
@given(_labels, st.floats(0.01, 0.99), st.integers(0, 2**32))
def test_holdout_keeps_every_image_once(labels, fraction, seed):
    result = outcome(lambda: holdout(labels, fraction, seed=seed))
    if isinstance(result, Exception):
        return
    kept, held = result
    assert held.size == int(round(labels.size * fraction)) and kept.size + held.size == labels.size
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(labels.size))


def test_bounded_catches_a_hang():
    """The limit the properties above rely on does stop a loop."""
    with pytest.raises(AssertionError, match="time limit"), bounded(seconds=0.2):
        while True:
            pass


# ---------------------------------------------------------------- isolated cases

_PARSE = "from fruitcnn.config import parse_layers"
_STUDY = "from app.study.plan import check_settings, study_from_dict"
_CHAIN = {f"b{i}": f"10*b{i + 1}" for i in range(9)} | {"b9": "relu"}
# The bombs and hangs, each run in a child of its own (see ``isolated``), all started together.
CHILDREN = {
    "group-overflow": dict(setup=_PARSE, call="parse_layers('99999999999999999999*[relu]')"),
    "repeat-hang": dict(setup=_PARSE, call="parse_layers('99999999999999999999*relu')"),
    "nested-groups": dict(setup=_PARSE, call="parse_layers('1000*[1000*[1000*[relu]]]')"),
    "block-chain": dict(setup=_PARSE, call=f"parse_layers('b0', {_CHAIN!r})"),
    "grid-of-16-million-trials": dict(
        setup=_STUDY,
        call="study_from_dict({'grid': {f'p{i}': list(range(8)) for i in range(8)}, "
        "'base': {'arch': ' '.join('conv({p%d})' % i for i in range(8))}})",
    ),
    "template-bomb": dict(
        setup=_STUDY,
        call="study_from_dict({'base': {'arch': '{a}' * 100, 'a': '{b}' * 100, 'b': '{c}' * 100, "
        "'c': '{d}' * 100, 'd': 'relu ' * 20}, 'grid': {'lr': [0.1]}})",
    ),
    "layer-count": dict(
        setup=_STUDY,
        call="check_settings(study_from_dict({'base': {'arch': '{n}*[relu] gap'}, 'grid': {'n': [10**7]}}))",
    ),
}


@pytest.fixture(scope="module")
def children():
    """The outcome of every case of ``CHILDREN``."""
    if not sys.platform.startswith("linux"):
        pytest.skip("address-space limits are measured on Linux")
    return isolated_all(CHILDREN)
