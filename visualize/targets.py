"""What an explanation explains: a head of the model and a class of that head.

Every method takes ``(model, images, *, head=None, target=None, ...)``: ``images`` in
raw pixel units (0-255, shape (N, H, W, C)), ``head`` one of the model's heads (may be
left out for a one-head model), ``target`` the class index per image (an int for all,
an array, or None for each image's predicted class). Gradients are taken on the
head's logits (the ``<head>_logits`` layer), before the softmax/sigmoid.

A sigmoid head has one logit ``z`` for two classes: class 1 has logit ``z`` and
probability ``sigmoid(z)``, class 0 logit ``-z`` and probability ``sigmoid(-z)``, so
both classes are explained the same way as softmax classes.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fruitcnn import load_model, runs
from fruitcnn.evaluation import head_probabilities
from heads import (
    LOGITS_SUFFIX,  # the layer name of every head's logits (re-exported)
    HeadSpec,
)

# Probabilities are clipped away from 0 before the log of a loss.
_SMALLEST_PROBABILITY = 1e-12


def head_names(model: keras.Model) -> list[str]:
    """The model's heads: every ``<head>_logits`` layer, in layer order (for a model with
    a dict of outputs, those that are outputs)."""
    suffix = len(LOGITS_SUFFIX)
    found = [layer.name[:-suffix] for layer in model.layers if layer.name.endswith(LOGITS_SUFFIX)]
    outputs = getattr(model, "output", None)
    return [name for name in found if name in outputs] if isinstance(outputs, dict) else found


def resolve_head(model: keras.Model, head: str | None) -> str:
    """``head``, checked against the model; None means the model's only head."""
    names = head_names(model)
    if not names:
        raise ValueError(
            "this model has no '<head>_logits' layer; explanations need a fruitcnn model (train.py) "
            "whose heads keep their logits apart from the softmax."
        )
    if head is None:
        if len(names) > 1:
            raise ValueError(
                f"this model has several heads ({', '.join(names)}); choose one, e.g. head={names[-1]!r}."
            )
        return names[0]
    if head not in names:
        raise ValueError(f"unknown head {head!r}; this model's heads are {', '.join(names)}.")
    return head


def check_per_image(model: keras.Model) -> None:
    """Refuse models whose output for an image depends on the other images of its batch
    (batch norm with batch statistics at inference): their maps would mix images."""
    mixed = [layer.name for layer in model.layers if getattr(layer, "batch_stats_at_inference", False)]
    if mixed:
        raise ValueError(
            f"this model's batch norm ({', '.join(mixed)}) uses the statistics of the evaluated batch at "
            "inference (trained with --bn-test-batch-stats), so an image's prediction depends on the other "
            "images of its batch and no explanation is per image; explain a model trained without it."
        )


def head_units(model: keras.Model, head: str) -> int:
    """Width of a head's logits layer (1 for a sigmoid head)."""
    return int(model.get_layer(head + LOGITS_SUFFIX).output.shape[-1])


def head_classes(model: keras.Model, head: str) -> int:
    """Number of classes of a head (2 for a sigmoid head)."""
    units = head_units(model, head)
    return 2 if units == 1 else units


def logits_model(model: keras.Model, head: str, layers: Sequence[str] = ()) -> keras.Model:
    """image -> [outputs of ``layers``..., the head's logits], sharing the model's weights.

    Built from the layers' symbolic outputs, so it works on models loaded from .keras
    files as well as on freshly built ones.
    """
    outputs = [model.get_layer(name).output for name in layers]
    outputs.append(model.get_layer(head + LOGITS_SUFFIX).output)
    return keras.Model(model.inputs, outputs)


