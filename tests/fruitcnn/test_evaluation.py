"""Evaluation numbers against hand-computed values and brute-force oracles."""

import keras
import numpy as np
import pytest

from fruitcnn import evaluation
from heads import HeadSpec, MacroF1

# Ten images, five classes. Class 3 is never predicted (precision 0/0), class 4 is
# neither present nor predicted (left out of the macro average).
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
PREDICTIONS = np.array([0, 0, 1, 1, 1, 2, 0, 2, 2, 0])
NAMES = ("a", "b", "c", "d", "e")


def _result(labels=LABELS, predictions=PREDICTIONS, names=NAMES, confidence=None):
    probabilities = np.full((len(labels), len(names)), 0.0, np.float32)
    confidence = np.full(len(labels), 0.9) if confidence is None else confidence
    probabilities[np.arange(len(labels)), predictions] = confidence
    spare = (np.asarray(predictions) + 1) % len(names)
    probabilities[np.arange(len(labels)), spare] = 1 - confidence
    return evaluation.evaluate_head(HeadSpec("class", "softmax", names), probabilities, labels)


def test_confusion_matrix_and_per_class_scores_match_hand_computation():
    result = _result()
    expected = np.zeros((5, 5), int)
    expected[0] = [2, 1, 0, 0, 0]
    expected[1] = [0, 2, 0, 0, 0]
    expected[2] = [1, 0, 1, 0, 0]
    expected[3] = [1, 0, 2, 0, 0]
    np.testing.assert_array_equal(result.confusion, expected)
    scores = result.scores.set_index("class")
    assert list(scores["support"]) == [3, 2, 2, 3, 0]
    assert list(scores["predicted"]) == [4, 3, 3, 0, 0]
    np.testing.assert_allclose(scores["precision"], [2 / 4, 2 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(scores["recall"], [2 / 3, 1, 1 / 2, 0, 0])
    # F1 = 2PR / (P + R); class d has P = R = 0, so 0/0, taken as 0
    np.testing.assert_allclose(scores["f1"], [4 / 7, 4 / 5, 2 / 5, 0, 0])
    assert result.accuracy == pytest.approx(0.5)


def test_macro_micro_and_weighted_averages_match_hand_computation():
    averages = _result().averages
    # macro over a, b, c, d (e is neither present nor predicted)
    assert averages.loc["macro", "precision"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 3 + 0) / 4)
    assert averages.loc["macro", "recall"] == pytest.approx((2 / 3 + 1 + 1 / 2 + 0) / 4)
    assert averages.loc["macro", "f1"] == pytest.approx((4 / 7 + 4 / 5 + 2 / 5 + 0) / 4)
    # micro pools the images: every measure equals accuracy for one label per image
    for measure in ("precision", "recall", "f1"):
        assert averages.loc["micro", measure] == pytest.approx(0.5)
    # weighted by support 3, 2, 2, 3
    assert averages.loc["weighted", "precision"] == pytest.approx((3 / 2 + 4 / 3 + 2 / 3) / 10)
    assert averages.loc["weighted", "recall"] == pytest.approx((2 + 2 + 1) / 10)
    assert averages.loc["weighted", "f1"] == pytest.approx((3 * 4 / 7 + 2 * 4 / 5 + 2 * 2 / 5) / 10)
    assert list(averages.index) == ["macro", "micro", "weighted"]
    assert set(averages["support"]) == {10}


def test_macro_f1_metric_equals_the_evaluation_and_keeps_the_confusion_matrix():
    metric = MacroF1(5, head="class")
    one_hot = np.eye(5, dtype=np.float32)[PREDICTIONS]
    metric.update_state(LABELS[:4], one_hot[:4])  # two batches accumulate
    metric.update_state(LABELS[4:], one_hot[4:])
    assert float(metric.result()) == pytest.approx((4 / 7 + 4 / 5 + 2 / 5 + 0) / 4, abs=1e-6)
    np.testing.assert_array_equal(metric.confusion, _result().confusion)
    clone = MacroF1.from_config(metric.get_config())
    assert (clone.num_classes, clone.sigmoid, clone.head) == (5, False, "class")
    metric.reset_state()
    assert metric.confusion.sum() == 0 and float(metric.result()) == 0.0


def test_sigmoid_heads_are_two_class_heads_with_the_training_threshold():
    spec = HeadSpec("colour", "sigmoid", ("red", "blue"))
    outputs = np.array([[0.2], [0.5], [0.51], [0.9]], np.float32)
    probabilities = evaluation.head_probabilities(outputs, spec)
    np.testing.assert_allclose(probabilities, [[0.8, 0.2], [0.5, 0.5], [0.49, 0.51], [0.1, 0.9]], rtol=1e-6)
    result = evaluation.evaluate_head(spec, probabilities, np.array([0, 0, 1, 1]))
    # 0.5 is class 0, as for keras.metrics.BinaryAccuracy (y_pred > 0.5)
    np.testing.assert_array_equal(result.predictions, [0, 0, 1, 1])
    binary = keras.metrics.BinaryAccuracy()
    binary.update_state(np.array([[0], [0], [1], [1]]), outputs)
    assert result.accuracy == pytest.approx(float(binary.result()))
    metric = MacroF1(2, sigmoid=True)
    metric.update_state(np.array([[0], [0], [1], [1]], np.float32), outputs)
    np.testing.assert_array_equal(metric.confusion, result.confusion)


def test_most_confident_images_are_the_most_confident():
    rng = np.random.default_rng(7)
    count, classes = 400, 6
    logits = rng.normal(size=(count, classes)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, classes, count)
    names = tuple(f"c{index}" for index in range(classes))
    result = evaluation.evaluate_head(
        HeadSpec("class", "softmax", names), probabilities.astype(np.float32), labels
    )
    for correct in (True, False):
        chosen = evaluation.most_confident(result, 5, correct=correct)
        for index in range(classes):
            # brute force: every image of the class with the right outcome, sorted by hand
            pool = [
                (-float(probabilities[image].max()), image)
                for image in range(count)
                if labels[image] == index and (probabilities[image].argmax() == index) == correct
            ]
            expected = [image for _, image in sorted(pool)[:5]]
            assert list(chosen[index]) == expected
            assert all(result.correct[image] == correct for image in chosen[index])


def test_most_confident_keeps_image_order_on_ties_and_handles_empty_classes():
    result = _result(confidence=np.array([0.7, 0.9, 0.9, 0.9, 0.9, 0.6, 0.9, 0.9, 0.8, 0.9]))
    right = evaluation.most_confident(result, 2, correct=True)
    assert list(right[0]) == [1, 0] and list(right[1]) == [3, 4] and list(right[3]) == []
    wrong = evaluation.most_confident(result, 5, correct=False)
    assert list(wrong[3]) == [7, 9, 8]  # 0.9, 0.9 (image order), then 0.8
    assert list(wrong[4]) == []
    with pytest.raises(ValueError, match="at least 1"):
        evaluation.most_confident(result, 0, correct=True)


def test_failure_combinations_count_every_wrong_image_once():
    def head(name, correct):
        correct = np.asarray(correct, bool)
        labels = np.zeros(len(correct), int)
        predictions = np.where(correct, 0, 1)
        return _result(labels, predictions, names=(f"{name}0", f"{name}1"))

    results = {
        "length": head("length", [1, 0, 1, 1, 0, 1, 1, 1]),
        "width": head("width", [1, 1, 1, 1, 0, 1, 1, 1]),
        "angle": head("angle", [1, 0, 0, 0, 0, 1, 1, 0]),
    }
    table = evaluation.failure_combinations(results)
    assert list(table["failing heads"]) == ["angle", "length + angle", "length + width + angle"]
    assert list(table["images"]) == [3, 1, 1]
    np.testing.assert_allclose(table["share of images"], [3 / 8, 1 / 8, 1 / 8])
    np.testing.assert_allclose(table["share of errors"], [3 / 5, 1 / 5, 1 / 5])
    split = evaluation.SplitResult("test", results, table)
    assert split.accuracy == pytest.approx(3 / 8)  # images 0, 5 and 6 have every head right


def test_most_confused_pairs_and_confusion_order():
    pairs = evaluation.confused_pairs(_result(), 3)
    assert list(zip(pairs["true"], pairs["predicted"], pairs["images"])) == [
        ("d", "c", 2),
        ("a", "b", 1),
        ("c", "a", 1),
    ]
    assert pairs["share of true class"].iloc[0] == pytest.approx(2 / 3)
    # classes 0<->3 and 1<->4 are confused: the confusion order puts each pair side by side
    confusion = np.diag([50, 50, 50, 50, 50, 50])
    confusion[0, 3] = confusion[3, 0] = 9
    confusion[1, 4] = confusion[4, 1] = 7
    order = list(evaluation.confusion_order(confusion, "confusion"))
    assert sorted(order) == list(range(6))
    assert abs(order.index(0) - order.index(3)) == 1 and abs(order.index(1) - order.index(4)) == 1
    assert list(evaluation.confusion_order(confusion, "classes")) == list(range(6))
    assert list(evaluation.confusion_order(np.diag([5, 5, 5]), "confusion")) == [0, 1, 2]
    with pytest.raises(ValueError, match="'classes' or 'confusion'"):
        evaluation.confusion_order(confusion, "alphabet")


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.4"):
        evaluation.confusion_matrix(np.array([0, 5]), np.array([0, 1]), 5)
    with pytest.raises(ValueError, match="3 classes, but the model output has shape"):
        evaluation.head_probabilities(np.zeros((4, 2)), HeadSpec("class", "softmax", ("a", "b", "c")))


def test_predictor_matches_keras_predict_and_averages_the_mirror_for_flip_tta():
    inputs = keras.Input((6, 5, 3), name="image")
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    logits = keras.layers.Dense(3, name="class_logits")(flat)
    model = keras.Model(inputs, {"class": keras.layers.Softmax(name="class")(logits)})
    spec = HeadSpec("class", "softmax", ("a", "b", "c"))
    images = np.random.default_rng(1).integers(0, 256, (23, 6, 5, 3), dtype=np.uint8)
    expected = model.predict(images.astype(np.float32), verbose=0)["class"]
    for batch_size in (4, 23, 64):  # any batch size, the last batch smaller
        got = evaluation.predict(model, images, [spec], batch_size=batch_size)["class"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    mirrored = model.predict(images[:, :, ::-1].astype(np.float32), verbose=0)["class"]
    flip = evaluation.predict(model, images, [spec], batch_size=8, tta="flip")["class"]
    np.testing.assert_allclose(flip, (expected + mirrored) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        evaluation.predict(model, images.astype(np.float32), [spec], batch_size=8)


def test_a_seeded_sample_is_reproducible_and_carries_each_heads_truth(small_line):
    from heads import line_attribute_specs, single_head_specs

    split = small_line.test
    one = evaluation.seeded_sample(split, single_head_specs(small_line.class_names), 10, seed=5)
    again = evaluation.seeded_sample(split, single_head_specs(small_line.class_names), 10, seed=5)
    other = evaluation.seeded_sample(split, single_head_specs(small_line.class_names), 10, seed=6)
    np.testing.assert_array_equal(one.indices, again.indices)
    assert not np.array_equal(one.indices, other.indices)
    assert len(set(one.indices)) == 10 and np.all(np.diff(one.indices) > 0)
    np.testing.assert_array_equal(one.images, split.images[one.indices])
    np.testing.assert_array_equal(one.truth["class"], split.labels[one.indices])
    np.testing.assert_array_equal(one.masks, split.masks[one.indices])
    specs = line_attribute_specs(small_line.attribute_names, small_line.attribute_values)
    four = evaluation.seeded_sample(split, specs, 10, seed=5)
    np.testing.assert_array_equal(four.indices, one.indices)
    for spec in specs:
        np.testing.assert_array_equal(
            four.truth[spec.name], split.attributes[one.indices, spec.target_column]
        )
        assert four.truth[spec.name].dtype == np.int64
    whole = evaluation.seeded_sample(split, specs, len(split) + 5)
    np.testing.assert_array_equal(whole.indices, np.arange(len(split)))
    with pytest.raises(ValueError, match="at least 1 image, got 0"):
        evaluation.sample_indices(len(split), 0)
