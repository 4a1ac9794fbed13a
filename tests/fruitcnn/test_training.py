"""The one training path: learning, the run folder, best-on-validation, resume."""

import dataclasses
import json
import math

import keras
import numpy as np
import pytest

import fruitcnn
from fruitcnn import runs
from fruitcnn.config import DataConfig, RunConfig, TrainConfig
from fruitcnn.training import train
from fruitcnn.training.engine import Engine

FAST = TrainConfig(epochs=3, batch_size=32, learning_rate=0.01, warmup_epochs=0.0)


class _StopAfter(keras.callbacks.Callback):
    """Simulates Ctrl-C at the end of an epoch (after fruitcnn saved it)."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


def _tags(folder):
    """Scalar tags in a folder's TensorBoard event files."""
    import tensorflow as tf

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    return tags


class _StopInFirstEpoch(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            raise KeyboardInterrupt


def _config(head="single", **train_changes):
    fields = {**FAST.__dict__, **train_changes}
    return RunConfig(data=DataConfig(images_per_class=24, seed=3), train=TrainConfig(**fields), head=head)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, small_line):
    return train(_config(), dataset=small_line, run_dir=tmp_path_factory.mktemp("runs") / "single", verbose=0)


def test_accuracy_clearly_rises(single_run):
    history = single_run.history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    chance = 1 / 96
    assert history[-1]["val_accuracy"] > history[0]["val_accuracy"] + 0.1
    assert single_run.metrics["test_accuracy"] > 10 * chance
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_run_folder_contract(single_run):
    run = single_run.run_dir
    for name in (
        "model.keras",
        "config.json",
        "classes.json",
        "history.csv",
        "metrics.json",
        "data.json",
        "environment.json",
        "checkpoint/state.json",
    ):
        assert (run / name).is_file(), name
    data = json.loads((run / "data.json").read_text())
    assert data["image_shape"] == [28, 28, 3] and data["classes"] == 96 and data["format"] == "generated"
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["finished"] and state["epoch"] == 3
    assert state["last_checkpoint"] == "epoch-0003.keras"
    assert state["best_checkpoint"] == f"best-{single_run.metrics['best_epoch']:04d}.keras"
    kept = sorted(path.name for path in (run / "checkpoint").glob("*.keras"))
    assert kept == sorted({state["last_checkpoint"], state["best_checkpoint"]})
    best_bytes = (run / "checkpoint" / state["best_checkpoint"]).read_bytes()
    assert (run / "model.keras").read_bytes() == best_bytes
    assert any((run / "tb").rglob("events.out.tfevents.*"))
    # test scalars carry Keras's tag names, so they overlay the train/validation curves
    assert _tags(run / "tb" / "test") and _tags(run / "tb" / "test") <= _tags(run / "tb" / "train")
    # validation adds the confusion-matrix image of every head to the same scalars
    assert _tags(run / "tb" / "validation") == _tags(run / "tb" / "test") | {"confusion/class"}
    assert {"epoch_macro_f1", "epoch_accuracy"} <= _tags(run / "tb" / "test")
    assert "epoch_learning_rate" in _tags(run / "tb" / "train")
    classes = json.loads((run / "classes.json").read_text())
    assert list(classes) == ["class"] and classes["class"][5] == "len7_w1_ang030_blue"
    config = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert config == _config()
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert header == [
        "epoch",
        "timestamp",
        "elapsed_s",
        "train_s",
        "lr",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "test_loss",
        "test_accuracy",
    ]
    rows = runs.read_csv(run / "history.csv")
    assert rows[0]["timestamp"][:2] == "20" and "T" in rows[0]["timestamp"]
    assert 0 < rows[0]["elapsed_s"] < rows[1]["elapsed_s"] < rows[2]["elapsed_s"]
    assert 0 < rows[1]["train_s"] < rows[1]["elapsed_s"] - rows[0]["elapsed_s"]
    # cosine schedule without warm-up: starts at the peak and falls every epoch
    assert rows[0]["lr"] == pytest.approx(0.01)
    assert rows[0]["lr"] > rows[1]["lr"] > rows[2]["lr"] > 0
    assert not list(run.rglob(".*.tmp*")), "temporary files left behind"


