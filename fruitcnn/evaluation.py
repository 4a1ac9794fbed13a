"""Evaluation of a trained model: predictions, confusion matrices, per-class scores,
the most confident right and wrong images, and the failures of multi-head models.

Computation only: :mod:`fruitcnn.plots` draws and
:mod:`app.report` writes. :func:`predict` runs a model over images;
:func:`evaluate_split` turns probabilities and targets into a :class:`SplitResult`.

Conventions (those of scikit-learn's ``zero_division=0``):

* precision of a class that was never predicted is 0 (0/0), recall of a class absent
  from the split is 0, and F1 is 0 when precision + recall is 0;
* the macro average is the plain mean over the classes that occur in the split's
  targets or predictions (a class absent from both says nothing about the model);
  the weighted average weighs every class by its support; the micro average pools all
  images, so for one label per image its precision, recall and F1 all equal accuracy.

Sigmoid heads (one unit, two classes) are evaluated as two-class softmax heads: the
probability of class 1 is the unit's output and class 0 gets one minus it, so a
prediction is class 1 exactly when the output exceeds 0.5, as in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import tensorflow as tf

from heads import HeadSpec, head_targets

# Columns of the per-class table and rows of the averages table.
SCORE_COLUMNS = ("class", "support", "predicted", "correct", "precision", "recall", "f1")
AVERAGES = ("macro", "micro", "weighted")
# Join of head names in the failure-combination table.
HEAD_JOIN = " + "


@dataclass(frozen=True)
class HeadResult:
    """One head evaluated on one split.

    Attributes:
        head: the head name (``class`` for a single-head model).
        class_names: the head's classes, by index.
        labels: int (N,) true classes.
        probabilities: float32 (N, K) class probabilities (two columns for sigmoid heads).
        confusion: int64 (K, K) counts, rows true class, columns predicted class.
        scores: per-class table (``SCORE_COLUMNS``), one row per class in class order.
        averages: macro, micro and weighted precision/recall/F1 (index ``AVERAGES``).
    """

    head: str
    class_names: tuple[str, ...]
    labels: np.ndarray
    probabilities: np.ndarray
    confusion: np.ndarray
    scores: pd.DataFrame
    averages: pd.DataFrame

    @cached_property
    def predictions(self) -> np.ndarray:
        """Predicted class of every image (highest probability; ties: lowest index)."""
        return np.argmax(self.probabilities, axis=1)

    @cached_property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted class of every image."""
        return np.max(self.probabilities, axis=1)

    @cached_property
    def correct(self) -> np.ndarray:
        """Whether each image is classified right."""
        return self.predictions == self.labels

    @property
    def accuracy(self) -> float:
        """Share of images classified right (0 for an empty split)."""
        return float(self.correct.mean()) if len(self.labels) else 0.0


@dataclass(frozen=True)
class SplitResult:
    """Every head evaluated on one split.

    Attributes:
        split: ``train``, ``val`` or ``test``.
        heads: results by head name, in the model's head order.
        failures: multi-head models only: one row per combination of failing heads
            (``failing heads``, ``images``, ``share of images``, ``share of errors``),
            most frequent first; None for one head.
    """

    split: str
    heads: dict[str, HeadResult]
    failures: pd.DataFrame | None = None

    @property
    def all_right(self) -> np.ndarray:
        """Whether every head is right, per image."""
        return np.logical_and.reduce([result.correct for result in self.heads.values()])

    @property
    def accuracy(self) -> float:
        """Accuracy; for several heads the aggregate (all heads right)."""
        right = self.all_right
        return float(right.mean()) if right.size else 0.0

    @property
    def images(self) -> int:
        """Number of images evaluated."""
        return int(next(iter(self.heads.values())).labels.shape[0])


