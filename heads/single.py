"""The single softmax head: one output named ``class`` over all classes."""

from __future__ import annotations

from collections.abc import Sequence

from heads.base import HeadSpec

SINGLE_HEAD = "class"


def single_head_specs(class_names: Sequence[str]) -> list[HeadSpec]:
    """One softmax head over ``class_names`` (targets: the dataset's class labels)."""
    return [HeadSpec(SINGLE_HEAD, "softmax", tuple(class_names))]
