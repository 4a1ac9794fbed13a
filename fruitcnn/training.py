"""The one training path for every dataset and both head types.

:func:`train` builds (or resumes) the model a :class:`RunConfig` declares, trains it
with ``model.fit``, evaluates validation (and by default test) data after every epoch,
keeps the model of the best validation epoch, and writes the run folder described in
``fruitcnn.runs``.

``history.csv`` has one row per finished epoch with the columns ``epoch``,
``timestamp`` (ISO-8601 wall clock at the end of the epoch's evaluations),
``elapsed_s`` (seconds of training and evaluation since the run started, summed over
resumed sessions), ``train_s`` (seconds
of this epoch's optimisation steps, without evaluation), ``lr`` (learning rate
of the epoch's first step), then ``{train,val,test}_loss`` and
``{train,val,test}_accuracy``. For the four-head model ``accuracy`` is the aggregate
(all four heads right) and ``{split}_{head}_loss`` / ``{split}_{head}_accuracy``
follow for every head. Train figures are Keras's running means over the epoch
(training mode: dropout on, batch statistics); val and test are evaluated at the end
of the epoch in inference mode. Losses include the L2 penalty when ``l2 > 0``.
"""

from __future__ import annotations

import datetime
import errno
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fruitcnn import modelfile, runs
from fruitcnn.budget import MAX_EPOCHS, BudgetPlanner, PlannedDecay
from fruitcnn.config import AugmentConfig, RunConfig, TrainConfig
from fruitcnn.data import Dataset, Split, load_dataset
from fruitcnn.data.augment import augment_batch
from fruitcnn.layers import HorizontalFlip
from fruitcnn.model import build_model, plan_layers, whitening_filters
from fruitcnn.plots import confusion_figure, png_bytes
from heads import (
    AGGREGATE,
    SINGLE_HEAD,
    HeadSpec,
    compile_arguments,
    confusion_metrics,
    head_targets,
    line_attribute_specs,
    single_head_specs,
)

# Batches prepared ahead of the training step, so the input never waits.
_PREFETCH_BATCHES = 4
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
# An epoch whose loss is more than this many times the loss of guessing has diverged,
# even if finite: with logits the cross-entropy is unbounded, and --lr 1e12 gave 1e22
# (a model confidently wrong on every image by a margin of 1000 ln K nats).
EXPLODED = 1000.0
# After its first epoch a network whose training and validation losses are both within
# this share of the loss of guessing has learnt nothing: its outputs stay uniform (the
# ECE4179 deep net's stayed at 2.303 = ln 10 for 6 epochs; a learning one is far from
# it: the line model's 0.05 against 4.56).
FLAT = 0.02
# Learning rates above which a network without batch norm usually does not train: the
# ECE4179 deep net stayed at chance with Adam at 0.01 (see not_learning_advice).
ADAPTIVE_RATE_WITHOUT_BN, SGD_RATE_WITHOUT_BN = 3e-3, 0.05
# How the splits are named in messages.
SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}
# Errors of a write that mean the disk (or the process's file-size limit) is full.
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Resolution of the confusion-matrix images in TensorBoard (dots per inch).
_TENSORBOARD_DPI = 72
# Up to this many classes the TensorBoard confusion image names them; beyond, indices.
_TENSORBOARD_NAMED_CLASSES = 40


def eval_batch_size(config: RunConfig) -> int:
    """Batch size for evaluation: large, except when batch norm uses batch statistics
    at inference; then results depend on the batch, so evaluate as training does."""
    if config.arch.bn_batch_stats_at_inference:
        return config.train.batch_size
    return max(config.train.batch_size, _EVAL_BATCH)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run folder.
        model: the model of the best validation epoch (uncompiled).
        history: the rows of history.csv.
        metrics: the content of metrics.json.
    """

    run_dir: Path
    model: keras.Model
    history: list[dict[str, Any]]
    metrics: dict[str, Any]


class TrainingFailed(RuntimeError):
    """Training stopped before its last epoch for a reason the user can act on; the
    message says what happened, what the run folder keeps and what to do."""


class TrainingDiverged(TrainingFailed):
    """The loss became NaN or infinite, or exploded (``EXPLODED`` times the loss of
    guessing). metrics.json says ``"diverged": {...}`` (strict JSON), and the run
    cannot be resumed."""


class _Diverged(Exception):
    """Raised inside ``fit`` at the first non-finite loss, or at the end of an epoch whose
    loss exploded (caught by :func:`train`)."""

    def __init__(self, epoch: int, step: int, loss: float, rate: float, where: str):
        super().__init__(f"diverged {where} loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss, self.rate, self.where = epoch, step, loss, rate, where

    @property
    def what(self) -> str:
        """``became nan`` or ``exploded to 1.5e+22``."""
        return f"became {self.loss}" if not math.isfinite(self.loss) else f"exploded to {self.loss:.3g}"


def chance_loss(specs: Sequence[HeadSpec]) -> float:
    """The loss of guessing (uniform probabilities): ln K per softmax head, ln 2 per
    sigmoid head, summed as Keras sums the heads' losses."""
    return float(sum(math.log(len(spec.class_names)) for spec in specs))


