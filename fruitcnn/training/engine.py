"""How a run's steps execute: :class:`Engine` builds the models inside the strategy's
scope, splits the input over the replicas, fits and evaluates.

``default`` and ``mirrored`` fit with Keras's own ``fit`` and ``evaluate`` (Keras splits
each global batch over the local replicas). ``multiworker`` cannot (Keras 3's ``fit``
and ``evaluate`` fail under ``MultiWorkerMirroredStrategy``: tensorflow/tensorflow#72388,
keras-team/keras#20585), so :meth:`Engine.fit` runs the model's own ``train_step`` in a
``strategy.run`` loop that calls the callbacks as ``fit`` does (the same logs: Keras's
metrics, summed over every replica), and :meth:`Engine.evaluate` its ``test_step``.
Either way each global batch of ``batches`` is split into one contiguous part per
replica (``part=``), so the replicas together see exactly the batches (and augmentation)
of a one-process run, and fruitcnn's batch norm computes the global batch's statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fruitcnn.budget import BudgetPlanner, PlannedDecay
from fruitcnn.distributed import cluster, make_strategy

# Errors with which a collective ends when another worker stopped or cannot be reached.
PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


class Engine:
    """The strategy of ``--strategy name`` and how fit and evaluate run under it.

    Attributes:
        name: ``default``, ``mirrored`` or ``multiworker``.
        strategy: the ``tf.distribute`` strategy.
        replicas: replicas in sync (devices over all workers).
        cluster: this worker's place (``multiworker``), else None.
        loop: True when fit and evaluate are fruitcnn's ``strategy.run`` loop.
    """

    def __init__(self, name: str = "default"):
        self.name = name
        self.strategy = make_strategy(name)
        self.replicas = int(self.strategy.num_replicas_in_sync)
        self.cluster = cluster() if name == "multiworker" else None
        self.loop = name == "multiworker"
        # traced step functions: per model, and the chief's broadcast
        self._train: dict[int, Any] = {}
        self._test: dict[int, Any] = {}
        self._broadcast = None

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder (always, but for a worker)."""
        return self.cluster is None or self.cluster.is_chief

    def scope(self):
        """The strategy's scope: models and optimizers made in it are replicated."""
        return self.strategy.scope()

    def check_batch(self, batch_size: int) -> None:
        """Every replica needs at least one image of each batch.

        Raises:
            ValueError: the batch is smaller than the number of replicas.
        """
        if batch_size < self.replicas:
            raise ValueError(
                f"--batch-size {batch_size} is the global batch, split over {self.replicas} replicas; "
                f"give at least {self.replicas} (one image per replica), better a multiple of it."
            )

    def pipeline(self, make: Callable[..., tf.data.Dataset]):
        """The input of fit or evaluate: ``make(part=None)`` whole batches for Keras,
        or for the loop one part per replica of each batch: ``make(part=(first,
        parts_here, parts))`` on every worker."""
        if not self.loop:
            return make(part=None)

        def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
            local = self.replicas // context.num_input_pipelines
            return make(part=(context.input_pipeline_id * local, local, self.replicas))

        return self.strategy.distribute_datasets_from_function(per_worker)

    def eval_batch(self, count: int, size: int) -> int:
        """An evaluation batch size near ``size`` whose last batch still gives every
        replica an image (an empty part would make its mean loss 0/0)."""
        while self.loop and 0 < count % size < self.replicas:
            size += 1
        return size

    def fit(
        self,
        trainer: keras.Model,
        data,
        *,
        epochs: int,
        initial_epoch: int,
        steps_per_epoch: int,
        callbacks: Sequence[keras.callbacks.Callback],
        verbose: int | str,
        agree: Callable[[], None] | None = None,
    ) -> None:
        """``trainer.fit`` (default, mirrored) or the same protocol in a ``strategy.run``
        loop (multiworker). ``agree``, called after the callbacks of every step and
        epoch, makes decisions that depend on this worker's clock (a time budget's
        plan and stop) the chief's."""
        if not self.loop:
            trainer.fit(
                data,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                callbacks=list(callbacks),
                shuffle=False,
                verbose=verbose,
            )
            return
        verbose = 1 if verbose == "auto" else int(verbose)
        callback_list = keras.callbacks.CallbackList(
            list(callbacks),
            add_history=False,
            add_progbar=verbose != 0,
            verbose=verbose,
            epochs=epochs,
            steps=steps_per_epoch,
            model=trainer,
        )
        step = self._train_function(trainer)
        trainer.stop_training = False
        callback_list.on_train_begin()
        iterator = iter(data)
        epoch_logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            trainer.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            logs: dict[str, float] = {}
            for batch in range(steps_per_epoch):
                callback_list.on_train_batch_begin(batch)
                logs = _floats(step(iterator))
                callback_list.on_train_batch_end(batch, logs)
                if agree is not None:
                    agree()
                if trainer.stop_training:
                    break
            epoch_logs = dict(logs)
            callback_list.on_epoch_end(epoch, epoch_logs)
            if agree is not None:
                agree()
            if trainer.stop_training:
                break
        callback_list.on_train_end(logs=epoch_logs)

    def evaluate(self, model: keras.Model, data) -> dict[str, float]:
        """Keras's ``evaluate(..., return_dict=True)``: the compiled losses and
        metrics over ``data`` (every replica's part summed)."""
        if not self.loop:
            return model.evaluate(data, verbose=0, return_dict=True)
        model.reset_metrics()
        step = self._test_function(model)
        for batch in data:
            step(batch)
        return _floats(model.get_metrics_result())

    def summary(self, model: keras.Model) -> dict[str, Any]:
        """metrics.json's ``distributed``: the strategy, workers, replicas, and how
        far the workers' weights differ at the end (:meth:`disagreement`)."""
        return {
            "strategy": self.name,
            "workers": self.cluster.workers if self.cluster else 1,
            "replicas": self.replicas,
            "weights_disagreement": self.disagreement(model),
        }

    def from_chief(self, values: Sequence[float]) -> np.ndarray:
        """``values`` as the chief has them, on every worker."""
        return self._summed(values, chief_only=True)

    def disagreement(self, model: keras.Model) -> float:
        """How far the workers' copies of ``model``'s weights differ: the sum over the
        workers of the largest difference of a weight tensor's sum from the chief's
        (0.0 when they agree, as synchronous training keeps them)."""
        if not self.loop:
            return 0.0
        local = np.array([np.sum(weight, dtype=np.float64) for weight in model.get_weights()])
        apart = float(np.max(np.abs(self.from_chief(local) - local), initial=0.0))
        return float(self._summed([apart], chief_only=False)[0])

    def _summed(self, values: Sequence[float], chief_only: bool) -> np.ndarray:
        """The sum over the workers of ``values`` (each worker's first replica; with
        ``chief_only`` the chief's alone), on every worker."""
        if not self.loop:
            return np.asarray(values, dtype=np.float64)
        if self._broadcast is None:

            @tf.function
            def broadcast(local, chief_only):
                def replica(local):
                    context = tf.distribute.get_replica_context()
                    local_replicas = self.replicas // self.cluster.workers
                    first = context.replica_id_in_sync_group % local_replicas == 0
                    chief = context.replica_id_in_sync_group == 0
                    mine = tf.where(tf.where(chief_only, chief, first), local, tf.zeros_like(local))
                    return context.all_reduce("sum", mine)

                return self.strategy.run(replica, args=(local,))

            self._broadcast = broadcast
        result = self._broadcast(tf.constant(np.asarray(values, dtype=np.float64)), tf.constant(chief_only))
        return self.strategy.experimental_local_results(result)[0].numpy()

    def _train_function(self, trainer: keras.Model):
        key = id(trainer)
        if key not in self._train:

            @tf.function
            def train(iterator):
                self.strategy.run(trainer.train_step, args=(next(iterator),))
                return trainer.get_metrics_result()  # cross-replica: summed over every replica

            self._train[key] = train
        return self._train[key]

    def _test_function(self, model: keras.Model):
        key = id(model)
        if key not in self._test:

            @tf.function
            def test(batch):
                self.strategy.run(model.test_step, args=(batch,))

            self._test[key] = test
        return self._test[key]


