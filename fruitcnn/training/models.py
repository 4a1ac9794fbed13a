"""The models a run trains and evaluates (the heads, the all-heads-right output, test-time
flips), its optimizer and learning-rate schedule, and the input pipeline (batches with
augmentation, channel statistics)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fruitcnn.budget import MAX_EPOCHS, PlannedDecay
from fruitcnn.config import AugmentConfig, RunConfig, TrainConfig
from fruitcnn.data import Dataset, Split
from fruitcnn.data.augment import augment_batch
from fruitcnn.data.rows import Rows
from fruitcnn.layers import HorizontalFlip
from fruitcnn.model import with_precision
from heads import (
    AGGREGATE,
    SINGLE_HEAD,
    HeadSpec,
    compile_arguments,
    head_targets,
    line_attribute_specs,
    single_head_specs,
)

# Batches prepared ahead of the training step, so the input never waits.
_PREFETCH_BATCHES = 4
# Batches of streamed rows read in parallel (each a Python call that waits on disk),
# and kept ready.
_STREAM_READERS = 2
# End of the endless training stream (far beyond any run's epochs).
_EPOCH_LIMIT = 1 << 40
# Image arrays up to this size are graph constants; larger ones live in a variable
# (a constant is copied into the dataset's graph: seconds for large arrays, and
# impossible beyond 2 GB).
_CONSTANT_BYTES = 256 << 20
# channel_statistics: a channel whose variance (pixel units squared) is below this is
# constant; such a channel is scaled as the widest one (or as 0..255 -> -1..1).
_CONSTANT_VARIANCE, _FULL_RANGE_VARIANCE = 1e-6, 127.5**2
# Pixels per bincount call in channel_statistics.
_HISTOGRAM_CHUNK = 1 << 20
# Smallest batch for evaluation: inference needs no gradients, so bigger batches are
# faster and give the same numbers (batch norm uses its moving statistics).
_EVAL_BATCH = 512


def eval_batch_size(config: RunConfig) -> int:
    """Batch size for evaluation: large, except when batch norm uses batch statistics
    at inference; then results depend on the batch, so evaluate as training does."""
    if config.arch.bn_batch_stats_at_inference:
        return config.train.batch_size
    return max(config.train.batch_size, _EVAL_BATCH)


def head_specs(config: RunConfig, dataset: Dataset) -> list[HeadSpec]:
    """The heads that ``config.head`` asks for on ``dataset``."""
    if config.head == "multi":
        return line_attribute_specs(dataset.attribute_names, dataset.attribute_values)
    return single_head_specs(dataset.class_names)


def training_model(model: keras.Model, specs: Sequence[HeadSpec]) -> keras.Model:
    """The model that is compiled and fitted: the heads, plus for several heads an
    ``aggregate`` output (their concatenated probabilities, no loss) that carries the
    all-heads-right accuracy. It shares every layer with ``model``."""
    outputs = {spec.name: model.get_layer(spec.name).output for spec in specs}
    if len(specs) > 1:
        outputs[AGGREGATE] = keras.layers.Concatenate(name=AGGREGATE)([outputs[spec.name] for spec in specs])
    return keras.Model(model.inputs, outputs, name=model.name)


def evaluation_model(trainer: keras.Model, specs: Sequence[HeadSpec], tta: str) -> keras.Model:
    """The model that validation and test are evaluated with: the training model
    itself, or for ``tta="flip"`` one that averages its outputs on each image and on
    the mirrored image (sharing every weight), compiled with the same losses and
    metrics."""
    if tta == "none":
        return trainer
    inputs = keras.Input(trainer.inputs[0].shape[1:], name="image")
    plain, mirrored = trainer(inputs), trainer(HorizontalFlip(name="mirror")(inputs))
    outputs = {name: keras.layers.Average(name=name)([plain[name], mirrored[name]]) for name in plain}
    evaluator = keras.Model(inputs, outputs, name=f"{trainer.name}_tta_{tta}")
    evaluator.compile(**compile_arguments(specs))
    return evaluator


def heads_model(trainer: keras.Model, specs: Sequence[HeadSpec]) -> keras.Model:
    """The plain (saved) model inside a training model: image -> head probabilities."""
    outputs = {spec.name: trainer.get_layer(spec.name).output for spec in specs}
    return keras.Model(trainer.inputs, outputs, name=trainer.name)


def saved_model(trainer: keras.Model, specs: Sequence[HeadSpec]):
    """The plain model that is saved (model.keras, the best checkpoints) and returned,
    and the function that gives it the trainer's current weights before each use.

    A float32 trainer saves the heads model inside it (sharing its layers: the function
    is None). A mixed-precision one (``--precision``, also as loaded from a checkpoint)
    saves a float32 copy (``fruitcnn.model.with_precision``), so that explanations,
    reports and the page compute in float32 whatever the training precision; its
    weights (float32 in both) are copied from the trainer, exactly, when asked."""
    inner = heads_model(trainer, specs)
    if all(layer.dtype_policy.name == "float32" for layer in inner.layers):
        return inner, None
    plain = with_precision(inner, "float32")

    def sync() -> None:
        plain.set_weights(inner.get_weights())

    return plain, sync


def saved_evaluator(model: keras.Model, specs: Sequence[HeadSpec], settings: TrainConfig) -> keras.Model:
    """What evaluates the float32 saved ``model`` as the per-epoch evaluator evaluates
    the trainer: the same test-time augmentation, losses and metrics."""
    twin = training_model(model, specs)
    if settings.tta != "none":
        return evaluation_model(twin, specs, settings.tta)
    twin.compile(**compile_arguments(specs, label_smoothing=settings.label_smoothing))
    return twin


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Optimizer with the learning-rate schedule of ``config`` (per-step schedules).

    ``cosine`` and ``linear`` decay to 0 at the end of the run: after ``epochs`` epochs,
    or, with a time budget, where ``fruitcnn.budget.BudgetPlanner`` plans the end (the
    schedule's ``total_steps`` starts far away and is set after the first steps)."""
    rate: Any = config.learning_rate
    if config.schedule in PlannedDecay.SHAPES:
        total = MAX_EPOCHS * steps_per_epoch if config.time_budget else config.epochs * steps_per_epoch
        warmup = int(round(config.warmup_epochs * steps_per_epoch))
        rate = PlannedDecay(config.learning_rate, warmup, total, config.schedule)
    elif config.schedule == "step":
        rate = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate,
            decay_steps=config.step_epochs * steps_per_epoch,
            decay_rate=config.step_factor,
            staircase=True,
        )
    decay = config.weight_decay or None  # decoupled: w -= rate * decay * w every step
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=True, weight_decay=decay)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, momentum=config.momentum, weight_decay=decay)
    return keras.optimizers.Adam(rate, weight_decay=decay)


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Optimisation steps per epoch: full batches only (the last partial one is dropped)."""
    return train_images // batch_size


def batches(
    split: Split,
    specs: Sequence[HeadSpec],
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    first_epoch: int = 0,
    end_epoch: int | None = None,
    augment: AugmentConfig | None = None,
    part: tuple[int, int, int] | None = None,
) -> tuple[tf.data.Dataset, int]:
    """A tf.data pipeline of (float32 images, targets) batches, and its steps per epoch.

    The uint8 images and the targets are held as tensors and batches are gathered in
    the graph (a Python generator here cost seconds at every ``fit`` teardown). With
    ``shuffle_seed`` the dataset is endless (use ``steps_per_epoch``): epoch ``e``
    (counted from ``first_epoch``) is the permutation ``stateless_shuffle(seed=(seed,
    e))``, so a resumed run sees the same batches as an uninterrupted one, and the
    incomplete last batch is dropped (a 3-image batch makes noisy batch statistics).
    ``end_epoch`` ends the stream after that epoch: ``fit`` then ends with the input
    exhausted; destroying the iterator of the endless stream took 20.4 s and 1.8 s
    after two one-epoch MNIST fits, against 0.0 s in six fits of the finite stream.
    ``augment`` (training only) changes every image with random numbers seeded by
    (seed, step), so resumed runs are augmented identically too. Without
    ``shuffle_seed``, one pass in order, the last batch possibly smaller.

    ``part=(first, here, parts)`` (a worker of a distributed run, see
    ``fruitcnn.training.engine``): every batch is cut into ``parts`` contiguous parts
    (part ``k``: images ``k * n // parts`` to ``(k + 1) * n // parts`` of its ``n``) and
    this pipeline yields parts ``first .. first + here - 1`` of each, one element per
    local replica; the parts of all workers together are the batches above, augmented
    alike. The steps are still counted in whole batches.

    Streamed images (``--stream``, :class:`~fruitcnn.data.rows.Rows`) are not held:
    each batch (or part) reads its rows from disk, ``_STREAM_READERS`` batches at a
    time (and as many kept ready), in the same order and with the same augmentation
    as held images; a worker reads only its parts' rows.
    """
    streamed = isinstance(split.images, Rows)
    if streamed:
        images = None
    elif split.images.nbytes > _CONSTANT_BYTES:
        images = tf.Variable(split.images, trainable=False, name="images")
    else:
        images = tf.constant(split.images)
    targets = {
        name: tf.constant(values)
        for name, values in head_targets(specs, split.labels, split.attributes).items()
    }
    count = len(split)
    augmenting = augment is not None and augment.active and shuffle_seed is not None

    def rows_of(index):
        if not streamed:
            return tf.gather(images, index)
        batch = tf.numpy_function(split.images.__getitem__, [index], tf.uint8, stateful=False)
        return tf.ensure_shape(batch, (None, *split.images.image_shape))

    def gather(step, index, *within):  # within: (start, total) of a part, none for a batch
        batch = tf.cast(rows_of(index), tf.float32)
        if augmenting:
            seed = tf.stack([tf.constant(shuffle_seed, tf.int64), step])
            batch = augment_batch(batch, augment, seed, within=within or None)
        return batch, {name: tf.gather(values, index) for name, values in targets.items()}

    def parts_of(step, index):
        first, here, parts = part
        total = tf.size(index, out_type=tf.int64)
        pieces = tf.range(first, first + here, dtype=tf.int64)
        starts, ends = pieces * total // parts, (pieces + 1) * total // parts
        return tf.data.Dataset.from_tensor_slices((starts, ends)).map(
            lambda start, end: (step, index[start:end], start, total)
        )

    if shuffle_seed is None:
        steps = math.ceil(count / batch_size)
        dataset = tf.data.Dataset.range(count).batch(batch_size)
        dataset = tf.data.Dataset.zip(tf.data.Dataset.range(steps), dataset)
    else:
        steps = steps_per_epoch(count, batch_size)
        used = steps * batch_size

        def epoch_order(epoch):
            seed = tf.stack([tf.constant(shuffle_seed, tf.int64), epoch])
            order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=seed)
            numbers = tf.data.Dataset.range(epoch * steps, (epoch + 1) * steps)  # global step numbers
            return tf.data.Dataset.zip(
                numbers, tf.data.Dataset.from_tensor_slices(order[:used]).batch(batch_size)
            )

        last = _EPOCH_LIMIT if end_epoch is None else end_epoch
        dataset = tf.data.Dataset.range(first_epoch, last).flat_map(epoch_order)
    if part is not None:
        dataset = dataset.flat_map(parts_of)
    options = tf.data.Options()
    # No autotuning: the pipeline's parallelism and prefetch are fixed here anyway, and
    # the autotuner's background thread made destroying an iterator wait up to ~30 s
    # (seen in 1 of 3 default line runs, at the end of fit).
    options.autotune.enabled = False
    if streamed:
        # Rows are read from disk in a Python function: two batches at once (in order)
        # so that reading overlaps the step, and no more batches in flight than the
        # held path keeps (4 float32 batches of 512 100x100 images are 245 MB).
        dataset = dataset.map(gather, num_parallel_calls=_STREAM_READERS).prefetch(_STREAM_READERS)
    else:
        dataset = dataset.map(gather).prefetch(_PREFETCH_BATCHES)
    return dataset.with_options(options), steps


def standard_metrics(logs: dict[str, float], specs: Sequence[HeadSpec], prefix: str = "") -> dict:
    """Keras's log names turned into ``loss``, ``accuracy`` (aggregate for several
    heads) and ``<head>_loss``, ``<head>_accuracy``."""
    multi = len(specs) > 1
    result = {"loss": float(logs[f"{prefix}loss"])}
    if multi:
        result["accuracy"] = float(logs[f"{prefix}{AGGREGATE}_accuracy"])
        for spec in specs:
            result[f"{spec.name}_loss"] = float(logs[f"{prefix}{spec.name}_loss"])
            result[f"{spec.name}_accuracy"] = float(logs[f"{prefix}{spec.name}_accuracy"])
    else:
        key = f"{prefix}{SINGLE_HEAD}_accuracy"
        result["accuracy"] = float(logs[key] if key in logs else logs[f"{prefix}accuracy"])
    return result


def channel_statistics(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and variance of uint8 images, in pixel units (a constant
    channel gets the widest channel's variance instead of 0, see below).

    Counted through a 256-bin histogram per channel: one pass, no float copy. The
    histogram is built in chunks of ``_HISTOGRAM_CHUNK`` pixels: bincount widens its
    input to 64-bit integers, and that copy of a large channel (860 MB for Fruits-360)
    made it 6x slower. Streamed rows (``--stream``) are counted in one pass over the
    disk, a chunk of images at a time; the counts are exact, so the statistics equal
    the in-memory ones (a running Welford mean would round differently).
    """
    if images.dtype != np.uint8:
        raise ValueError(f"channel_statistics expects uint8 images, got {images.dtype}.")
    channels = images.shape[-1]
    histograms = np.zeros((channels, 256), dtype=np.float64)
    # streamed rows (--stream): one pass over the disk, a chunk of images at a time
    for chunk in images.chunks() if isinstance(images, Rows) else (images,):
        flat = chunk.reshape(-1, channels)
        for channel in range(channels):
            for start in range(0, flat.shape[0], _HISTOGRAM_CHUNK):
                # A contiguous copy of the channel makes bincount ~2.5x faster than a strided view.
                pixels = np.ascontiguousarray(flat[start : start + _HISTOGRAM_CHUNK, channel])
                histograms[channel] += np.bincount(pixels, minlength=256)
    levels = np.arange(256, dtype=np.float64)
    means, variances = [], []
    for counts in histograms:
        total = counts.sum()
        mean = float((counts * levels).sum() / total)
        variance = float((counts * (levels - mean) ** 2).sum() / total)
        means.append(mean)
        variances.append(variance)
    # A constant channel (the line dataset's green) carries nothing the network can learn,
    # and dividing it by a tiny spread would make its untrained weights' gradients 1000x
    # larger than any other's (they swamped saliency maps): it gets the widest channel's
    # spread, or that of 0..255 when every channel is constant.
    widest = max(variances) if max(variances) >= _CONSTANT_VARIANCE else _FULL_RANGE_VARIANCE
    return means, [variance if variance >= _CONSTANT_VARIANCE else widest for variance in variances]
