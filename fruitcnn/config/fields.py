"""What every config dataclass shares: its fields' train.py flags and the type checks.

A field that train.py offers as a flag is declared with :func:`setting_field`, which
keeps the flag, its help text and its argparse options (``metavar``, ``choices``,
``type``, ``action``) in the field's ``metadata``. train.py builds its argument groups
from that metadata, and ``SETTING_FIELDS`` (the names study files use) is derived from
it, so a setting is declared once, next to its field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

_TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}


def setting_field(default: Any, flag: str, help_text: str, *, setting: str = "", **options: Any) -> Any:
    """A dataclass field that train.py offers as ``flag``.

    Args:
        default: the field's default (also the flag's, shown by ``--help``).
        flag: the command-line flag, e.g. ``--lr``.
        help_text: the flag's help text, without its default.
        setting: the setting name of study files and ``config_from_settings``
            (default: the flag without ``--``, ``-`` as ``_``; e.g. ``lr``).
        **options: ``add_argument`` options: ``metavar``, ``choices``, ``type``,
            ``action``; ``shown_default``: the words ``--help`` shows as the
            default instead of the value (None: no default shown); and
            ``listed_after``: the flag ``--help`` lists this one after (default:
            in field order; a field appended to a saved config keeps its place).
    """
    name = setting or flag.removeprefix("--").replace("-", "_")
    return dataclasses.field(
        default=default, metadata={"flag": flag, "setting": name, "help": help_text, **options}
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_field_types(instance: Any) -> None:
    """Reject values of the wrong type (e.g. from a hand-edited JSON file) by name."""
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        expected = item.type
        if expected == "float" and _is_number(value):
            if not math.isfinite(value):
                raise ValueError(
                    f"{_field_words(instance, item.name)} must be a finite number, got {value!r}; "
                    "NaN and infinity would make every step of training meaningless."
                )
            setattr(instance, item.name, float(value))
            continue
        ok = {
            "float": _is_number(value),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(expected, True)
        if not ok:
            wanted = _TYPE_WORDS.get(expected, expected)
            hint = "; write it without quotes" if isinstance(value, str) else ""
            raise ValueError(
                f"{type(instance).__name__}.{item.name} must be {wanted}, got {value!r} "
                f"({type(value).__name__}){hint}."
            )


def _field_words(instance: Any, name: str) -> str:
    """``TrainConfig.learning_rate (--lr)``: the field and, when there is one, its flag."""
    flag = next(item.metadata.get("flag") for item in dataclasses.fields(instance) if item.name == name)
    return f"{type(instance).__name__}.{name}{f' ({flag})' if flag else ''}"


def _known_fields(cls, data: dict[str, Any], section: str) -> dict[str, Any]:
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown {section} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}."
        )
    return data