class _DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first step whose (running mean) training loss is NaN or
    infinite: one NaN makes Keras's running mean NaN for the rest of the epoch, so the
    first such step is where it went wrong. Keras already hands the callbacks Python
    floats after every step (fruitcnn's recorder needs them), so this costs nothing."""

    epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            raise _Diverged(self.epoch + 1, batch + 1, float(loss), rate, "training")


def not_learning_advice(config: RunConfig, specs: Sequence[HeadSpec], losses: Sequence[float]) -> str | None:
    """Why a network does not learn, in words, when its training and validation losses
    after the first epoch are both flat at the loss of guessing (within ``FLAT`` of it:
    its outputs stay uniform, as a network whose units are dead gives); else None. A loss
    above guessing is not flat: early in training a network is often confidently wrong."""
    chance = chance_loss(specs)
    if any(abs(loss - chance) > FLAT * chance for loss in losses):
        return None
    train_loss = losses[0]
    settings = config.train
    rate = settings.learning_rate
    has_bn = any(spec.kind == "bn" for spec in config.arch.layers)
    if not has_bn and settings.optimizer in ("adam", "rmsprop") and rate > ADAPTIVE_RATE_WITHOUT_BN:
        cause = (
            f"{settings.optimizer} at --lr {rate:g} moves the weights of a network without batch norm too "
            f"far per step (its ReLUs die or its outputs saturate): try --lr "
            f"{ADAPTIVE_RATE_WITHOUT_BN / 3:g}, or add batch norm after the conv layers"
        )
    elif not has_bn and settings.optimizer == "sgd" and rate > SGD_RATE_WITHOUT_BN:
        cause = f"sgd at --lr {rate:g} is too fast without batch norm: try --lr {SGD_RATE_WITHOUT_BN / 5:g}"
    else:
        cause = (
            f"the learning rate (--lr {rate:g}) may be too high or too low for this network: try ten times "
            "lower and higher; or the labels do not match the images"
        )
    return (
        f"the model is not learning: after its first epoch the training loss is {train_loss:.3f}, the loss "
        f"of guessing is {chance:.3f}. Likely cause: {cause}."
    )


def divergence_advice(config: RunConfig) -> str:
    """What usually cures a diverging run of this configuration, in words."""
    settings = config.train
    tips = [
        f"lower the learning rate (this run: --lr {settings.learning_rate:g} with {settings.optimizer}; "
        f"try --lr {settings.learning_rate / 10:g})"
    ]
    if settings.schedule != "cosine" or settings.warmup_epochs == 0:
        tips.append("warm it up (--schedule cosine --warmup-epochs 1)")
    if not any(spec.kind == "bn" for spec in config.arch.layers):
        tips.append("add batch norm after the conv layers ('bn' in --arch)")
    return "; ".join(tips)


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
    """
    if split.images.nbytes > _CONSTANT_BYTES:
        images = tf.Variable(split.images, trainable=False, name="images")
    else:
        images = tf.constant(split.images)
    targets = {
        name: tf.constant(values)
        for name, values in head_targets(specs, split.labels, split.attributes).items()
    }
    count = len(split)
    augmenting = augment is not None and augment.active and shuffle_seed is not None

    def gather(step, index):
        batch = tf.cast(tf.gather(images, index), tf.float32)
        if augmenting:
            batch = augment_batch(batch, augment, tf.stack([tf.constant(shuffle_seed, tf.int64), step]))
        return batch, {name: tf.gather(values, index) for name, values in targets.items()}

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
    options = tf.data.Options()
    # No autotuning: the pipeline's parallelism and prefetch are fixed here anyway, and
    # the autotuner's background thread made destroying an iterator wait up to ~30 s
    # (seen in 1 of 3 default line runs, at the end of fit).
    options.autotune.enabled = False
    return dataset.map(gather).prefetch(_PREFETCH_BATCHES).with_options(options), steps


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
    made it 6x slower.
    """
    if images.dtype != np.uint8:
        raise ValueError(f"channel_statistics expects uint8 images, got {images.dtype}.")
    flat = images.reshape(-1, images.shape[-1])
    levels = np.arange(256, dtype=np.float64)
    means, variances = [], []
    for channel in range(flat.shape[1]):
        counts = np.zeros(256, dtype=np.float64)
        for start in range(0, flat.shape[0], _HISTOGRAM_CHUNK):
            # A contiguous copy of the channel makes bincount ~2.5x faster than a strided view.
            pixels = np.ascontiguousarray(flat[start : start + _HISTOGRAM_CHUNK, channel])
            counts += np.bincount(pixels, minlength=256)
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


class _Plateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a resume."""

    def __init__(self, state: dict[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self._initial = state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for name in ("wait", "best", "cooldown_counter"):
            if name in self._initial:
                setattr(self, name, self._initial[name])

    def state(self) -> dict[str, Any]:
        best = None if self.best is None else float(self.best)
        return {"wait": self.wait, "best": best, "cooldown_counter": self.cooldown_counter}


class _Validation(keras.callbacks.Callback):
    """Evaluates the validation split after every epoch into the logs (``val_*``), as
    ``fit(validation_data=...)`` would, but with the evaluation model (test-time
    augmentation included). Runs first, so the plateau schedule, the recorder and the
    progress bar see the results."""

    def __init__(self, evaluator, val_data):
        super().__init__()
        self.evaluator, self.val_data = evaluator, val_data
        self.confusions: dict[str, np.ndarray] = {}  # per head, of the last evaluation

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        results = self.evaluator.evaluate(self.val_data, verbose=0, return_dict=True)
        logs.update({f"val_{name}": value for name, value in results.items()})
        # The MacroF1 metrics hold the confusion matrices of this very pass.
        self.confusions = {
            head: metric.confusion for head, metric in confusion_metrics(self.evaluator).items()
        }


class _EpochRecorder(keras.callbacks.Callback):
    """Evaluates test data, writes history/checkpoints/best model after every epoch."""

    def __init__(
        self,
        run,
        trainer,
        evaluator,
        model,
        specs,
        test_data,
        state,
        history,
        plateau,
        validation,
        config,
    ):
        super().__init__()
        self.config = config
        self.run, self.trainer, self.evaluator, self.plain, self.specs = run, trainer, evaluator, model, specs
        self.validation = validation
        self.test_data, self.history, self.plateau = test_data, history, plateau
        self.state = state
        self.best_weights = None
        self.best_parts: dict[str, dict[str, float]] | None = None  # val/test at the best epoch
        self.session_start = time.monotonic()
        self.prior_elapsed = float(state["elapsed_s"])  # from earlier sessions of a resumed run
        self.budget = float(config.train.time_budget)  # seconds of a time budget, or 0
        self.writers = {}  # TensorBoard writers per split, made when first used

    def on_epoch_begin(self, epoch, logs=None):
        # The rate of the epoch's first step (step decay and plateau change it only
        # between epochs, so for them it is the epoch's rate).
        self.epoch_rate = float(keras.ops.convert_to_numpy(self.trainer.optimizer.learning_rate))
        self.epoch_step = int(keras.ops.convert_to_numpy(self.trainer.optimizer.iterations))
        self.epoch_start = self.last_step_end = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self.last_step_end = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "timestamp": None,  # both set once the evaluations are done; listed here
            "elapsed_s": None,  # to keep the column order of history.csv
            "train_s": round(self.last_step_end - self.epoch_start, 3),
            "lr": self.epoch_rate,
        }
        if self.budget:  # a time budget's epochs: the last one may be partial
            row["steps"] = (
                int(keras.ops.convert_to_numpy(self.trainer.optimizer.iterations)) - self.epoch_step
            )
        parts = {
            "train": standard_metrics(logs, self.specs),
            "val": standard_metrics(logs, self.specs, "val_"),
        }
        train_logs = {key: value for key, value in logs.items() if not key.startswith("val_")}
        self._summarise("train", epoch, {**train_logs, "learning_rate": self.epoch_rate})
        self._summarise(
            "validation", epoch, {key[4:]: value for key, value in logs.items() if key.startswith("val_")}
        )
        self._confusion_images(epoch)
        if self.test_data is not None:
            test_logs = self.evaluator.evaluate(self.test_data, verbose=0, return_dict=True)
            parts["test"] = standard_metrics(test_logs, self.specs)
            self._summarise("test", epoch, test_logs)
        for split, values in parts.items():  # before anything of this epoch is saved
            loss = values["loss"]
            if not math.isfinite(loss) or loss > EXPLODED * chance_loss(self.specs):
                steps = self.params.get("steps") or 0
                raise _Diverged(epoch + 1, steps, loss, self.epoch_rate, SPLIT_WORDS[split])
        if epoch == 0:  # a network that learnt nothing in a whole epoch will not start later
            losses = (parts["train"]["loss"], parts["val"]["loss"])
            advice = not_learning_advice(self.config, self.specs, losses)
            if advice:
                print(f"warning: {advice}", file=sys.stderr)
                self.state.setdefault("warnings", []).append(advice)
        # Timestamps once the epoch's evaluations are done.
        row["timestamp"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        row["elapsed_s"] = round(self.prior_elapsed + time.monotonic() - self.session_start, 3)
        if self.budget:
            row["budget_left_s"] = round(self.budget - row["elapsed_s"], 3)
        for split in ("train", "val", "test"):
            for name in ("loss", "accuracy"):
                row[f"{split}_{name}"] = parts.get(split, {}).get(name, "")
        for split in ("train", "val", "test"):
            for name, value in parts.get(split, {}).items():
                if name not in ("loss", "accuracy"):
                    row[f"{split}_{name}"] = value
        self._save(epoch, row, parts)

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        """Flush and close the TensorBoard writers (now, not whenever collected)."""
        for writer in self.writers.values():
            writer.close()
        self.writers = {}

    def _summarise(self, split: str, epoch: int, values: dict[str, Any]) -> None:
        """Epoch scalars for TensorBoard under Keras's tag names (``epoch_loss``,
        ``epoch_aggregate_accuracy`` ...), one folder per split so the curves overlay.

        Written here rather than by keras.callbacks.TensorBoard, which records every
        batch's logs (about 1.4 ms per step) even when asked for epoch summaries only.
        """
        if split not in self.writers:
            self.writers[split] = tf.summary.create_file_writer(str(self.run / runs.TENSORBOARD_DIR / split))
        with self.writers[split].as_default(step=epoch):
            for name, value in values.items():
                tf.summary.scalar(f"epoch_{name}", float(value))
        self.writers[split].flush()

    def _confusion_images(self, epoch: int) -> None:
        """The validation confusion matrix of every head as a TensorBoard image
        (``confusion/<head>``, row-normalised, in the Images tab; classes by index
        beyond ``_TENSORBOARD_NAMED_CLASSES``, as in classes.json)."""
        writer = self.writers["validation"]
        for spec in self.specs:
            matrix = self.validation.confusions.get(spec.name)
            if matrix is None:  # a checkpoint of a version without MacroF1
                continue
            title = f"validation, epoch {epoch + 1}: {spec.name} (rows: true class, share of its images)"
            # names only where they can be read at TensorBoard's resolution
            names = len(spec.class_names) <= _TENSORBOARD_NAMED_CLASSES
            figure = confusion_figure(matrix, spec.class_names, normalise=True, title=title, names=names)
            picture = tf.io.decode_png(png_bytes(figure, dpi=_TENSORBOARD_DPI, tight=False), channels=3)
            with writer.as_default(step=epoch):
                tf.summary.image(f"confusion/{spec.name}", picture[None])
        writer.flush()

    def _save(self, epoch, row, parts):
        number = epoch + 1
        folder = self.run / runs.CHECKPOINT_DIR
        val = parts["val"]
        improved = (val["accuracy"], -val["loss"]) > (
            self.state["best_val_accuracy"],
            -self.state["best_val_loss"],
        )
        last = runs.checkpoint_name("epoch", number)
        runs.atomic_write(folder / last, self.trainer.save)
        if improved:
            best = runs.checkpoint_name("best", number)
            runs.atomic_write(folder / best, self.plain.save)
            self.best_weights = self.plain.get_weights()
            self.best_parts = parts if "test" in parts else None
            self.state.update(
                best_epoch=number,
                best_val_accuracy=val["accuracy"],
                best_val_loss=val["loss"],
                best_checkpoint=best,
            )
        self.history.append(row)
        runs.write_csv(self.run / runs.HISTORY_FILE, self.history)
        self.state.update(epoch=number, elapsed_s=row["elapsed_s"], last_checkpoint=last)
        if self.plateau is not None:
            self.state["plateau"] = self.plateau.state()
        runs.commit_checkpoint(self.run, self.state, best_changed=improved)


def data_description(dataset: Dataset) -> dict[str, Any]:
    """What data.json records about the data of a run."""
    return {
        "name": dataset.name,
        "image_shape": list(dataset.image_shape),
        "classes": len(dataset.class_names),
        **{key: value for key, value in dataset.info.items() if key != "messages"},
        "images": {name: len(split) for name, split in dataset.splits.items()},
    }


def _fresh_state() -> dict[str, Any]:
    return {
        "epoch": 0,
        "elapsed_s": 0.0,
        "best_epoch": 0,
        "best_val_accuracy": -1.0,
        "best_val_loss": float("inf"),
        "best_checkpoint": None,
        "last_checkpoint": None,
        "finished": False,
    }


def check_run(config: RunConfig, dataset: Dataset) -> list[HeadSpec]:
    """Everything :func:`train` checks before it builds anything: the heads fit the
    data, the architecture fits the images, the batch fits the training split.

    Returns:
        The head specs of the run.

    Raises:
        ValueError: what does not fit and how to fix it.
    """
    specs = head_specs(config, dataset)
    _check_sizes(config, dataset)
    plan_layers(config.arch, dataset.image_shape)
    return specs


def _check_sizes(config: RunConfig, dataset: Dataset) -> None:
    if len(dataset.train) < config.train.batch_size:
        raise ValueError(
            f"the training split has {len(dataset.train)} images, fewer than the batch "
            f"size {config.train.batch_size}; lower --batch-size or use more data."
        )


def train(
    config: RunConfig,
    *,
    dataset: Dataset | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    interrupt_advice: str | None = None,
) -> TrainResult:
    """Train (or resume) the run that ``config`` declares.

    The run folder is held (``fruitcnn.runs.hold``) from start to end, so a second
    process that tries to train or resume it is refused with this one's pid.

    Args:
        config: the run configuration (for a resume: the one saved in the run).
        dataset: already loaded data; default: ``load_dataset(config.data)``.
        run_dir: run folder; default a new ``saved_models/<dataset>-<head>-<time>``
            (created exclusively: ``-2`` ... when that name exists).
        resume: continue the run in ``run_dir`` from its last finished epoch.
        callbacks: extra Keras callbacks (run after fruitcnn's own).
        verbose: Keras ``fit`` verbosity (1 progress bars, 2 one line per epoch).
        interrupt_advice: what to tell the user after Ctrl-C (default: how to
            resume this run with train.py; "": nothing, the caller explains).

    Returns:
        A :class:`TrainResult`; the model has the best validation epoch's weights.

    Raises:
        ValueError: on an unusable configuration or dataset, before training starts;
            ``fruitcnn.runs.RunInUse`` when another process holds the run folder.
        TrainingDiverged: the loss became NaN or infinite or exploded (metrics.json
            says so).
        TrainingFailed: the disk filled up while the run was saved (the run resumes
            from its last committed epoch once there is space).
    """
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run folder (run_dir) to continue.")
    dataset = dataset if dataset is not None else load_dataset(config.data)
    specs = check_run(config, dataset)
    if run_dir is None:
        run = runs.create_run_folder(runs.DEFAULT_ROOT, runs.new_run_name(config.data.dataset, config.head))
        created = True
    else:
        run, created = runs.check_out_folder(Path(run_dir)), not Path(run_dir).exists()
    with runs.hold(run, "resuming" if resume else "training", created=created):
        keras.utils.set_random_seed(config.train.seed)
        if resume:
            trainer, state, history = _restore(run, config, dataset, specs)
        else:
            trainer, state, history = _start(run, config, dataset, specs)
        model = heads_model(trainer, specs)
        return _fit(
            config, dataset, specs, run, trainer, model, state, history, callbacks, verbose, interrupt_advice
        )


def _start(run: Path, config: RunConfig, dataset: Dataset, specs: Sequence[HeadSpec]):
    """A new run: build and compile the model, write config.json and classes.json."""
    if (run / runs.CHECKPOINT_DIR / runs.STATE_FILE).exists():
        raise ValueError(
            f"{run} already holds a run; resume it with --resume {run}, or choose another --out/--run."
        )
    # A folder whose run never finished an epoch has nothing to keep: start it afresh.
    mean, variance = channel_statistics(dataset.train.images)
    whiten = next((spec for spec in config.arch.layers if spec.kind == "whiten"), None)
    model = build_model(
        config.arch,
        input_shape=dataset.image_shape,
        heads=specs,
        channel_mean=mean,
        channel_variance=variance,
        seed=config.train.seed,
        whitening=None
        if whiten is None
        else whitening_filters(
            dataset.train.images, whiten.params["kernel"], mean, variance, seed=config.train.seed
        ),
    )
    trainer = training_model(model, specs)
    steps = steps_per_epoch(len(dataset.train), config.train.batch_size)
    trainer.compile(
        make_optimizer(config.train, steps),
        **compile_arguments(specs, label_smoothing=config.train.label_smoothing),
    )
    runs.write_json(run / runs.CONFIG_FILE, config.to_dict())
    runs.write_json(run / runs.DATA_FILE, data_description(dataset))
    runs.write_json(run / runs.CLASSES_FILE, {spec.name: list(spec.class_names) for spec in specs})
    runs.record_environment(run, "start")
    return trainer, _fresh_state(), []


def _restore(run: Path, config: RunConfig, dataset: Dataset, specs: Sequence[HeadSpec]):
    """An interrupted run: the training model, state and history of its last epoch."""
    state = runs.read_state(run)
    check_resumable(run, state)
    checkpoint = run / runs.CHECKPOINT_DIR / state["last_checkpoint"]
    if not checkpoint.is_file():
        raise ValueError(f"{checkpoint} is missing; the run folder {run} is damaged and cannot be resumed.")
    try:
        trainer = modelfile.load_keras(checkpoint, compile=True)
    except ValueError as error:
        raise ValueError(
            f"{error}\n  The checkpoint of epoch {state['epoch']} is damaged, so {run} cannot continue "
            "exactly; start the run again (same command without --resume, another --out/--run)."
        ) from None
    steps = int(keras.ops.convert_to_numpy(trainer.optimizer.iterations))
    epoch_steps = steps_per_epoch(len(dataset.train), config.train.batch_size)
    expected = state["epoch"] * epoch_steps
    # a time budget may end inside an epoch (its last, partial one)
    partial = config.train.time_budget and expected - epoch_steps < steps <= expected
    if steps != expected and not partial:
        raise ValueError(
            f"{checkpoint} holds {steps} optimiser steps but epoch {state['epoch']} should end at "
            f"{expected}; was the run resumed with other data? Start a new run instead."
        )
    runs.publish_best(run, state)
    runs.record_environment(run, "resume")
    rows = runs.read_csv(run / runs.HISTORY_FILE) if (run / runs.HISTORY_FILE).is_file() else []
    return trainer, state, [row for row in rows if row["epoch"] <= state["epoch"]]


def check_resumable(run: Path, state: dict[str, Any]) -> None:
    """Refuse to resume a run that finished or diverged, saying what to do instead."""
    diverged = state.get("diverged")
    if diverged:
        raise ValueError(
            f"{run} diverged at epoch {diverged['epoch']} (the {diverged['where']} loss became "
            f"{diverged['loss']}); resuming would repeat it from the same weights and learning rate. "
            f"Start a new run instead: {diverged.get('advice', 'lower the learning rate')}."
        )
    if state.get("finished"):
        missing = ""
        if not (Path(run) / runs.REPORT_HTML).is_file():
            missing = f" Its report was not written (the process ended before it): python report.py {run}."
        raise ValueError(
            f"{run} already finished its {state['epoch']} epochs; nothing to resume (its results "
            f"are in {Path(run) / runs.METRICS_FILE}). Start a new run to train longer.{missing}"
        )


def _fit(
    config, dataset, specs, run, trainer, model, state, history, callbacks, verbose, interrupt_advice
) -> TrainResult:
    settings = config.train
    budget = settings.time_budget
    last_epoch = MAX_EPOCHS if budget else settings.epochs  # a budget plans its own end
    train_data, steps = batches(
        dataset.train,
        specs,
        settings.batch_size,
        shuffle_seed=settings.seed,
        first_epoch=state["epoch"],
        end_epoch=last_epoch,
        augment=config.augment,
    )
    eval_size = eval_batch_size(config)
    val_data, _ = batches(dataset.val, specs, eval_size)
    test_data, _ = batches(dataset.test, specs, eval_size)
    plateau = None
    if settings.schedule == "plateau":
        plateau = _Plateau(
            state.get("plateau"),
            monitor="val_loss",
            factor=settings.plateau_factor,
            patience=settings.plateau_patience,
            verbose=1 if verbose else 0,
        )
    evaluator = evaluation_model(trainer, specs, settings.tta)
    validation = _Validation(evaluator, val_data)
    recorder = _EpochRecorder(
        run,
        trainer,
        evaluator,
        model,
        specs,
        test_data if settings.test_each_epoch else None,
        state,
        history,
        plateau,
        validation,
        config,
    )
    own = [_DivergenceGuard(), validation] + ([plateau] if plateau else []) + [recorder]
    if budget:  # Keras's progress would count to the epoch bound: one line per epoch instead
        own.append(_planner(config, dataset, trainer, state, steps))
        own.extend([_BudgetProgress(budget, recorder)] if verbose else [])
        verbose = 0
    all_callbacks = own + list(callbacks)
    if (state["elapsed_s"] < budget) if budget else (state["epoch"] < settings.epochs):
        try:
            trainer.fit(
                train_data,
                epochs=last_epoch,
                initial_epoch=state["epoch"],
                steps_per_epoch=steps,
                callbacks=all_callbacks,
                shuffle=False,  # batches() shuffles, seeded per epoch
                verbose=verbose,
            )
        except KeyboardInterrupt:
            recorder.close()
            if interrupt_advice is not None:
                advice = interrupt_advice
            elif state["epoch"] == 0:
                advice = "no epoch had finished, so there is nothing to resume; run the same command again"
            else:
                advice = f"continue with: python train.py --resume {run}"
            if advice:
                print(f"\ninterrupted after epoch {state['epoch']}; {advice}", file=sys.stderr)
            raise
        except _Diverged as found:
            recorder.close()
            _diverged(
                config, dataset, specs, run, evaluator, model, recorder, state, found, val_data, test_data
            )
        except OSError as error:
            recorder.close()
            if error.errno not in _FULL_DISK:
                raise
            if state["epoch"]:
                then = (
                    f"the run folder is intact up to epoch {state['epoch']} (state.json commits an epoch "
                    "only once its files are written): free some space, then continue with: "
                    f"python train.py --resume {run}"
                )
            else:
                then = "no epoch had finished: free some space, then run the same command again"
            raise TrainingFailed(
                f"could not save the run: {error.strerror} ({error.filename or run}); {then}"
            ) from None
    _load_best(model, recorder, run, state)
    metrics = _final_metrics(
        evaluator, dataset, {"val": val_data, "test": test_data}, specs, state, model, recorder.best_parts
    )
    if state.get("warnings"):
        metrics["warnings"] = list(state["warnings"])
    if budget:
        done = int(keras.ops.convert_to_numpy(trainer.optimizer.iterations))
        final_rate = float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate))
        metrics["time_budget"] = {**budget_summary(state, done, steps), "final_learning_rate": final_rate}
    runs.write_json(run / runs.METRICS_FILE, metrics)
    state["finished"] = True
    runs.commit_checkpoint(run, state, best_changed=False)
    return TrainResult(run, model, history, metrics)


class _BudgetProgress(keras.callbacks.Callback):
    """One line per epoch of a time-budget run: steps, seconds, the budget left, metrics."""

    def __init__(self, budget: float, recorder: _EpochRecorder):
        super().__init__()
        self.budget, self.recorder = budget, recorder

    def on_epoch_end(self, epoch, logs=None):
        row = self.recorder.history[-1] if self.recorder.history else {}
        shown = " - ".join(
            f"{name} {value:.4f}"
            for name, value in (logs or {}).items()
            if name in ("loss", "accuracy", "val_loss", "val_accuracy", "aggregate_accuracy")
        )
        print(
            f"epoch {epoch + 1}: {row.get('steps', '?')} steps in {row.get('train_s', 0):.1f} s, "
            f"{max(0.0, row.get('budget_left_s', 0.0)):.0f} s of the {self.budget:g} s budget left - {shown}",
            flush=True,
        )


def _planner(
    config: RunConfig, dataset: Dataset, trainer, state: dict[str, Any], steps: int
) -> BudgetPlanner:
    """The time budget's planner, which records its plans in the run's state."""
    settings = config.train
    evaluated = len(dataset.val) + (len(dataset.test) if settings.test_each_epoch else 0)
    passes = 2 if settings.tta == "flip" else 1
    # Keras keeps the schedule object (not its current value) as _learning_rate
    schedule = getattr(trainer.optimizer, "_learning_rate", None)
    return BudgetPlanner(
        settings.time_budget,
        prior_s=float(state["elapsed_s"]),
        epoch_steps=steps,
        schedule=schedule if isinstance(schedule, PlannedDecay) else None,
        eval_steps=passes * evaluated / settings.batch_size,
        record=lambda plan: state.update(budget=plan),
    )


def budget_summary(state: dict[str, Any], steps: int, epoch_steps: int) -> dict[str, Any]:
    """How a time budget was spent, for metrics.json and the report: the budget, the
    seconds used, optimisation steps and epochs (a partial last epoch as a fraction),
    and the last plan (step time, evaluation time per epoch, number of plans)."""
    plan = dict(state.get("budget") or {})
    budget = plan.pop("budget_s", None)
    return {
        "budget_s": budget,
        "used_s": round(float(state["elapsed_s"]), 3),
        "steps": steps,
        "epochs": round(steps / epoch_steps, 3),
        **plan,
    }


def _load_best(model, recorder, run: Path, state: dict[str, Any]) -> None:
    """Give ``model`` the best validation epoch's weights."""
    if recorder.best_weights is not None:
        model.set_weights(recorder.best_weights)
    else:  # the best epoch was in an earlier session of a resumed run
        best = modelfile.load_keras(run / runs.CHECKPOINT_DIR / state["best_checkpoint"], compile=False)
        model.set_weights(best.get_weights())


def _diverged(config, dataset, specs, run, evaluator, model, recorder, state, found, val_data, test_data):
    """Record a divergence (metrics.json and state.json say so, in strict JSON) and raise
    :class:`TrainingDiverged` with what happened and what to do."""
    advice = divergence_advice(config)
    described = {
        "epoch": found.epoch,
        "step": found.step,
        "where": found.where,
        "loss": str(found.loss),  # as text: "nan" and "inf" are no JSON numbers
        "learning_rate": found.rate,
        "advice": advice,
    }
    if state["best_checkpoint"]:  # an earlier epoch finished: its model stays usable
        _load_best(model, recorder, run, state)
        pipelines = {"val": val_data, "test": test_data}
        metrics = _final_metrics(evaluator, dataset, pipelines, specs, state, model, recorder.best_parts)
        kept = (
            f"model.keras keeps epoch {state['best_epoch']}, the best before it (validation accuracy "
            f"{100 * state['best_val_accuracy']:.2f}%)"
        )
    else:
        metrics = {"best_epoch": 0, "epochs": state["epoch"], "train_seconds": state["elapsed_s"]}
        kept = "no epoch had finished, so no model was saved"
    metrics["diverged"] = described
    runs.write_json(run / runs.METRICS_FILE, metrics)
    state["diverged"] = described
    runs.commit_checkpoint(run, state, best_changed=False)
    raise TrainingDiverged(
        f"training diverged: the {found.where} loss {found.what} at epoch {found.epoch}, step "
        f"{found.step} (learning rate {found.rate:.3g}). {kept}; {run / runs.METRICS_FILE} marks the run "
        f"as diverged. To fix: {advice}."
    )


def _final_metrics(evaluator, dataset, pipelines, specs, state, model, known) -> dict[str, Any]:
    """Validation and test metrics of the best model (``known``: already measured;
    else evaluated on the epochs' own ``pipelines``)."""
    metrics: dict[str, Any] = {
        "best_epoch": state["best_epoch"],
        "epochs": state["epoch"],
        "train_seconds": state["elapsed_s"],
        "parameters": int(model.count_params()),
    }
    for name in ("val", "test"):
        split = dataset.splits[name]
        if known is not None:
            values = known[name]
        else:
            logs = evaluator.evaluate(pipelines[name], verbose=0, return_dict=True)
            values = standard_metrics(logs, specs)
        for key, value in values.items():
            metrics[f"{name}_{key}"] = value
        metrics[f"{name}_images"] = len(split)
    metrics["train_images"] = len(dataset.train)
    return metrics