def head_probabilities(outputs: np.ndarray, spec: HeadSpec) -> np.ndarray:
    """A head's model output as (N, K) class probabilities (sigmoid: [1 - p, p])."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if spec.kind == "sigmoid":
        positive = outputs.reshape(-1)
        return np.stack([1.0 - positive, positive], axis=1)
    if outputs.ndim != 2 or outputs.shape[1] != len(spec.class_names):
        raise ValueError(
            f"head {spec.name!r} has {len(spec.class_names)} classes, but the model output has shape "
            f"{outputs.shape}; was the model trained on other classes?"
        )
    return outputs


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in 0..{num_classes - 1}, got values from {values.min()} to {values.max()}."
            )
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 0.0)


def class_scores(confusion: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Per-class support, predictions, precision, recall and F1 of a confusion matrix."""
    confusion = np.asarray(confusion, np.int64)
    correct = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _ratio(correct, predicted)
    recall = _ratio(correct, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return pd.DataFrame(
        {
            "class": list(class_names),
            "support": support,
            "predicted": predicted,
            "correct": correct,
            "precision": precision,
            "recall": recall,
            "f1": f1,
        },
        columns=list(SCORE_COLUMNS),
    )


def average_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Macro, micro and weighted precision, recall and F1 of a per-class table."""
    present = (scores["support"] > 0) | (scores["predicted"] > 0)
    rows = {}
    if present.any():
        rows["macro"] = scores.loc[present, ["precision", "recall", "f1"]].mean().to_numpy()
    else:
        rows["macro"] = np.zeros(3)
    total_correct, total = scores["correct"].sum(), scores["support"].sum()
    micro_precision = float(_ratio(total_correct, scores["predicted"].sum()))
    micro_recall = float(_ratio(total_correct, total))
    micro_f1 = float(_ratio(2 * micro_precision * micro_recall, micro_precision + micro_recall))
    rows["micro"] = np.array([micro_precision, micro_recall, micro_f1])
    weights = scores["support"].to_numpy(np.float64)
    if weights.sum() > 0:
        rows["weighted"] = (scores[["precision", "recall", "f1"]].to_numpy() * weights[:, None]).sum(
            axis=0
        ) / weights.sum()
    else:
        rows["weighted"] = np.zeros(3)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["precision", "recall", "f1"])
    table["support"] = int(total)
    return table.loc[list(AVERAGES)]


def evaluate_head(spec: HeadSpec, probabilities: np.ndarray, labels: np.ndarray) -> HeadResult:
    """Confusion matrix and scores of one head from its probabilities and true classes."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if probabilities.shape[0] != labels.shape[0]:
        raise ValueError(
            f"head {spec.name!r}: {probabilities.shape[0]} predictions for {labels.shape[0]} labels."
        )
    count = len(spec.class_names)
    confusion = confusion_matrix(labels, np.argmax(probabilities, axis=1), count)
    scores = class_scores(confusion, spec.class_names)
    return HeadResult(
        spec.name, tuple(spec.class_names), labels, probabilities, confusion, scores, average_scores(scores)
    )


def failure_combinations(results: Mapping[str, HeadResult]) -> pd.DataFrame:
    """How often each combination of heads is wrong together, most frequent first.

    Every misclassified image counts once, under the exact set of heads it got wrong
    (``angle``, ``angle + width`` ...); ties in count are ordered by fewer heads,
    then by head order.
    """
    names = list(results)
    wrong = np.stack([~results[name].correct for name in names], axis=1)
    total = wrong.shape[0]
    failed = wrong.any(axis=1)
    errors = int(failed.sum())
    patterns, counts = np.unique(wrong[failed], axis=0, return_counts=True)
    rows = []
    for pattern, count in zip(patterns, counts):
        heads = [name for name, bad in zip(names, pattern) if bad]
        order_key = (-int(count), len(heads), [names.index(name) for name in heads])
        rows.append((order_key, HEAD_JOIN.join(heads), int(count)))
    rows.sort(key=lambda row: row[0])
    return pd.DataFrame(
        {
            "failing heads": [row[1] for row in rows],
            "images": [row[2] for row in rows],
            "share of images": [row[2] / total if total else 0.0 for row in rows],
            "share of errors": [row[2] / errors if errors else 0.0 for row in rows],
        }
    )


def evaluate_split(
    split: str,
    specs: Sequence[HeadSpec],
    outputs: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
) -> SplitResult:
    """Evaluate every head of a model on one split.

    Args:
        split: the split's name.
        specs: the model's heads.
        outputs: ``{head: model output}`` (softmax (N, K) or sigmoid (N, 1)).
        targets: ``{head: true class indices (N,)}``.
    """
    heads = {}
    for spec in specs:
        if spec.name not in outputs or spec.name not in targets:
            raise ValueError(
                f"head {spec.name!r} is missing from the outputs ({', '.join(outputs)}) or the targets "
                f"({', '.join(targets)})."
            )
        heads[spec.name] = evaluate_head(
            spec, head_probabilities(outputs[spec.name], spec), targets[spec.name]
        )
    failures = failure_combinations(heads) if len(heads) > 1 else None
    return SplitResult(split, heads, failures)


def most_confident(result: HeadResult, k: int, *, correct: bool) -> dict[int, np.ndarray]:
    """The ``k`` most confident right (``correct=True``) or wrong images of each true class.

    Confidence is the probability of the predicted class. Returns ``{class index:
    image indices}``, most confident first (ties: lower image index first); a class
    with fewer such images gets fewer, possibly none.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    chosen = {}
    right, confidence = result.correct, result.confidence
    for index in range(len(result.class_names)):
        candidates = np.flatnonzero((result.labels == index) & (right == correct))
        # stable sort on -confidence keeps equal confidences in image order
        order = np.argsort(-confidence[candidates], kind="stable")
        chosen[index] = candidates[order[:k]]
    return chosen


def confused_pairs(result: HeadResult, count: int) -> pd.DataFrame:
    """The ``count`` largest off-diagonal cells: true class, predicted class, images,
    and their share of the true class's images."""
    confusion = result.confusion.copy()
    np.fill_diagonal(confusion, 0)
    flat = np.argsort(-confusion.reshape(-1), kind="stable")[:count]
    rows = [(divmod(int(cell), confusion.shape[0])) for cell in flat if confusion.reshape(-1)[cell] > 0]
    support = result.confusion.sum(axis=1)
    return pd.DataFrame(
        {
            "true": [result.class_names[true] for true, _ in rows],
            "predicted": [result.class_names[predicted] for _, predicted in rows],
            "images": [int(confusion[true, predicted]) for true, predicted in rows],
            "share of true class": [
                confusion[true, predicted] / support[true] if support[true] else 0.0
                for true, predicted in rows
            ],
        }
    )


def confusion_order(confusion: np.ndarray, method: str = "classes") -> np.ndarray:
    """An order of the classes for drawing a confusion matrix.

    ``classes`` keeps the class order. ``confusion`` puts classes that are confused
    with each other next to each other: spectral seriation (the Fiedler vector of the
    graph whose edge weights are the row-normalised confusions in both directions), so
    errors gather near the diagonal. Without any confusion the class order is kept.
    """
    count = confusion.shape[0]
    if method == "classes":
        return np.arange(count)
    if method != "confusion":
        raise ValueError(f"order must be 'classes' or 'confusion', got {method!r}.")
    rates = _ratio(confusion, confusion.sum(axis=1, keepdims=True))
    similarity = rates + rates.T
    np.fill_diagonal(similarity, 0.0)
    if count < 3 or not similarity.any():
        return np.arange(count)
    # A weak link between all classes keeps the graph connected, so one eigenvector
    # orders every class (a disconnected graph has several zero eigenvalues).
    similarity += similarity[similarity > 0].min() * 1e-3
    np.fill_diagonal(similarity, 0.0)
    laplacian = np.diag(similarity.sum(axis=1)) - similarity
    _, vectors = np.linalg.eigh(laplacian)
    fiedler = vectors[:, 1]
    if fiedler[np.argmax(np.abs(fiedler))] < 0:  # fix the eigenvector's arbitrary sign
        fiedler = -fiedler
    return np.lexsort((np.arange(count), np.round(fiedler, 12)))


def make_predictor(model, specs: Sequence[HeadSpec], *, tta: str = "none"):
    """A function ``(uint8 images, batch_size) -> {head: (N, units) float32}`` that
    runs ``model`` in inference mode batch by batch in order (batch-statistics models
    see the batches training's evaluation saw). ``tta="flip"`` averages each output
    with that of the mirrored image, as training's evaluation does. The graph is
    traced once, for any batch size."""

    if tta not in ("none", "flip"):
        raise ValueError(f"tta must be 'none' or 'flip', got {tta!r}.")
    names = [spec.name for spec in specs]
    shape = (None, *model.inputs[0].shape[1:])

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8)])
    def forward(batch):
        batch = tf.cast(batch, tf.float32)
        outputs = model(batch, training=False)
        if tta == "flip":
            mirrored = model(tf.reverse(batch, axis=[2]), training=False)
            outputs = {name: (outputs[name] + mirrored[name]) / 2.0 for name in names}
        return {name: outputs[name] for name in names}

    def run(images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 pixels 0..255, got {images.dtype}.")
        if not images.shape[0]:
            return {spec.name: np.zeros((0, spec.units), np.float32) for spec in specs}
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for start in range(0, images.shape[0], batch_size):
            result = forward(tf.constant(images[start : start + batch_size]))
            for name in names:
                parts[name].append(result[name].numpy())
        return {name: np.concatenate(values).astype(np.float32) for name, values in parts.items()}

    return run


def predict(
    model,
    images: np.ndarray,
    specs: Sequence[HeadSpec],
    *,
    batch_size: int,
    tta: str = "none",
) -> dict[str, np.ndarray]:
    """The model's outputs on uint8 images, ``{head: (N, units) float32}`` (see
    :func:`make_predictor`)."""
    return make_predictor(model, specs, tta=tta)(images, batch_size)


@dataclass(frozen=True)
class Sample:
    """A seeded choice of a split's images (explain.py --samples, the report's and the
    bench's explanation measures).

    Attributes:
        indices: the chosen images' positions in the split, ascending.
        images: uint8 (N, H, W, C).
        truth: the true class of each image per head, int64 (N,) (a sigmoid head's 0/1).
        masks: bool (N, H, W) object pixels, or None when the data has none.
    """

    indices: np.ndarray
    images: np.ndarray
    truth: dict[str, np.ndarray]
    masks: np.ndarray | None


def sample_indices(length: int, count: int, seed: int = 0) -> np.ndarray:
    """``min(count, length)`` distinct positions of ``range(length)``, seeded, ascending."""
    if count < 1:
        raise ValueError(f"a sample needs at least 1 image, got {count}.")
    return np.sort(np.random.default_rng(seed).choice(length, size=min(count, length), replace=False))


def seeded_sample(split, specs: Sequence[HeadSpec], count: int, seed: int = 0) -> Sample:
    """``count`` images of ``split`` (a ``fruitcnn.data.Split``; all of them when it has
    fewer) chosen with ``seed``, with their true classes for the heads ``specs``."""
    chosen = sample_indices(len(split), count, seed)
    attributes = None if split.attributes is None else split.attributes[chosen]
    targets = head_targets(specs, split.labels[chosen], attributes)
    truth = {spec.name: np.asarray(targets[spec.name]).reshape(-1).astype(np.int64) for spec in specs}
    masks = None if split.masks is None else split.masks[chosen]
    return Sample(chosen, split.images[chosen], truth, masks)
