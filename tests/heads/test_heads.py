"""Heads: specs, targets and the aggregate accuracy against hand-computed values."""

import numpy as np
import pytest

from heads import (
    AGGREGATE,
    AggregateAccuracy,
    HeadSpec,
    head_targets,
    line_attribute_specs,
    single_head_specs,
)

VALUES = {
    "length": ["len7", "len15"],
    "width": ["w1", "w3"],
    "colour": ["red", "blue"],
    "angle": [f"ang{a:03d}" for a in range(0, 180, 15)],
}
ATTRIBUTES = ("length", "width", "angle", "colour")


def test_line_specs_kinds_and_columns():
    specs = line_attribute_specs(ATTRIBUTES, VALUES)
    assert [(s.name, s.kind, s.units, s.target_column) for s in specs] == [
        ("length", "sigmoid", 1, 0),
        ("width", "sigmoid", 1, 1),
        ("colour", "sigmoid", 1, 3),
        ("angle", "softmax", 12, 2),
    ]


def test_targets_of_four_heads():
    specs = line_attribute_specs(ATTRIBUTES, VALUES)
    attributes = np.array([[0, 1, 11, 1], [1, 0, 3, 0]])
    targets = head_targets(specs, np.array([5, 6]), attributes)
    np.testing.assert_array_equal(targets["length"], [[0.0], [1.0]])
    np.testing.assert_array_equal(targets["colour"], [[1.0], [0.0]])
    np.testing.assert_array_equal(targets["angle"], [11, 3])
    np.testing.assert_array_equal(targets[AGGREGATE], [[0, 1, 1, 11], [1, 0, 0, 3]])


def test_aggregate_accuracy_counts_only_all_right():
    metric = AggregateAccuracy([1, 1, 3])
    y_true = np.array([[1, 0, 2], [1, 0, 2], [0, 1, 0], [0, 0, 1]], "int32")
    y_pred = np.array(
        [
            [0.9, 0.2, 0.1, 0.2, 0.7],  # all right
            [0.9, 0.2, 0.7, 0.2, 0.1],  # third head wrong
            [0.4, 0.6, 0.5, 0.3, 0.2],  # all right
            [0.6, 0.1, 0.1, 0.8, 0.1],  # first head wrong
        ],
        "float32",
    )
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(0.5)
    clone = AggregateAccuracy.from_config(metric.get_config())
    assert clone.head_sizes == [1, 1, 3]


def test_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="needs the attributes length, width, colour, angle.*missing length"):
        line_attribute_specs(("width", "angle", "colour"), VALUES)
    with pytest.raises(ValueError, match="needs attribute labels"):
        head_targets(line_attribute_specs(ATTRIBUTES, VALUES), np.zeros(2), None)
    with pytest.raises(ValueError, match="needs exactly 2 classes"):
        HeadSpec("x", "sigmoid", ("a", "b", "c"))
    assert single_head_specs(["a", "b"])[0].name == "class"
