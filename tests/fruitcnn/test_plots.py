"""Figures: the drawn data is the data given, and large class counts stay legible."""

import io

import numpy as np
import pytest
from PIL import Image

from fruitcnn.plots import results as plots

HISTORY = [
    {"epoch": 1, "elapsed_s": 10.0, "train_loss": 2.0, "val_loss": 1.5, "test_loss": "",
     "train_accuracy": 0.3, "val_accuracy": 0.5, "test_accuracy": ""},
    {"epoch": 2, "elapsed_s": 25.0, "train_loss": 1.0, "val_loss": 0.9, "test_loss": 0.95,
     "train_accuracy": 0.6, "val_accuracy": 0.7, "test_accuracy": 0.68},
]  # fmt: skip


def _lines(axis):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.lines}


def test_learning_curves_draw_the_history_against_epochs_or_time():
    figure = plots.learning_curves(HISTORY, x="epoch", best_epoch=2)
    loss, accuracy = figure.axes
    lines = _lines(accuracy)
    assert lines["train"] == ([1.0, 2.0], [0.3, 0.6])
    assert lines["validation"] == ([1.0, 2.0], [0.5, 0.7])
    assert lines["test"][1][1] == 0.68 and np.isnan(lines["test"][1][0])  # not evaluated in epoch 1
    assert _lines(loss)["validation"][1] == [1.5, 0.9]
    timed = plots.learning_curves(HISTORY, x="time")
    assert _lines(timed.axes[0])["train"][0] == [10.0, 25.0]
    assert timed.axes[0].get_xlabel() == "wall-clock time since the start (s)"
    long_run = [dict(row, elapsed_s=row["elapsed_s"] * 60) for row in HISTORY]
    assert _lines(plots.learning_curves(long_run, x="time").axes[0])["train"][0] == [10.0, 25.0]  # minutes
    with pytest.raises(ValueError, match="no finished epoch"):
        plots.learning_curves([])
    with pytest.raises(ValueError, match="'epoch' or 'time'"):
        plots.learning_curves(HISTORY, x="step")


def test_multi_head_curves_have_a_panel_per_head_accuracy():
    rows = [dict(row, val_angle_accuracy=0.4 + 0.1 * index, test_angle_accuracy=0.5) for index, row in
            enumerate(HISTORY)]  # fmt: skip
    figure = plots.learning_curves(rows, heads=["angle"])
    assert len(figure.axes) == 3
    assert _lines(figure.axes[2])["angle (val)"][1] == [0.4, 0.5]


def test_confusion_figure_shows_the_matrix_in_the_given_order():
    confusion = np.array([[5, 1, 0], [0, 3, 3], [2, 0, 0]])
    names = ["a", "b", "c"]
    figure = plots.confusion_figure(confusion, names, order=[2, 0, 1])
    image = figure.axes[0].images[0].get_array()
    np.testing.assert_array_equal(image, confusion[np.ix_([2, 0, 1], [2, 0, 1])])
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == ["c", "a", "b"]
    normalised = plots.confusion_figure(confusion, names, normalise=True).axes[0].images[0].get_array()
    np.testing.assert_allclose(normalised, [[5 / 6, 1 / 6, 0], [0, 0.5, 0.5], [1, 0, 0]])
    texts = {text.get_text() for text in figure.axes[0].texts}
    assert {"5", "3", "2"} <= texts  # few classes: the counts are written in the cells


def test_label_size_falls_from_few_to_120_classes():
    assert plots._label_points(5) == plots._label_points(12) == plots.LABEL_POINTS_MAX
    assert plots._label_points(66) == pytest.approx((plots.LABEL_POINTS_MAX + plots.LABEL_POINTS_MIN) / 2)
    assert plots._label_points(120) == plots._label_points(500) == plots.LABEL_POINTS_MIN


def test_class_names_with_dollars_are_drawn_as_text():
    names = ["x $\\frac$", "price $5 and $6", "c"]
    figure = plots.confusion_figure(np.eye(3, dtype=int), names, title="a $title$")
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == names
    assert plots.png_bytes(figure)[:4] == b"\x89PNG"  # matplotlib's math parser would raise


def test_confusion_figure_of_114_classes_keeps_labels_legible():
    count = 114
    names = [f"Fruit variety number {index} with a long name" for index in range(count)]
    figure = plots.confusion_figure(np.eye(count, dtype=int) * 10, names)
    labels = figure.axes[0].get_xticklabels()
    assert len(labels) == count and not figure.axes[0].texts  # no cell numbers at this size
    assert labels[0].get_fontsize() == pytest.approx(5.22, abs=0.01)  # near the 5 pt of 120 classes
    assert max(len(label.get_text()) for label in labels) <= plots.LABEL_CHARS
    # every class gets a cell of at least 1.5 label heights
    width_inches = figure.get_size_inches()[0] * figure.axes[0].get_position().width
    assert width_inches / count * 72 >= 1.5 * plots.LABEL_POINTS_MIN - 1e-6
    png = Image.open(io.BytesIO(plots.png_bytes(figure, tight=False)))
    assert png.size[0] > 1000


def test_confident_grid_places_each_chosen_image_in_its_cell():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    rows = [
        plots.GridRow("cat $x$", [(3, 0.99), (5, 0.9)], [(7, "dog with a very long breed name", 0.8)]),
        plots.GridRow("dog", [], []),
    ]
    figure = plots.confident_grid(images, rows, columns=2, title="t")
    mosaic = figure.axes[0].images[0].get_array()
    cell, border = plots.GRID_CELL, plots.GRID_BORDER
    top = plots.GRID_HEADER + plots.GRID_CAPTION  # the caption band of row 0
    first = mosaic[top + border : top + border + cell, border : border + cell]
    np.testing.assert_array_equal(first, plots._thumbnail(images[3], cell))
    assert tuple(mosaic[top, 0]) == plots.GRID_COLOURS[0]  # green frame: right
    pitch = cell + 2 * border + plots.GRID_SPACING_X
    wrong_left = 2 * pitch + plots.GRID_GAP
    np.testing.assert_array_equal(
        mosaic[top + border : top + border + cell, wrong_left + border : wrong_left + border + cell],
        plots._thumbnail(images[7], cell),
    )
    assert tuple(mosaic[top, wrong_left]) == plots.GRID_COLOURS[1]  # red frame: wrong
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert "0.990" in texts and "no correct image" in texts and "no mistake" in texts
    wrong_caption = next(text for text in texts if text.startswith("dog with"))
    # the predicted class is shortened to fit the cell, the probability on its own line
    name, probability = wrong_caption.split("\n")
    assert name.endswith("\u2026") and probability == "0.800"
    assert len(name) == plots._caption_chars(100) == 20
    assert "cat $x$" in texts  # drawn as text, not as math: the PNG renders
    assert plots.png_bytes(figure, tight=False)[:4] == b"\x89PNG"


def test_thumbnails_enlarge_small_images_sharply_and_keep_the_aspect():
    grey = np.arange(4, dtype=np.uint8).reshape(2, 2, 1) * 60
    big = plots._thumbnail(grey, 8)
    assert big.shape == (8, 8, 3)
    np.testing.assert_array_equal(big[:4, :4], 0)  # each pixel becomes a 4x4 block
    np.testing.assert_array_equal(big[4:, 4:], 180)
    wide = plots._thumbnail(np.zeros((2, 4, 3), np.uint8), 8)
    assert (wide[:2] == 255).all() and (wide[2:6] == 0).all()  # letterboxed in white
