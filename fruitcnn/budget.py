"""Time budgets: fit a whole training schedule into a number of seconds.

``train.py --time-budget 300`` (or ``5m``) trains for as many optimisation steps as fit
into the budget, with the learning rate reaching the end of its schedule (zero for
``cosine`` and ``linear``) at the last step. The budget counts the optimisation steps
and the evaluations after every epoch (what ``history.csv``'s ``elapsed_s`` counts,
summed over resumed sessions); loading the data, building the model, the final
evaluation of the best model and the report are outside it.

How: :class:`BudgetPlanner` times the first steps of each session (the first
``CALIBRATION_SKIP`` are left out: they include tracing), plans the number of steps that
fit into the time left, with an evaluation at every epoch end, and plans again at the
end of every epoch with that epoch's measured step time and the median of the last three
evaluation times, and at every step less than an epoch before the planned end. It keeps
one evaluation's time in reserve, spent only when an epoch end finds no further step
fitting while the decay has steps left (after an evaluation slower than planned, up to
twice as long): a run therefore ends up to about one evaluation before its budget. The
plan sets the step at which training stops (mid-epoch: the last epoch is then partial and
evaluated like any other) and the ``total_steps`` of :class:`PlannedDecay`, the
schedule the learning rate follows, so a re-plan moves the end of the decay, not the
rate already used. A run is therefore as long as the machine is fast: its number of
steps is machine-dependent, unlike an ``--epochs`` run.
"""

from __future__ import annotations

import math
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# Steps left out of the first timing of a session (tracing, warm caches).
CALIBRATION_SKIP = 3
# Steps timed before the first plan: this share of an epoch, within these bounds.
CALIBRATION_SHARE, CALIBRATION_MIN, CALIBRATION_MAX = 0.1, 5, 50
# The plan keeps this share of the time left in reserve for jitter of the step times,
# and this many evaluations' time for an evaluation slower than measured (see _plan).
SAFETY, RESERVE_EVALS = 0.01, 1.0
# The planned evaluation time is the median of the last this many measured.
EVAL_MEDIAN = 3
# At most this share of the planned steps warms up (a short budget keeps a decay).
MAX_WARMUP_SHARE = 0.5
# Upper bound of the epochs of a budget run (the planner stops it long before).
MAX_EPOCHS = 100_000


