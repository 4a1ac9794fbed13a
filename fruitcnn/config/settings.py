"""Settings by name: train.py's flags and study files' entries as one vocabulary.

``SETTING_FIELDS`` maps each setting name (``lr``, ``epochs``, ``flip`` ...) to the
config field it sets; it is read from the fields' metadata (:func:`~fruitcnn.config.fields.setting_field`).
:func:`config_from_settings` turns such settings into a :class:`RunConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any

from fruitcnn.config.arch import ArchConfig, default_preset, resolve_arch
from fruitcnn.config.data import DataConfig
from fruitcnn.config.run import AugmentConfig, RunConfig, TrainConfig

# The config dataclasses that hold settings, by their RunConfig section (in the order
# their settings are listed).
SECTIONS = {"data": DataConfig, "augment": AugmentConfig, "arch": ArchConfig, "train": TrainConfig}
# Settings by their train.py flag name (without --, '-' as '_'; see setting_field) ->
# (RunConfig section, field), from the fields' metadata. The section's dataclass default
# is the flag's default; study files use the same names.
SETTING_FIELDS: dict[str, tuple[str, str]] = {
    item.metadata["setting"]: (section, item.name)
    for section, config_class in SECTIONS.items()
    for item in dataclasses.fields(config_class)
    if "setting" in item.metadata
}
# Settings that are not a single field: the architecture and the head choice.
SETTING_EXTRAS = ("arch", "multihead")


def switch_flags(name: str, value: bool) -> list[str]:
    """The train.py flags that set the switch ``name`` to ``value``, read from the field's
    flag and ``action``: a ``store_true`` flag when true, a ``store_false`` one (such as
    ``--no-normalize``) when false, otherwise ``[]`` (the default needs no flag); a
    ``BooleanOptionalAction`` one always, either way (a recipe may change its default).
    ``multihead`` (not a config field): ``--multihead`` when true."""
    if name == "multihead":
        return ["--multihead"] if value else []
    if name not in SETTING_FIELDS:
        raise ValueError(f"unknown switch {name!r}; {setting_hint(name)}train.py has no such setting.")
    section, field_name = SETTING_FIELDS[name]
    metadata = next(
        item.metadata for item in dataclasses.fields(SECTIONS[section]) if item.name == field_name
    )
    flag, action = metadata["flag"], metadata.get("action")
    if action is argparse.BooleanOptionalAction:
        return [flag if value else "--no-" + flag.removeprefix("--")]
    if action in ("store_true", "store_false"):
        return [flag] if value == (action == "store_true") else []
    raise ValueError(f"setting {name!r} ({flag}) is not a switch: it takes a value, not true or false.")


def setting_hint(name: str) -> str:
    """``did you mean 'lr'? `` for a near miss of a setting name (or a config field
    name such as ``learning_rate``), else an empty string."""
    known = [*SETTING_FIELDS, *SETTING_EXTRAS]
    by_field = {field_name: flag for flag, (_, field_name) in SETTING_FIELDS.items()}
    close = [by_field[name]] if name in by_field else difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def config_from_settings(
    settings: dict[str, Any],
    *,
    base: RunConfig | None = None,
    image_shape: tuple[int, int, int] | None = None,
    blocks: dict[str, str] | None = None,
) -> RunConfig:
    """A :class:`RunConfig` from settings named like train.py's flags.

    This is how train.py turns its flags and study files turn their entries into a
    run, so both accept the same names and values.

    Args:
        settings: ``SETTING_FIELDS`` names (``lr``, ``epochs``, ``flip`` ...) plus
            ``arch`` (preset, layer list or .json file) and ``multihead`` (bool).
        base: the run to change (default: the dataclass defaults).
        image_shape: (H, W, C) of the data; picks the default architecture when
            neither ``arch`` nor ``base`` gives one (see :func:`default_preset`).
        blocks: blocks that an ``arch`` layer list may call besides ``BLOCKS``.

    Raises:
        ValueError: an unknown name (with the closest known one) or a bad value.
    """
    known = [*SETTING_FIELDS, *SETTING_EXTRAS]
    for name in settings:
        if name not in known:
            raise ValueError(
                f"unknown setting {name!r}; {setting_hint(name)}settings are train.py's flag names with '_' "
                f"for '-': {', '.join(known)}."
            )
    if "time_budget" in settings and "epochs" in settings:
        raise ValueError(
            "give a number of epochs or a time budget, not both: with --time-budget the run plans its "
            "epochs to fill the time."
        )
    changes: dict[str, dict[str, Any]] = {"data": {}, "arch": {}, "train": {}, "augment": {}}
    for name, value in settings.items():
        if name in SETTING_FIELDS:
            section, field_name = SETTING_FIELDS[name]
            changes[section][field_name] = value
    if "epochs" in settings:  # epochs given: a base config's time budget no longer applies
        changes["train"]["time_budget"] = 0.0
    data = dataclasses.replace(base.data if base else DataConfig(), **changes["data"])
    if settings.get("arch"):
        if not isinstance(settings["arch"], str):
            raise ValueError(
                f"arch must be a preset name, layer list or .json path, got {settings['arch']!r}."
            )
        arch = resolve_arch(settings["arch"], blocks)
    elif base is not None:
        arch = base.arch
    else:
        arch = resolve_arch(default_preset(data.dataset, image_shape))
    head = base.head if base else "single"
    if "multihead" in settings:
        if not isinstance(settings["multihead"], bool):
            raise ValueError(f"multihead must be true or false, got {settings['multihead']!r}.")
        head = "multi" if settings["multihead"] else "single"
    return RunConfig(
        data=data,
        arch=dataclasses.replace(arch, **changes["arch"]),
        train=dataclasses.replace(base.train if base else TrainConfig(), **changes["train"]),
        augment=dataclasses.replace(base.augment if base else AugmentConfig(), **changes["augment"]),
        head=head,
    )