def test_best_model_is_chosen_on_validation(single_run, small_line):
    metrics = single_run.metrics
    history = single_run.history
    best = max(history, key=lambda row: (row["val_accuracy"], -row["val_loss"]))
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["val_accuracy"] == pytest.approx(best["val_accuracy"])
    loaded = fruitcnn.load_model(single_run.run_dir)  # a run folder is enough
    predicted = loaded.predict(small_line.val.images.astype("float32"), verbose=0)["class"].argmax(axis=1)
    assert np.mean(predicted == small_line.val.labels) == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    test_predicted = loaded.predict(small_line.test.images.astype("float32"), verbose=0)["class"].argmax(
        axis=1
    )
    assert np.mean(test_predicted == small_line.test.labels) == pytest.approx(
        metrics["test_accuracy"], abs=1e-6
    )


def test_four_heads_report_each_head_and_the_aggregate(tmp_path, small_line):
    result = train(_config("multi"), dataset=small_line, run_dir=tmp_path / "multi", verbose=0)
    row = result.history[-1]
    heads = ("length", "width", "colour", "angle")
    for split in ("train", "val", "test"):
        for head in heads:
            assert 0.0 <= row[f"{split}_{head}_accuracy"] <= 1.0
            assert row[f"{split}_{head}_loss"] > 0
    # an image is right only when all four heads are right
    assert row["test_accuracy"] <= min(row[f"test_{head}_accuracy"] for head in heads) + 1e-9
    assert row["val_colour_accuracy"] > 0.9  # colour is one pixel value away
    model = keras.models.load_model(result.run_dir / "model.keras")
    assert sorted(model.output.keys()) == sorted(heads)  # the saved model has no aggregate output
    outputs = model.predict(small_line.test.images.astype("float32"), verbose=0)
    length_ok = (outputs["length"][:, 0] > 0.5) == small_line.test.attributes[:, 0]
    width_ok = (outputs["width"][:, 0] > 0.5) == small_line.test.attributes[:, 1]
    colour_ok = (outputs["colour"][:, 0] > 0.5) == small_line.test.attributes[:, 3]
    angle_ok = outputs["angle"].argmax(axis=1) == small_line.test.attributes[:, 2]
    aggregate = np.mean(length_ok & width_ok & colour_ok & angle_ok)
    assert result.metrics["test_accuracy"] == pytest.approx(aggregate, abs=1e-6)
    assert result.metrics["test_angle_accuracy"] == pytest.approx(np.mean(angle_ok), abs=1e-6)


def _interrupt_after_one_epoch(config, dataset, run_dir) -> None:
    """Train ``config`` and stop it (Ctrl-C) at the end of its first epoch."""
    with pytest.raises(KeyboardInterrupt):
        train(config, dataset=dataset, run_dir=run_dir, callbacks=[_StopAfter(1)], verbose=0)


def _assert_retraces(resumed, whole) -> None:
    """A resumed run retraces the uninterrupted one: same weights, optimiser state and
    batch order (up to float summation order)."""
    for got, want in zip(resumed.history, whole.history):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-3)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-3)
    assert resumed.metrics["test_accuracy"] == pytest.approx(whole.metrics["test_accuracy"], abs=3e-3)


def test_interrupted_run_resumes_where_it_stopped(tmp_path, small_line, single_run):
    config = _config()
    _interrupt_after_one_epoch(config, small_line, tmp_path / "r")
    state = json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1 and not state["finished"]
    assert (tmp_path / "r" / "model.keras").is_file()  # the best so far is published
    assert not (tmp_path / "r" / "metrics.json").exists()
    resumed = train(config, dataset=small_line, run_dir=tmp_path / "r", resume=True, verbose=0)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    _assert_retraces(resumed, single_run)