def class_logit(logits: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """The logit of each image's target class, (N,)."""
    target = tf.cast(target, tf.int32)
    if logits.shape[-1] == 1:
        sign = tf.cast(2 * target - 1, logits.dtype)  # class 1: +z, class 0: -z
        return sign * logits[:, 0]
    return tf.gather(logits, target, axis=1, batch_dims=1)


def class_probability(logits: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """The probability of each image's target class, (N,)."""
    if logits.shape[-1] == 1:
        return tf.sigmoid(class_logit(logits, target))
    return tf.gather(tf.nn.softmax(logits, axis=-1), tf.cast(target, tf.int32), axis=1, batch_dims=1)


def class_loss(logits: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of each image's target class, (N,): ``-log p(target)``."""
    if logits.shape[-1] == 1:
        return -tf.math.log_sigmoid(class_logit(logits, target))
    log_probabilities = tf.nn.log_softmax(logits, axis=-1)
    return -tf.gather(log_probabilities, tf.cast(target, tf.int32), axis=1, batch_dims=1)


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """The predicted class of each image from its logits."""
    logits = np.asarray(logits)
    if logits.shape[-1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    return np.argmax(logits, axis=-1)


def class_probabilities(model: keras.Model, images, classes) -> dict[str, np.ndarray]:
    """Every head's class probabilities, ``{head: (N, K)}``, from one pass of the model
    (a sigmoid head's output p becomes the two columns [1 - p, p]). A few images go
    through ``predict_on_batch`` (``predict`` sets up a dataset and its loop each call:
    0.077 s against 0.004 s for one 100x100 image), more through ``predict``'s batches."""
    images = as_images(images)
    if len(images) <= DIRECT_CALL_IMAGES:
        outputs = model.predict_on_batch(images)
    else:
        outputs = model.predict(images, verbose=0)
    return {
        head: head_probabilities(
            outputs[head],
            HeadSpec(head, "sigmoid" if head_units(model, head) == 1 else "softmax", tuple(names)),
        )
        for head, names in classes.items()
    }


def resolve_targets(model: keras.Model, images: np.ndarray, head: str, target) -> np.ndarray:
    """Class index per image: ``target`` broadcast, or each image's predicted class."""
    count = images.shape[0]
    classes = head_classes(model, head)
    if target is None:
        logits = logits_model(model, head).predict(np.asarray(images, np.float32), verbose=0, batch_size=256)
        return predicted_classes(logits)
    targets = np.broadcast_to(np.asarray(target, np.int64), (count,)).copy()
    bad = targets[(targets < 0) | (targets >= classes)]
    if bad.size:
        raise ValueError(
            f"target class {int(bad[0])} does not exist; head {head!r} has classes 0..{classes - 1}."
        )
    return targets


# class_probabilities: up to this many images in one predict_on_batch call.
DIRECT_CALL_IMAGES = 32
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled(model: keras.Model, key: tuple, build):
    """The compiled function ``build()`` made for ``model`` and ``key``, made once:
    repeated explanations of the same model skip the tracing (seconds) and run at
    the compiled speed."""
    functions = _COMPILED.setdefault(model, {})
    if key not in functions:
        functions[key] = build()
    return functions[key]


def as_images(images) -> np.ndarray:
    """Images as a float32 (N, H, W, C) array, checked."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C) or (H, W, C), got {array.shape}.")
    return array.astype(np.float32)


def saved_classes(folder: Path) -> dict[str, list[str]] | None:
    """A run folder's classes.json (``{head: [class names]}``), or None without one."""
    path = folder / runs.CLASSES_FILE
    found = runs.read_json(path) if path.is_file() else None
    return found if isinstance(found, dict) else None


def load_explained_model(run: Path, *, input_range: str = "auto") -> tuple[keras.Model, dict[str, list[str]]]:
    """The model of a run folder (or a ``.keras`` file) in fruitcnn's form, and its class
    names per head: the folder's classes.json when it fits the model's heads, else the
    indices as text (a model made elsewhere)."""
    folder = run if run.is_dir() else run.parent
    saved = saved_classes(folder)
    model = load_model(run, input_range=input_range, head_names=list(saved) if saved else None)
    heads = head_names(model)
    if (
        saved
        and set(saved) == set(heads)
        and all(len(saved[head]) == head_classes(model, head) for head in heads)
    ):
        return model, {head: list(names) for head, names in saved.items()}  # in the run's order
    return model, {head: [str(index) for index in range(head_classes(model, head))] for head in heads}