def chief_plan(engine: Engine, trainer, planner: BudgetPlanner):
    """After every step and epoch of a multi-worker run: the chief's time-budget
    decisions (stop now; the decay's end) on every worker, whose own clocks differ."""
    schedule = getattr(trainer.optimizer, "_learning_rate", None)
    planned = schedule if isinstance(schedule, PlannedDecay) else None

    def agree() -> None:
        mine = [float(trainer.stop_training), float(planner.total_steps or 0)]
        if planned is not None:
            mine += [float(planned.total_steps.numpy()), float(planned.anchor_step.numpy())]
            mine += [float(planned.anchor_progress.numpy())]
        chief = engine.from_chief(mine)
        trainer.stop_training = bool(chief[0])
        planner.total_steps = int(chief[1]) or None
        if planned is not None:
            planned.total_steps.assign(chief[2])
            planned.anchor_step.assign(chief[3])
            planned.anchor_progress.assign(chief[4])

    return agree


def peer_failure(engine: Engine, run: Path, state: dict[str, Any] | None, error: Exception) -> str:
    """What to say when a collective failed because another worker stopped (``state``:
    the run's, None when no run existed yet)."""
    cause = str(getattr(error, "message", error)).strip().splitlines()
    first = next((line for line in cause if line.strip()), type(error).__name__)
    where = engine.cluster.describe() if engine.cluster else engine.name
    kept = "no epoch had finished; start every worker again"
    if state is not None and state["epoch"]:
        kept = f"{run} is intact up to epoch {state['epoch']}; restart every worker with --resume {run}"
    return (
        f"another worker stopped or cannot be reached ({where}: {type(error).__name__}: {first[:300]}); "
        f"its own output says why. {kept}."
    )


def _floats(logs: dict[str, Any]) -> dict[str, float]:
    return {name: float(keras.ops.convert_to_numpy(value)) for name, value in logs.items()}
