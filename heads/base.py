"""Head specification, layers, losses, metrics and targets shared by all heads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

# Name of the extra output that a multi-head *training* model carries so Keras can
# report the aggregate accuracy (an image is right only if every head is right).
AGGREGATE = "aggregate"
KINDS = ("softmax", "sigmoid")
# Every head's logits layer is named <head> + this (explanations take gradients there).
LOGITS_SUFFIX = "_logits"


@dataclass(frozen=True)
class HeadSpec:
    """One output of a model.

    Attributes:
        name: output and layer name (``class``, ``length``, ``angle`` ...).
        kind: ``softmax`` (one unit per class, categorical cross-entropy) or
            ``sigmoid`` (one unit for two classes, binary cross-entropy).
        class_names: names of the classes, indexed by target value.
        target_column: which column of the dataset's attribute matrix holds this
            head's targets; None means the dataset's class labels.
    """

    name: str
    kind: str
    class_names: tuple[str, ...]
    target_column: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"head kind must be one of {KINDS}, got {self.kind!r}.")
        if self.kind == "sigmoid" and len(self.class_names) != 2:
            raise ValueError(
                f"sigmoid head {self.name!r} needs exactly 2 classes, got {len(self.class_names)}."
            )
        if len(self.class_names) < 2:
            raise ValueError(f"head {self.name!r} needs at least 2 classes, got {list(self.class_names)}.")

    @property
    def units(self) -> int:
        """Width of the logits layer."""
        return 1 if self.kind == "sigmoid" else len(self.class_names)


def build_heads(
    features,
    specs: Sequence[HeadSpec],
    *,
    l2: float = 0.0,
    dropout: float = 0.0,
    seed=None,
    branch: Callable[[str, Any], Any] | None = None,
) -> dict:
    """Put the heads on a feature vector; returns ``{head name: probability tensor}``.

    ``branch(head name, features)`` gives a head's own layers between the shared
    features and its logits (``fruitcnn.model`` builds them from the architecture's
    ``head_layers``); None: the logits sit on the shared features."""
    if dropout > 0:
        features = keras.layers.Dropout(dropout, seed=seed, name="dropout_head")(features)
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    outputs = {}
    for spec in specs:
        own = branch(spec.name, features) if branch is not None else features
        logits = keras.layers.Dense(
            spec.units, kernel_regularizer=regularizer, name=f"{spec.name}{LOGITS_SUFFIX}"
        )(own)
        outputs[spec.name] = keras.layers.Activation(spec.kind, name=spec.name)(logits)
    return outputs


@keras.saving.register_keras_serializable(package="fruitcnn")
class AggregateAccuracy(keras.metrics.Mean):
    """Share of images for which every head is right.

    ``y_pred`` is the concatenation of the heads' probabilities (sigmoid heads one
    column, softmax heads one column per class) and ``y_true`` the matrix of the
    heads' integer targets, one column per head.

    Args:
        head_sizes: the number of probability columns of each head, in order.
    """

    def __init__(self, head_sizes: Sequence[int], name: str = "accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.head_sizes = [int(size) for size in head_sizes]

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        all_right = None
        start = 0
        for column, size in enumerate(self.head_sizes):
            block = y_pred[:, start : start + size]
            if size == 1:
                predicted = ops.cast(block[:, 0] > 0.5, "int32")
            else:
                predicted = ops.cast(ops.argmax(block, axis=-1), "int32")
            right = ops.equal(predicted, y_true[:, column])
            all_right = right if all_right is None else ops.logical_and(all_right, right)
            start += size
        return super().update_state(ops.cast(all_right, self.dtype), sample_weight)

    def get_config(self):
        return {"head_sizes": self.head_sizes, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="fruitcnn")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against softmax outputs with label smoothing:
    the target is (1 - s) on the true class plus s / K on every class. Keras's sparse
    cross-entropy has no smoothing. With s = 0 it equals that loss."""

    def __init__(self, label_smoothing=0.0, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        classes = ops.shape(y_pred)[-1]
        one_hot = ops.one_hot(ops.cast(ops.reshape(y_true, [-1]), "int32"), classes, dtype=y_pred.dtype)
        # Softmax outputs keep their logits (Keras's _keras_logits), so this is the
        # numerically stable log-softmax form.
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="fruitcnn")
class MacroF1(keras.metrics.Metric):
    """Macro-averaged F1 of one head, from a confusion matrix it accumulates.

    The state is the (K, K) confusion matrix (rows true class, columns predicted
    class), readable as :attr:`confusion` after an evaluation: training draws it for
    TensorBoard without a second pass over the data. The result follows
    ``fruitcnn.evaluation``: per-class precision and recall with 0/0 taken as 0, F1 0
    when both are 0, averaged over the classes present in targets or predictions.

    Args:
        num_classes: classes of the head (2 for a sigmoid head).
        sigmoid: the head is one sigmoid unit (class 1 when its output exceeds 0.5).
        head: the name of the head it measures (Keras logs it as ``macro_f1`` for
            one head, ``<head>_macro_f1`` for several).
    """

    def __init__(
        self, num_classes: int, sigmoid: bool = False, head: str = "", name: str = "macro_f1", dtype=None
    ):
        super().__init__(name=name, dtype=dtype)
        if int(num_classes) < 2:
            raise ValueError(f"MacroF1 needs at least 2 classes, got {num_classes}.")
        self.num_classes, self.sigmoid, self.head = int(num_classes), bool(sigmoid), str(head)
        self.matrix = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="float32", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if self.sigmoid:
            predicted = ops.cast(ops.reshape(y_pred, [-1]) > 0.5, "int32")
        else:
            predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        true = ops.cast(ops.reshape(y_true, [-1]), "int32")
        cells = ops.bincount(true * self.num_classes + predicted, minlength=self.num_classes**2)
        counts = ops.reshape(ops.cast(cells[: self.num_classes**2], "float32"), self.matrix.shape)
        self.matrix.assign_add(counts)

    def result(self):
        correct = ops.diagonal(self.matrix)
        support, predicted = ops.sum(self.matrix, axis=1), ops.sum(self.matrix, axis=0)
        precision = ops.divide_no_nan(correct, predicted)
        recall = ops.divide_no_nan(correct, support)
        f1 = ops.divide_no_nan(2.0 * precision * recall, precision + recall)
        present = ops.cast((support + predicted) > 0, "float32")
        return ops.divide_no_nan(ops.sum(f1 * present), ops.sum(present))

    def reset_state(self):
        self.matrix.assign(ops.zeros(self.matrix.shape, dtype="float32"))

    @property
    def confusion(self) -> np.ndarray:
        """The accumulated confusion matrix as int64 counts."""
        return np.rint(keras.ops.convert_to_numpy(self.matrix)).astype(np.int64)

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "sigmoid": self.sigmoid,
            "head": self.head,
            "name": self.name,
            "dtype": self.dtype,
        }


