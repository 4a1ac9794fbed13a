"""The four heads of the line dataset, trained end to end on one feature extractor.

``length``, ``width`` and ``colour`` have two values each, so each is one sigmoid
unit (binary cross-entropy); ``angle`` has twelve and is a softmax. The columns of
the dataset's attribute matrix are ``length, width, angle, colour``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from heads.base import HeadSpec

# Head order of the model outputs; the angle head comes last so the aggregate
# prediction vector reads length, width, colour, angle(12).
LINE_HEADS = ("length", "width", "colour", "angle")


def line_attribute_specs(
    attribute_names: Sequence[str], attribute_values: Mapping[str, Sequence[str]]
) -> list[HeadSpec]:
    """Specs of the four line heads.

    Args:
        attribute_names: the dataset's attribute columns, in order.
        attribute_values: for each attribute, the names of its values.

    Raises:
        ValueError: when the dataset does not have the four line attributes.
    """
    missing = [name for name in LINE_HEADS if name not in attribute_names]
    if missing:
        raise ValueError(
            f"the four-head model needs the attributes {', '.join(LINE_HEADS)}; this "
            f"dataset has {', '.join(attribute_names) or 'none'} (missing "
            f"{', '.join(missing)}). Use the line dataset, or drop --multihead."
        )
    specs = []
    for name in LINE_HEADS:
        values = tuple(attribute_values[name])
        kind = "sigmoid" if len(values) == 2 else "softmax"
        specs.append(HeadSpec(name, kind, values, list(attribute_names).index(name)))
    return specs