def test_run_interrupted_in_its_first_epoch_starts_again(tmp_path, small_line, capsys):
    with pytest.raises(KeyboardInterrupt):
        train(
            _config(epochs=1),
            dataset=small_line,
            run_dir=tmp_path / "r",
            callbacks=[_StopInFirstEpoch()],
            verbose=0,
        )
    assert "nothing to resume; run the same command again" in capsys.readouterr().err
    with pytest.raises(ValueError, match="never finished an epoch"):
        train(_config(epochs=1), dataset=small_line, run_dir=tmp_path / "r", resume=True, verbose=0)
    result = train(_config(epochs=1), dataset=small_line, run_dir=tmp_path / "r", verbose=0)
    assert result.metrics["epochs"] == 1


def test_finished_run_is_not_resumed(single_run, small_line):
    with pytest.raises(ValueError, match="already finished its 3 epochs; nothing to resume"):
        train(_config(), dataset=small_line, run_dir=single_run.run_dir, resume=True, verbose=0)


def test_optimisers_are_built_as_configured():
    from fruitcnn.training import make_optimizer

    sgd = make_optimizer(
        TrainConfig(optimizer="sgd", momentum=0.8, schedule="constant", learning_rate=0.1), 10
    )
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == pytest.approx(0.8)
    rms = make_optimizer(TrainConfig(optimizer="rmsprop", momentum=0.5), 10)
    assert isinstance(rms, keras.optimizers.RMSprop) and rms.momentum == pytest.approx(0.5)
    cosine = make_optimizer(TrainConfig(epochs=4, learning_rate=0.2, warmup_epochs=1.0), 10)
    schedule = cosine.learning_rate if callable(cosine.learning_rate) else cosine._learning_rate
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(10)) == pytest.approx(0.2)  # peak at the end of the warm-up
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-7)


def test_load_model_explains_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no model file at .*expected a .keras file or a run folder"):
        fruitcnn.load_model(tmp_path)


def test_existing_run_is_not_overwritten(single_run, small_line):
    with pytest.raises(ValueError, match="already holds a run; resume it with --resume"):
        train(_config(), dataset=small_line, run_dir=single_run.run_dir, verbose=0)


def test_batch_larger_than_training_split_is_explained(tmp_path, small_line):
    with pytest.raises(ValueError, match="fewer than the batch size 4096; lower --batch-size"):
        train(_config(batch_size=4096), dataset=small_line, run_dir=tmp_path / "x", verbose=0)


@pytest.mark.parametrize(
    "optimizer,schedule", [("sgd", "step"), ("rmsprop", "plateau"), ("adam", "constant")]
)
def test_optimisers_and_schedules_train(tmp_path, small_line, optimizer, schedule):
    config = _config(
        epochs=2,
        optimizer=optimizer,
        schedule=schedule,
        learning_rate=0.005,
        step_epochs=1,
        step_factor=0.5,
        test_each_epoch=False,
    )
    result = train(config, dataset=small_line, run_dir=tmp_path / "o", verbose=0)
    rows = result.history
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[0]["test_loss"] == ""  # test only at the end when test_each_epoch is off
    assert "test_accuracy" in result.metrics
    if schedule == "step":
        assert rows[1]["lr"] == pytest.approx(0.0025)
    if schedule == "constant":
        assert rows[0]["lr"] == rows[1]["lr"] == pytest.approx(0.005)


def test_allocator_tuning_is_in_effect_on_linux():
    import sys

    from fruitcnn.allocator import tune_allocator

    if sys.platform.startswith("linux"):
        assert tune_allocator() is True


