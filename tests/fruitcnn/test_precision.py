"""Mixed-precision training (``--precision mixed_bfloat16``): the steps compute in
bfloat16, the saved model and metrics.json's figures are float32."""

import dataclasses
import json

import numpy as np
import pytest

from fruitcnn import modelfile, runs
from fruitcnn.config import ArchConfig, DataConfig, RunConfig, TrainConfig, parse_layers
from fruitcnn.model import build_model, with_precision
from fruitcnn.training import TrainingDiverged, train
from heads.single import single_head_specs
from tests.fruitcnn.test_training import _assert_retraces, _interrupt_after_one_epoch, _PoisonAt

MIXED = TrainConfig(
    epochs=3, batch_size=32, learning_rate=0.01, warmup_epochs=0.0, precision="mixed_bfloat16"
)


def _config(**changes):
    return RunConfig(
        data=DataConfig(images_per_class=24, seed=3), train=dataclasses.replace(MIXED, **changes)
    )


def _policies(model):
    return {layer.name: layer.dtype_policy.name for layer in model.layers}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, small_line):
    return train(_config(), dataset=small_line, run_dir=tmp_path_factory.mktemp("runs") / "mixed", verbose=0)


def test_a_copy_in_another_precision_has_the_same_weights_and_float32_outputs():
    layers = "whiten(2) relu conv(8,bias=false) maxpool(2) bn(0.4) relu gmp fc(16) relu scale(0.111)"
    heads = single_head_specs([f"c{index}" for index in range(5)])
    model = build_model(ArchConfig(layers=parse_layers(layers)), input_shape=(16, 16, 3), heads=heads, seed=1)
    mixed = with_precision(model, "mixed_bfloat16", keep_float32=["class"])
    policies = _policies(mixed)
    assert policies.pop("image") == "float32" and policies.pop("class") == "float32"
    assert set(policies.values()) == {"mixed_bfloat16"}
    assert all(weight.dtype == "float32" for weight in mixed.weights)  # float32 variables
    for got, want in zip(mixed.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    # the whitening kernel stays frozen in the copy
    assert len(mixed.trainable_weights) == len(model.trainable_weights)
    back = with_precision(mixed, "float32")
    assert set(_policies(back).values()) == {"float32"}
    images = np.random.default_rng(0).uniform(0, 255, (6, 16, 16, 3)).astype(np.float32)
    exact = model.predict(images, verbose=0)["class"]
    np.testing.assert_array_equal(back.predict(images, verbose=0)["class"], exact)
    rounded = mixed.predict(images, verbose=0)["class"]
    assert rounded.dtype == np.float32 and np.allclose(rounded.sum(axis=1), 1.0, atol=1e-5)
    # bfloat16 keeps 8 significant bits: close to the float32 model, not equal
    assert 0 < np.abs(rounded - exact).max() < 0.05
    with pytest.raises(ValueError, match="precision must be float32 or mixed_bfloat16, got 'float16'"):
        with_precision(model, "float16")


def test_a_mixed_run_learns_and_saves_a_float32_model(mixed_run, small_line):
    history = mixed_run.history
    assert history[-1]["val_accuracy"] > history[0]["val_accuracy"] + 0.1
    assert mixed_run.metrics["test_accuracy"] > 10 / 96
    saved = modelfile.load_keras(mixed_run.run_dir / runs.MODEL_FILE, compile=False)
    assert set(_policies(saved).values()) == {"float32"}
    assert set(_policies(mixed_run.model).values()) == {"float32"}
    # the checkpoints that a resume continues from keep the training precision
    state = json.loads((mixed_run.run_dir / runs.CHECKPOINT_DIR / runs.STATE_FILE).read_text())
    last = modelfile.load_keras(
        mixed_run.run_dir / runs.CHECKPOINT_DIR / state["last_checkpoint"], compile=False
    )
    assert _policies(last)["conv1"] == "mixed_bfloat16" and _policies(last)["class"] == "float32"
    # metrics.json's figures are the saved float32 model's, counted here from its predictions
    for name in ("val", "test"):
        split = small_line.splits[name]
        predicted = saved.predict(split.images.astype(np.float32), verbose=0)["class"].argmax(axis=1)
        assert mixed_run.metrics[f"{name}_accuracy"] == pytest.approx(np.mean(predicted == split.labels))
    # and the best epoch's bfloat16 evaluation is close to them
    best = history[mixed_run.metrics["best_epoch"] - 1]
    assert abs(best["test_accuracy"] - mixed_run.metrics["test_accuracy"]) <= 0.03
    assert (
        json.loads((mixed_run.run_dir / runs.CONFIG_FILE).read_text())["train"]["precision"]
        == "mixed_bfloat16"
    )


def test_an_interrupted_mixed_run_resumes_where_it_stopped(tmp_path, small_line, mixed_run):
    config = _config()
    _interrupt_after_one_epoch(config, small_line, tmp_path / "r")
    resumed = train(config, dataset=small_line, run_dir=tmp_path / "r", resume=True, verbose=0)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    _assert_retraces(resumed, mixed_run)
    assert set(_policies(resumed.model).values()) == {"float32"}


def test_a_mixed_run_diverging_after_good_epochs_keeps_its_float32_best(tmp_path, small_line):
    with pytest.raises(TrainingDiverged, match="at epoch 2, step 1 .*model.keras keeps epoch 1"):
        train(_config(), dataset=small_line, run_dir=tmp_path / "r", callbacks=[_PoisonAt(1)], verbose=0)
    metrics = json.loads((tmp_path / "r" / runs.METRICS_FILE).read_text())
    assert metrics["best_epoch"] == 1 and metrics["diverged"]["epoch"] == 2
    saved = modelfile.load_keras(tmp_path / "r" / runs.MODEL_FILE, compile=False)
    assert set(_policies(saved).values()) == {"float32"}
    assert all(np.isfinite(weight).all() for weight in saved.get_weights())
    test = small_line.test
    predicted = saved.predict(test.images.astype(np.float32), verbose=0)["class"].argmax(axis=1)
    assert metrics["test_accuracy"] == pytest.approx(np.mean(predicted == test.labels))


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="precision must be one of float32, mixed_bfloat16, got 'fp16'"):
        TrainConfig(precision="fp16")