@keras.saving.register_keras_serializable(package="fruitcnn")
class PlannedDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then ``cosine`` or
    ``linear`` decay to 0 at ``total_steps``, an end a time budget may move while the
    run goes on (:meth:`set_total`). A move never makes the rate jump: the decay goes on
    from where it is (its progress at that step) to 0 at the new end, so the rate falls
    without a break or rise. With a fixed end and ``cosine`` it equals Keras's
    ``CosineDecay`` with warm-up.

    Args:
        peak: the learning rate after the warm-up.
        warmup_steps: steps of the warm-up (at most half of ``total_steps``).
        total_steps: the step at which the rate reaches 0.
        shape: ``cosine`` or ``linear``.
        anchor_step, anchor_progress: where the last move happened and the decay's
            progress (0..1) there (0, 0: no move yet).
    """

    SHAPES = ("cosine", "linear")

    def __init__(self, peak, warmup_steps, total_steps, shape="cosine", anchor_step=0, anchor_progress=0.0):
        if shape not in self.SHAPES:
            raise ValueError(f"decay shape {shape!r}? expected one of {', '.join(self.SHAPES)}.")
        self.peak, self.warmup_steps, self.shape = float(peak), int(warmup_steps), shape

        def variable(value):
            return tf.Variable(float(value), trainable=False, dtype=tf.float32)

        self.total_steps = variable(max(1, total_steps))
        self.anchor_step, self.anchor_progress = variable(anchor_step), variable(anchor_progress)

    def _warmup(self):
        return tf.minimum(float(self.warmup_steps), MAX_WARMUP_SHARE * self.total_steps)

    def progress(self, step):
        """How far the decay is at ``step``, 0 (peak) .. 1 (zero)."""
        step, warmup = tf.cast(step, tf.float32), self._warmup()
        start = tf.maximum(self.anchor_step, warmup)
        left = tf.maximum(self.total_steps - start, 1.0)
        done = self.anchor_progress + (1.0 - self.anchor_progress) * (step - start) / left
        return tf.clip_by_value(done, 0.0, 1.0)

    def __call__(self, step):
        step, warmup = tf.cast(step, tf.float32), self._warmup()
        progress = self.progress(step)
        if self.shape == "cosine":
            decayed = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            decayed = self.peak * (1.0 - progress)
        return tf.where(step < warmup, self.peak * step / tf.maximum(warmup, 1.0), decayed)

    def set_total(self, steps: int, at_step: int = 0) -> None:
        """Move the end of the decay to ``steps``; the decay goes on from its progress at
        ``at_step`` (the current step)."""
        at_step = float(at_step)
        reached = float(self.progress(at_step)) if at_step >= float(self._warmup()) else 0.0
        self.anchor_step.assign(max(at_step, 0.0))
        self.anchor_progress.assign(reached)
        self.total_steps.assign(float(max(1, steps)))

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": int(self.total_steps.numpy()),
            "shape": self.shape,
            "anchor_step": int(self.anchor_step.numpy()),
            "anchor_progress": float(self.anchor_progress.numpy()),
        }


def steps_that_fit(
    seconds_left: float, step_s: float, eval_s: float, done_in_epoch: int, epoch_steps: int
) -> int:
    """The most further optimisation steps that fit into ``seconds_left`` when each costs
    ``step_s`` and every epoch end they reach (a partial last epoch's too) costs
    ``eval_s``; ``done_in_epoch`` steps of the current epoch are done already."""
    usable = seconds_left * (1.0 - SAFETY)
    if usable <= 0 or step_s <= 0:
        return 0
    best, ends = 0, 1
    while ends <= MAX_EPOCHS:
        before = (ends - 1) * epoch_steps - done_in_epoch  # more steps than this reach end number `ends`
        if max(before, 0) * step_s + ends * eval_s > usable:
            break  # not even one step past the previous end fits
        most = min(ends * epoch_steps - done_in_epoch, int((usable - ends * eval_s) / step_s))
        if most > max(before, 0):
            best = most
        ends += 1
    return best


class BudgetPlanner(keras.callbacks.Callback):
    """Stops training when the planned steps are done and keeps the schedule's end there
    (see the module docstring). Runs after fruitcnn's recorder, so an epoch's
    evaluation time is measured when it plans again.

    Args:
        budget_s: the time budget in seconds.
        prior_s: seconds spent by earlier sessions of a resumed run.
        epoch_steps: optimisation steps of a full epoch.
        schedule: the optimizer's :class:`PlannedDecay`, or None (constant, step,
            plateau: only the stop is planned).
        eval_steps: forward passes of a training batch's size that an epoch end's
            evaluations make (the first estimate of their time, before one is measured).
        record: receives the plan after each planning (kept in state.json and
            metrics.json).
    """

    def __init__(self, budget_s, prior_s, epoch_steps, schedule, eval_steps, record):
        super().__init__()
        self.budget_s, self.prior_s, self.epoch_steps = float(budget_s), float(prior_s), int(epoch_steps)
        self.schedule, self.eval_steps, self.record = schedule, float(eval_steps), record
        self.calibration = min(CALIBRATION_MAX, max(CALIBRATION_MIN, int(CALIBRATION_SHARE * epoch_steps)))
        # (an epoch of fewer steps than this is timed whole, from its second epoch on)
        self.total_steps: int | None = None
        self.step_s: float | None = None
        self.evals: list[float] = []  # the measured epoch ends' evaluation times, newest last
        self.plans = 0

    def on_train_begin(self, logs=None):
        self.session_start = time.monotonic()
        self.session_steps, self.session_epochs = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.timed_from: tuple[float, int] | None = None
        self.epoch_start = (time.monotonic(), self.session_steps)

    def on_train_batch_end(self, batch, logs=None):
        self.session_steps += 1
        now = self.last_step_end = time.monotonic()
        # timed from the end of an epoch's first step; in a session's first epoch from the
        # CALIBRATION_SKIP-th (the first steps include tracing)
        if self.timed_from is None and (self.session_epochs or self.session_steps >= CALIBRATION_SKIP):
            self.timed_from = (now, self.session_steps)
            return
        timed = self.session_steps - self.timed_from[1] if self.timed_from else 0
        if self.step_s is None and timed == self.calibration:
            self.step_s = (now - self.timed_from[0]) / timed
            self._plan(now, done_in_epoch=batch + 1)
        if self.total_steps is None:
            return
        step = self._step()  # (a read of the optimizer's counter: once per step)
        left = self.total_steps - step
        # At the planned end, plan again with this epoch's steps so far (stop only if nothing
        # more fits); less than an epoch before it, plan at every step: a slowdown then moves
        # the decay's end while there are steps left to decay, instead of an epoch end
        # finding the time up with the rate short of its end.
        if timed and (left <= 0 or (left <= self.epoch_steps and timed >= CALIBRATION_MIN)):
            self.step_s = (now - self.timed_from[0]) / timed
            self._plan(now, done_in_epoch=batch + 1)
        if step >= self.total_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        self.session_epochs += 1
        if self.model.stop_training:  # the plan ended inside this epoch: its decay ends here too
            return
        if self.timed_from and self.session_steps > self.timed_from[1]:  # this epoch's own step time
            self.step_s = (self.last_step_end - self.timed_from[0]) / (
                self.session_steps - self.timed_from[1]
            )
        self.evals = [*self.evals[-(EVAL_MEDIAN - 1) :], now - self.last_step_end]
        steps_in_epoch = self.session_steps - self.epoch_start[1]
        if self.step_s is None and self.session_epochs > 1 and steps_in_epoch:
            # epochs too short to time steps within them (fewer than the calibration's):
            # a whole epoch's steps, timed from its start (not the session's first epoch)
            self.step_s = (self.last_step_end - self.epoch_start[0]) / steps_in_epoch
        if self.step_s is not None:
            self._plan(now, done_in_epoch=0)
        spent = self.prior_s + now - self.session_start
        planned_end = self.total_steps is not None and self._step() >= self.total_steps
        if planned_end or spent >= self.budget_s:  # the time is up whatever the plan says
            self.model.stop_training = True

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _plan(self, now: float, done_in_epoch: int) -> None:
        # before an epoch end was measured: a forward pass costs about a third of a step
        # (the median of the last few measured: one slow evaluation does not make the plan
        # expect every later one to be as slow)
        eval_s = float(np.median(self.evals)) if self.evals else self.eval_steps * self.step_s / 3
        left = self.budget_s - (self.prior_s + now - self.session_start)
        step = self._step()
        # one evaluation's time is kept in reserve, and spent only when nothing more fits
        # while the decay has steps left: an evaluation slower than planned (up to twice
        # the measured one) then still lets the decay reach its end
        more = steps_that_fit(
            left - RESERVE_EVALS * eval_s, self.step_s, eval_s, done_in_epoch, self.epoch_steps
        )
        if more == 0 and self.total_steps is not None and step < self.total_steps:
            more = steps_that_fit(left, self.step_s, eval_s, done_in_epoch, self.epoch_steps)
        self.total_steps = min(step + more, MAX_EPOCHS * self.epoch_steps)
        if self.schedule is not None:
            self.schedule.set_total(self.total_steps, at_step=step)
        self.plans += 1
        self.record(
            {
                "budget_s": self.budget_s,
                "planned_steps": self.total_steps,
                "step_ms": round(1000 * self.step_s, 3),
                "eval_s_per_epoch": round(eval_s, 3),
                "plans": self.plans,
            }
        )


def budget_summary(state: dict[str, Any], steps: int, epoch_steps: int, budget_s: float) -> dict[str, Any]:
    """How a time budget was spent, for metrics.json and the report: the budget, the
    seconds used, optimisation steps and epochs (a partial last epoch as a fraction),
    and the last plan (step time, evaluation time per epoch, number of plans: 0 when the
    time ran out before the first plan, on a slow machine with a budget that short)."""
    plan = {"plans": 0, **(state.get("budget") or {})}
    plan.pop("budget_s", None)
    return {
        "budget_s": float(budget_s),
        "used_s": round(float(state["elapsed_s"]), 3),
        "steps": steps,
        "epochs": round(steps / epoch_steps, 3),
        **plan,
    }