def test_channel_statistics_are_exact():
    from fruitcnn.training import channel_statistics

    images = np.random.default_rng(0).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    images[..., 2] = 9  # a constant channel: scaled as the widest channel, not by ~0
    mean, variance = channel_statistics(images)
    as_float = images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, as_float.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(variance[:2], as_float.var(axis=0)[:2], rtol=1e-12)
    assert variance[2] == max(variance[:2])
    # every channel constant: scaled as the full 0..255 range
    assert channel_statistics(np.full((2, 3, 3, 3), 7, np.uint8))[1] == [127.5**2] * 3


def test_batch_statistics_at_inference_evaluate_with_training_batches(tmp_path, small_line):
    from fruitcnn.config import ArchConfig

    base = _config(epochs=1)
    arch = ArchConfig(**{**base.arch.__dict__, "bn_batch_stats_at_inference": True})
    config = RunConfig(data=base.data, arch=arch, train=base.train)
    result = train(config, dataset=small_line, run_dir=tmp_path / "b", verbose=0)
    model = fruitcnn.load_model(result.run_dir)
    images = small_line.val.images.astype("float32")
    # batch statistics: the answer depends on the batch, and matches the training batch size
    predicted = model.predict(images, batch_size=32, verbose=0)["class"].argmax(axis=1)
    assert np.mean(predicted == small_line.val.labels) == pytest.approx(
        result.metrics["val_accuracy"], abs=1e-6
    )


def test_label_smoothing_loss_matches_the_formula():
    import tensorflow as tf

    from heads.base import SmoothedSparseCrossentropy

    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], np.float32)
    labels = np.array([0, 1])
    probabilities = keras.layers.Softmax()(tf.constant(logits))
    smoothing = 0.2
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    target = np.eye(3)[labels] * (1 - smoothing) + smoothing / 3
    expected = -(target * log_softmax).sum(axis=1).mean()
    loss = SmoothedSparseCrossentropy(smoothing)(labels, probabilities)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    assert float(SmoothedSparseCrossentropy(0.0)(labels, probabilities)) == pytest.approx(
        float(plain), rel=1e-5
    )
    restored = keras.losses.deserialize(keras.losses.serialize(SmoothedSparseCrossentropy(0.3)))
    assert restored.label_smoothing == 0.3


def _first_batches(data, count):
    return [images.numpy() for images, _ in data.take(count)]


def test_augmented_batches_are_seeded_per_step_and_evaluation_is_untouched(small_line, monkeypatch):
    from fruitcnn import training
    from fruitcnn.config import AugmentConfig
    from heads import single_head_specs

    specs = single_head_specs(small_line.class_names)
    augment = AugmentConfig(flip="horizontal", translate=2)
    data, steps = training.batches(small_line.train, specs, 32, shuffle_seed=5, augment=augment)
    fresh = _first_batches(data, steps + 2)
    plain, _ = training.batches(small_line.train, specs, 32, shuffle_seed=5)
    assert not np.array_equal(fresh[0], _first_batches(plain, 1)[0])
    # a run resumed at epoch 1 sees exactly the batches of an uninterrupted run
    resumed, _ = training.batches(small_line.train, specs, 32, shuffle_seed=5, first_epoch=1, augment=augment)
    assert all(np.array_equal(a, b) for a, b in zip(_first_batches(resumed, 2), fresh[steps:]))
    # evaluation batches are the stored images, in order
    evaluation, _ = training.batches(small_line.test, specs, 64, augment=augment)
    assert np.array_equal(_first_batches(evaluation, 1)[0], small_line.test.images[:64].astype(np.float32))
    # large image arrays live in a variable instead of a graph constant: same batches
    monkeypatch.setattr(training.models, "_CONSTANT_BYTES", 0)
    in_variable, _ = training.batches(small_line.train, specs, 32, shuffle_seed=5, augment=augment)
    assert all(np.array_equal(a, b) for a, b in zip(_first_batches(in_variable, 3), fresh[:3]))


