"""The training loop: :func:`train` (start or resume a run, fit, keep the best epoch,
the final metrics), the run folder's state and what a run that diverged leaves behind."""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from fruitcnn import modelfile, runs
from fruitcnn.budget import MAX_EPOCHS, BudgetPlanner, PlannedDecay, budget_summary
from fruitcnn.config import RunConfig
from fruitcnn.data import Dataset, load_dataset
from fruitcnn.distributed import scratch_folder
from fruitcnn.model import build_model, plan_layers, whitening_filters, with_precision
from fruitcnn.training.engine import PEER_ERRORS, Engine, chief_plan, peer_failure
from fruitcnn.training.models import (
    batches,
    channel_statistics,
    eval_batch_size,
    evaluation_model,
    head_specs,
    make_optimizer,
    saved_evaluator,
    saved_model,
    standard_metrics,
    steps_per_epoch,
    training_model,
)
from fruitcnn.training.watch import (
    _BudgetProgress,
    _Diverged,
    _DivergenceGuard,
    _EpochRecorder,
    _Plateau,
    _Validation,
    divergence_advice,
)
from heads import (
    HeadSpec,
    compile_arguments,
)

# Errors of a write that mean the disk (or the process's file-size limit) is full.
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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

    Under ``--strategy multiworker`` every worker calls this with the same arguments;
    the chief trains into ``run_dir``, the others into a temporary folder (for a resume
    a copy of ``run_dir``, which they must be able to read) that is removed at the end,
    and they print nothing but errors.

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
            from its last committed epoch once there is space), or another worker of a
            multi-worker run stopped.
    """
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run folder (run_dir) to continue.")
    engine = Engine(config.train.strategy)
    dataset = dataset if dataset is not None else load_dataset(config.data)
    specs = check_run(config, dataset)
    engine.check_batch(config.train.batch_size)
    if not engine.is_chief:  # the chief alone writes the run; this worker's copy is temporary
        with scratch_folder(Path(run_dir) if resume else None) as scratch:
            return _train_in(engine, config, dataset, specs, scratch, True, resume, callbacks, 0, "")
    if run_dir is None:
        run = runs.create_run_folder(runs.DEFAULT_ROOT, runs.new_run_name(config.data.dataset, config.head))
        created = True
    else:
        run, created = runs.check_out_folder(Path(run_dir)), not Path(run_dir).exists()
    return _train_in(
        engine, config, dataset, specs, run, created, resume, callbacks, verbose, interrupt_advice
    )


def _train_in(engine, config, dataset, specs, run, created, resume, callbacks, verbose, interrupt_advice):
    with runs.hold(run, "resuming" if resume else "training", created=created):
        keras.utils.set_random_seed(config.train.seed)
        try:  # several workers: making the variables is their first collective
            with engine.scope():
                if resume:
                    trainer, state, history = _restore(run, config, dataset, specs)
                else:
                    trainer, state, history = _start(run, config, dataset, specs)
                model, sync = saved_model(trainer, specs)
        except PEER_ERRORS as error:
            known = runs.read_state(run) if resume else None
            raise TrainingFailed(peer_failure(engine, run, known, error)) from None
        result = _fit(
            engine,
            config,
            dataset,
            specs,
            run,
            trainer,
            (model, sync),
            state,
            history,
            callbacks,
            verbose,
            interrupt_advice,
        )
        if engine.loop:  # a copy outside the strategy: using it alone needs no other worker
            result.model = modelfile.load_keras(run / runs.MODEL_FILE, compile=False)
        return result


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
    if config.train.precision != "float32":  # the steps compute in it; model.keras stays float32
        model = with_precision(model, config.train.precision, keep_float32=[spec.name for spec in specs])
    trainer = training_model(model, specs)
    steps = steps_per_epoch(len(dataset.train), config.train.batch_size)
    trainer.compile(
        make_optimizer(config.train, steps),
        **compile_arguments(specs, label_smoothing=config.train.label_smoothing),
    )
    runs.write_json(run / runs.CONFIG_FILE, config.to_dict())
    runs.write_json(run / runs.DATA_FILE, data_description(dataset))
    runs.write_json(run / runs.CLASSES_FILE, {spec.name: list(spec.class_names) for spec in specs})
    runs.record_environment(run, "start", strategy=config.train.strategy)
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
    runs.record_environment(run, "resume", strategy=config.train.strategy)
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
    engine, config, dataset, specs, run, trainer, saved, state, history, callbacks, verbose, interrupt_advice
) -> TrainResult:
    model, sync = saved  # the saved model and what gives it the trainer's weights (or None)
    settings = config.train
    budget = settings.time_budget
    last_epoch = MAX_EPOCHS if budget else settings.epochs  # a budget plans its own end
    steps = steps_per_epoch(len(dataset.train), settings.batch_size)
    train_data = engine.pipeline(
        lambda part: batches(
            dataset.train,
            specs,
            settings.batch_size,
            shuffle_seed=settings.seed,
            first_epoch=state["epoch"],
            end_epoch=last_epoch,
            augment=config.augment,
            part=part,
        )[0]
    )

    def evaluation_data(split):
        size = engine.eval_batch(len(split), eval_batch_size(config))
        return engine.pipeline(lambda part: batches(split, specs, size, part=part)[0])

    val_data, test_data = evaluation_data(dataset.val), evaluation_data(dataset.test)
    plateau = None
    if settings.schedule == "plateau":
        plateau = _Plateau(
            state.get("plateau"),
            monitor="val_loss",
            factor=settings.plateau_factor,
            patience=settings.plateau_patience,
            verbose=1 if verbose else 0,
        )
    with engine.scope():
        evaluator = evaluation_model(trainer, specs, settings.tta)
        # metrics.json's figures are the saved model's: a mixed-precision run's (float32)
        # model is evaluated once more at the end (the recorder keeps no epoch figures)
        final = evaluator if sync is None else saved_evaluator(model, specs, settings)
    validation = _Validation(evaluator, val_data, engine.evaluate)
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
        engine.evaluate,
        sync,
    )
    own = [_DivergenceGuard(), validation] + ([plateau] if plateau else []) + [recorder]
    agree = None
    if budget:  # Keras's progress would count to the epoch bound: one line per epoch instead
        planner = _planner(config, dataset, trainer, state, steps)
        own.append(planner)
        agree = chief_plan(engine, trainer, planner) if engine.loop else None
        own.extend([_BudgetProgress(budget, recorder)] if verbose else [])
        verbose = 0
    all_callbacks = own + list(callbacks)
    if (state["elapsed_s"] < budget) if budget else (state["epoch"] < settings.epochs):
        try:
            engine.fit(  # batches() shuffles, seeded per epoch
                trainer,
                train_data,
                epochs=last_epoch,
                initial_epoch=state["epoch"],
                steps_per_epoch=steps,
                callbacks=all_callbacks,
                verbose=verbose,
                agree=agree,
            )
        except KeyboardInterrupt:
            recorder.close()
            if interrupt_advice is not None:
                advice = interrupt_advice
            elif state["epoch"] == 0:
                advice = "no epoch had finished, so there is nothing to resume; run the same command again"
            elif engine.cluster is not None:
                workers = engine.cluster.workers
                advice = (
                    f"continue with every worker: train.py --resume {run} (on this machine: "
                    f"python -m fruitcnn.distributed --workers {workers} -- train.py --resume {run})"
                )
            else:
                advice = f"continue with: python train.py --resume {run}"
            if advice:
                print(f"\ninterrupted after epoch {state['epoch']}; {advice}", file=sys.stderr)
            raise
        except _Diverged as found:
            recorder.close()
            pipelines = {"val": val_data, "test": test_data}
            _diverged(engine, config, dataset, specs, run, final, model, recorder, state, found, pipelines)
        except PEER_ERRORS as error:
            recorder.close()
            raise TrainingFailed(peer_failure(engine, run, state, error)) from None
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
        engine.evaluate,
        final,
        dataset,
        {"val": val_data, "test": test_data},
        specs,
        state,
        model,
        recorder.best_parts,
    )
    if state.get("warnings"):
        metrics["warnings"] = list(state["warnings"])
    if engine.name != "default":
        metrics["distributed"] = engine.summary(trainer)
    if budget:
        done = int(keras.ops.convert_to_numpy(trainer.optimizer.iterations))
        final_rate = float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate))
        metrics["time_budget"] = {
            **budget_summary(state, done, steps, budget),
            "final_learning_rate": final_rate,
        }
    runs.write_json(run / runs.METRICS_FILE, metrics)
    state["finished"] = True
    runs.commit_checkpoint(run, state, best_changed=False)
    return TrainResult(run, model, history, metrics)


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


def _load_best(model, recorder, run: Path, state: dict[str, Any]) -> None:
    """Give ``model`` the best validation epoch's weights."""
    if recorder.best_weights is not None:
        model.set_weights(recorder.best_weights)
    else:  # the best epoch was in an earlier session of a resumed run
        best = modelfile.load_keras(run / runs.CHECKPOINT_DIR / state["best_checkpoint"], compile=False)
        model.set_weights(best.get_weights())


def _diverged(engine, config, dataset, specs, run, evaluator, model, recorder, state, found, pipelines):
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
        metrics = _final_metrics(
            engine.evaluate, evaluator, dataset, pipelines, specs, state, model, recorder.best_parts
        )
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


def _final_metrics(evaluate, evaluator, dataset, pipelines, specs, state, model, known) -> dict[str, Any]:
    """Validation and test metrics of the best model (``known``: already measured;
    else ``evaluate(evaluator, pipeline)`` on the epochs' own ``pipelines``)."""
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
            logs = evaluate(evaluator, pipelines[name])
            values = standard_metrics(logs, specs)
        for key, value in values.items():
            metrics[f"{name}_{key}"] = value
        metrics[f"{name}_images"] = len(split)
    metrics["train_images"] = len(dataset.train)
    return metrics
