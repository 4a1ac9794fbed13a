"""What watches a run while it trains (Keras callbacks): the per-epoch evaluation and
records (history.csv, checkpoints, TensorBoard), divergence and not-learning checks with
advice, the plateau schedule and the time budget's progress."""

from __future__ import annotations

import datetime
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fruitcnn import runs
from fruitcnn.config import RunConfig
from fruitcnn.plots import confusion_figure, png_bytes
from fruitcnn.training.models import standard_metrics
from heads import (
    HeadSpec,
    confusion_metrics,
)

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
# Resolution of the confusion-matrix images in TensorBoard (dots per inch).
_TENSORBOARD_DPI = 72
# Up to this many classes the TensorBoard confusion image names them; beyond, indices.
_TENSORBOARD_NAMED_CLASSES = 40


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

    def __init__(self, evaluator, val_data, evaluate):
        super().__init__()
        self.evaluator, self.val_data, self.evaluate = evaluator, val_data, evaluate
        self.confusions: dict[str, np.ndarray] = {}  # per head, of the last evaluation

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        results = self.evaluate(self.evaluator, self.val_data)
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
        evaluate,
        sync=None,
    ):
        super().__init__()
        self.evaluate = evaluate  # (model, pipeline) -> Keras's logs (fruitcnn.training.engine)
        # gives the saved model the trainer's weights (a mixed-precision run's float32 copy;
        # None: it shares the trainer's layers)
        self.sync = sync
        self.config = config
        self.run, self.trainer, self.evaluator, self.plain, self.specs = run, trainer, evaluator, model, specs
        self.validation = validation
        self.test_data, self.history, self.plateau = test_data, history, plateau
        self.state = state
        self.best_weights = None
        # the saved model's val/test figures at the best epoch (None: not measured in
        # the epochs: no per-epoch test, or a mixed-precision run's float32 copy)
        self.best_parts: dict[str, dict[str, float]] | None = None
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
            test_logs = self.evaluate(self.evaluator, self.test_data)
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
            if self.sync is not None:
                self.sync()
            best = runs.checkpoint_name("best", number)
            runs.atomic_write(folder / best, self.plain.save)
            self.best_weights = self.plain.get_weights()
            self.best_parts = parts if "test" in parts and self.sync is None else None
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