def test_flip_tta_averages_each_image_with_its_mirror(small_line, tmp_path):
    from fruitcnn.config import preset
    from fruitcnn.model import build_model
    from fruitcnn.training import evaluation_model, training_model
    from heads import compile_arguments, single_head_specs

    specs = single_head_specs(small_line.class_names)
    model = build_model(preset("line"), input_shape=small_line.image_shape, heads=specs, seed=1)
    trainer = training_model(model, specs)
    trainer.compile(**compile_arguments(specs))
    images = small_line.test.images[:8].astype(np.float32)
    expected = (
        model.predict(images, verbose=0)["class"] + model.predict(images[:, :, ::-1], verbose=0)["class"]
    ) / 2
    evaluator = evaluation_model(trainer, specs, "flip")
    assert np.allclose(evaluator.predict(images, verbose=0)["class"], expected, atol=1e-6)
    assert evaluation_model(trainer, specs, "none") is trainer
    # a run evaluated with flip averaging reports those figures
    config = RunConfig(
        data=DataConfig(images_per_class=24, seed=3), train=TrainConfig(epochs=1, batch_size=64, tta="flip")
    )
    result = train(config, dataset=small_line, run_dir=tmp_path / "tta", verbose=0)
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0 and result.history[0]["val_accuracy"] != ""


def test_training_stream_ends_with_the_last_epoch(small_line):
    from fruitcnn import training
    from heads import single_head_specs

    specs = single_head_specs(small_line.class_names)
    endless, steps = training.batches(small_line.train, specs, 64, shuffle_seed=1)
    finite, _ = training.batches(small_line.train, specs, 64, shuffle_seed=1, first_epoch=1, end_epoch=3)
    batches = [images.numpy() for images, _ in finite]
    assert len(batches) == 2 * steps
    assert all(np.array_equal(a, b) for a, b in zip(_first_batches(endless, 3 * steps)[steps:], batches))


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_validation_confusion_matrix_is_that_of_the_evaluated_predictions(small_line, tta):
    from fruitcnn import evaluation
    from fruitcnn.model import build_model
    from fruitcnn.training import _Validation, batches, evaluation_model, head_specs, training_model
    from heads import compile_arguments

    config = _config()
    specs = head_specs(config, small_line)
    model = build_model(config.arch, input_shape=small_line.image_shape, heads=specs, seed=1)
    trainer = training_model(model, specs)
    trainer.compile("adam", **compile_arguments(specs))
    evaluator = evaluation_model(trainer, specs, tta)
    validation = _Validation(evaluator, batches(small_line.val, specs, 64)[0], Engine().evaluate)
    logs = {}
    validation.on_epoch_end(0, logs)
    outputs = evaluation.predict(model, small_line.val.images, specs, batch_size=64, tta=tta)
    expected = evaluation.evaluate_split("val", specs, outputs, {"class": small_line.val.labels})
    np.testing.assert_array_equal(validation.confusions["class"], expected.heads["class"].confusion)
    assert logs["val_macro_f1"] == pytest.approx(
        expected.heads["class"].averages.loc["macro", "f1"], abs=1e-6
    )
    assert logs["val_accuracy"] == pytest.approx(expected.accuracy, abs=1e-6)