def compile_arguments(specs: Sequence[HeadSpec], *, label_smoothing: float = 0.0) -> dict:
    """Losses and metrics for ``model.compile`` of a training model (see training):
    every head reports ``accuracy`` and ``macro_f1`` (:class:`MacroF1`)."""
    losses, metrics = {}, {}
    for spec in specs:
        f1 = MacroF1(len(spec.class_names), sigmoid=spec.kind == "sigmoid", head=spec.name)
        if spec.kind == "sigmoid":
            losses[spec.name] = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
            metrics[spec.name] = [keras.metrics.BinaryAccuracy(name="accuracy"), f1]
        elif label_smoothing:
            losses[spec.name] = SmoothedSparseCrossentropy(label_smoothing)
            metrics[spec.name] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy"), f1]
        else:
            losses[spec.name] = keras.losses.SparseCategoricalCrossentropy()
            metrics[spec.name] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy"), f1]
    if len(specs) > 1:
        losses[AGGREGATE] = None
        metrics[AGGREGATE] = [AggregateAccuracy([spec.units for spec in specs])]
    return {"loss": losses, "metrics": metrics}


def confusion_metrics(model: keras.Model) -> dict[str, MacroF1]:
    """The :class:`MacroF1` metrics of a compiled model by head name (empty when it
    has none, e.g. a checkpoint of an older version)."""
    found = {}
    for metric in model.metrics:
        for inner in getattr(metric, "metrics", [metric]):
            if isinstance(inner, MacroF1):
                found[inner.head] = inner
    return found


def head_targets(
    specs: Sequence[HeadSpec], labels: np.ndarray, attributes: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The target arrays of the heads (plus the aggregate matrix for several heads)."""
    targets = {}
    for spec in specs:
        if spec.target_column is None:
            values = labels
        else:
            if attributes is None:
                raise ValueError(
                    f"head {spec.name!r} needs attribute labels, but this dataset has only "
                    "class labels; train it with the single softmax head (no --multihead)."
                )
            values = attributes[:, spec.target_column]
        values = np.asarray(values)
        if spec.kind == "sigmoid":
            targets[spec.name] = values.astype(np.float32).reshape(-1, 1)
        else:
            targets[spec.name] = values.astype(np.int32)
    if len(specs) > 1:
        targets[AGGREGATE] = np.stack(
            [np.asarray(targets[spec.name]).reshape(-1) for spec in specs], axis=1
        ).astype(np.int32)
    return targets