class _PoisonAt(keras.callbacks.Callback):
    """Makes one kernel NaN at the first step of ``epoch`` (0-based): the loss of that
    step is the first non-finite one."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == 0:
            kernel = self.model.get_layer("conv1").kernel
            kernel.assign(kernel * float("nan"))


def _strict_json(path):
    def refuse(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_diverging_run_stops_at_once_and_says_so(tmp_path, small_line):
    from fruitcnn.training import TrainingDiverged

    config = _config(epochs=3)
    with pytest.raises(TrainingDiverged, match=r"training loss became nan at epoch 1, step 1 .*lower the"):
        train(config, dataset=small_line, run_dir=tmp_path / "r", callbacks=[_PoisonAt(0)], verbose=0)
    metrics = _strict_json(tmp_path / "r" / "metrics.json")
    assert metrics["diverged"]["epoch"] == 1 and metrics["diverged"]["loss"] == "nan"
    assert metrics["best_epoch"] == 0 and not (tmp_path / "r" / "model.keras").exists()
    assert not (tmp_path / "r" / "history.csv").exists()  # no epoch of NaN weights was recorded
    with pytest.raises(ValueError, match="diverged at epoch 1 .*resuming would repeat it"):
        train(config, dataset=small_line, run_dir=tmp_path / "r", resume=True, verbose=0)
    from app.report.build import RunRecord

    with pytest.raises(ValueError, match="diverged at epoch 1, step 1 .* no model to report on"):
        RunRecord.read(tmp_path / "r")
    assert not runs.finished_runs(tmp_path)


def test_a_loss_that_explodes_without_becoming_nan_is_divergence_too(tmp_path, small_line):
    from fruitcnn.training import TrainingDiverged

    config = _config(optimizer="sgd", learning_rate=1e12, schedule="constant")
    with pytest.raises(TrainingDiverged, match=r"loss exploded to \S+ at epoch 1, .*try --lr 1e\+11"):
        train(config, dataset=small_line, run_dir=tmp_path / "r", verbose=0)
    assert _strict_json(tmp_path / "r" / "metrics.json")["diverged"]["epoch"] == 1


def test_a_run_diverging_after_good_epochs_keeps_the_best_and_reports_it(tmp_path, small_line):
    from app.report.build import ReportOptions, build_report
    from fruitcnn.training import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="at epoch 2, step 1 .*model.keras keeps epoch 1"):
        train(_config(), dataset=small_line, run_dir=tmp_path / "r", callbacks=[_PoisonAt(1)], verbose=0)
    metrics = _strict_json(tmp_path / "r" / "metrics.json")
    assert metrics["best_epoch"] == 1 and metrics["diverged"]["epoch"] == 2
    (first,) = runs.read_csv(tmp_path / "r" / "history.csv")  # the NaN epoch left no row
    assert metrics["test_accuracy"] == pytest.approx(first["test_accuracy"])  # epoch 1's model
    state = _strict_json(tmp_path / "r" / "checkpoint" / "state.json")
    assert state["epoch"] == 1 and state["diverged"]["step"] == 1
    report = build_report(
        tmp_path / "r", dataset=small_line, options=ReportOptions(quality_images=0), progress=lambda _: None
    )
    assert "Training diverged: the training loss became nan at epoch 2" in report.markdown.read_text()


def test_the_report_of_an_interrupted_run_says_how_far_it_got(tmp_path, small_line):
    from app.report.build import ReportOptions, build_report

    with pytest.raises(KeyboardInterrupt):
        train(_config(), dataset=small_line, run_dir=tmp_path / "r", callbacks=[_StopAfter(2)], verbose=0)
    report = build_report(
        tmp_path / "r", dataset=small_line, options=ReportOptions(quality_images=0), progress=lambda _: None
    )
    text = report.html.read_text()
    assert "of 2 finished so far (3 planned)" in text
    assert "interrupted after epoch 2 of 3" in text and f"--resume {tmp_path / 'r'}" in text


def test_a_finished_run_whose_report_is_missing_says_how_to_write_it(single_run, small_line):
    with pytest.raises(ValueError, match=r"Its report was not written .*python report.py"):
        train(_config(), dataset=small_line, run_dir=single_run.run_dir, resume=True, verbose=0)


def test_a_corrupt_checkpoint_is_named_on_resume(tmp_path, small_line):
    with pytest.raises(KeyboardInterrupt):
        train(_config(), dataset=small_line, run_dir=tmp_path / "r", callbacks=[_StopAfter(1)], verbose=0)
    checkpoint = tmp_path / "r" / "checkpoint" / "epoch-0001.keras"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="(?s)epoch-0001.keras is not a valid .keras file.*cannot continue"):
        train(_config(), dataset=small_line, run_dir=tmp_path / "r", resume=True, verbose=0)


def test_a_tiny_validation_split_is_warned_about():
    from fruitcnn.data import load_dataset

    dataset = load_dataset(DataConfig(images_per_class=2, split="150/2/40", seed=1))
    assert len(dataset.val) == 2
    (warning,) = dataset.info["warnings"]
    assert "holds 2 image(s) for 96 classes" in warning and "steps of 50 points" in warning
    assert load_dataset(DataConfig(images_per_class=24, seed=3)).info["warnings"] == []


def test_a_network_flat_at_chance_is_said_not_to_learn_with_the_likely_cause():
    from fruitcnn.config import resolve_arch
    from fruitcnn.training import chance_loss, not_learning_advice
    from heads import single_head_specs

    specs = single_head_specs([str(index) for index in range(10)])
    chance = chance_loss(specs)
    assert chance == pytest.approx(math.log(10))
    deep = RunConfig(
        arch=resolve_arch("ece4179-deep"), train=TrainConfig(optimizer="adam", learning_rate=0.01)
    )
    advice = not_learning_advice(deep, specs, (2.3039, 2.3026))
    assert (
        "not learning: after its first epoch the training loss is 2.304, the loss of guessing is 2.303"
        in advice
    )
    assert "adam at --lr 0.01 moves the weights of a network without batch norm too far" in advice
    assert "try --lr 0.001" in advice
    assert not_learning_advice(deep, specs, (2.3039, 1.9)) is None  # validation learnt something
    assert not_learning_advice(deep, specs, (6.2, 4.0)) is None  # confidently wrong early: not flat
    sgd = RunConfig(arch=resolve_arch("ece4179-deep"), train=TrainConfig(optimizer="sgd", learning_rate=0.5))
    assert "sgd at --lr 0.5 is too fast without batch norm: try --lr 0.01" in not_learning_advice(
        sgd, specs, (chance, chance)
    )
    with_bn = RunConfig(train=TrainConfig(optimizer="adam", learning_rate=0.01))  # the line preset has bn
    assert "may be too high or too low" in not_learning_advice(with_bn, specs, (chance, chance))


def test_initialisers_follow_the_architecture_and_normalisation_can_be_left_out():
    from fruitcnn.config import kernel_initializer, preset, resolve_arch
    from fruitcnn.model import build_model
    from heads import single_head_specs

    assert kernel_initializer(resolve_arch("ece4179-deep")) == "he_normal"  # ReLU, no batch norm
    assert kernel_initializer(preset("line")) == "glorot_uniform"  # batch norm
    assert kernel_initializer(resolve_arch("conv(8) tanh gap")) == "glorot_uniform"
    arch = dataclasses.replace(preset("line"), normalize=False)
    model = build_model(arch, input_shape=(28, 28, 3), heads=single_head_specs(["a", "b"]))
    assert model.layers[1].name == "scale" and "normalize" not in [layer.name for layer in model.layers]
    image = np.full((1, 28, 28, 3), 255.0, np.float32)
    probe = keras.Model(model.inputs, model.get_layer("scale").output)
    np.testing.assert_allclose(probe.predict(image, verbose=0), np.ones((1, 28, 28, 3)), rtol=1e-6)


def test_streamed_data_trains_exactly_as_held_data(tmp_path, small_line, single_run):
    """The same images as rows on disk (``--stream``) train the same model: every
    epoch's losses and the final weights equal the in-memory run's (oracle: that run)."""
    from fruitcnn.data.rows import RowWriter  # only this test writes rows by hand

    streamed = {}
    with RowWriter(tmp_path / "rows") as writer:
        for name, split in small_line.splits.items():
            writer.add(name, split.images)
            streamed[name] = dataclasses.replace(split, images=writer.rows(name, split.images.shape[1:]))
        dataset = dataclasses.replace(small_line, **streamed)
        result = train(_config(), dataset=dataset, run_dir=tmp_path / "streamed", verbose=0)
    for ours, theirs in zip(result.history, single_run.history, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key
    for ours, theirs in zip(result.model.weights, single_run.model.weights, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
