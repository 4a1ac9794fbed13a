"""Distributed training: TF_CONFIG, the launcher's command, each replica's part of a batch,
batch norm synchronised over replicas, and real two-worker runs on 127.0.0.1 compared
with a one-process run of the same global batch and seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from fruitcnn import claims, runs
from fruitcnn.config import AugmentConfig, RunConfig, TrainConfig
from fruitcnn.distributed import Cluster, cluster, scratch_folder
from fruitcnn.distributed.launch import free_ports, worker_command, worker_configs
from fruitcnn.training import batches, head_specs, train
from fruitcnn.training.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
# The runs compared: tiny line data, so one process and two workers each take seconds.
RUN = ["--dataset", "line", "--images-per-class", "4", "--batch-size", "64", "--seed", "3"]
RUN += ["--no-report", "--verbose", "2"]
# Seconds before a hung worker fails the test.
TIMEOUT_S = 240


def _config(cluster_spec, task):
    return {"TF_CONFIG": json.dumps({"cluster": cluster_spec, "task": task})}


def test_cluster_reads_tf_config():
    two = {"worker": ["127.0.0.1:1000", "127.0.0.1:1001"]}
    assert cluster(_config(two, {"type": "worker", "index": 1})) == Cluster(tuple(two["worker"]), 1)
    assert cluster(_config(two, {"type": "worker", "index": 0})).is_chief
    with_chief = {"chief": ["h:1"], "worker": ["h:2", "h:3"]}
    assert cluster(_config(with_chief, {"type": "chief", "index": 0})).is_chief
    found = cluster(_config(with_chief, {"type": "worker", "index": 0}))
    assert (found.index, found.is_chief, found.workers) == (1, False, 3)


@pytest.mark.parametrize(
    "environ, words",
    [
        ({}, "needs the TF_CONFIG environment variable"),
        ({"TF_CONFIG": "{cluster"}, "is not JSON"),
        (_config({"worker": ["h:1"]}, {"type": "worker", "index": 1}), "task index 1 is not one of the 1"),
        (_config({"worker": ["h:1", "h:1"]}, {"type": "worker", "index": 0}), "lists an address twice"),
        (_config({"worker": ["h"]}, {"type": "worker", "index": 0}), '"host:port"'),
        (_config({"worker": ["h:1"]}, {"type": "ps", "index": 0}), "parameter servers"),
        (_config({}, {"type": "worker", "index": 0}), "lists no"),
    ],
)
def test_cluster_refuses_bad_tf_config(environ, words):
    with pytest.raises(ValueError, match="python -m fruitcnn.distributed" if not environ else None) as error:
        cluster(environ)
    assert words in str(error.value)


def test_worker_command_adds_the_strategy():
    assert worker_command(["train.py", "--epochs", "1"]) == [
        sys.executable,
        "train.py",
        "--epochs",
        "1",
        "--strategy",
        "multiworker",
    ]
    assert worker_command(["train.py", "--strategy=multiworker"])[-1] == "--strategy=multiworker"
    assert worker_command(["python3", "other.py", "--x"]) == ["python3", "other.py", "--x"]
    with pytest.raises(ValueError, match="need --strategy multiworker, the command says 'mirrored'"):
        worker_command(["train.py", "--strategy", "mirrored"])
    with pytest.raises(ValueError, match="give the command after --"):
        worker_command([])


def test_worker_configs_name_every_worker_once():
    ports = free_ports(3, "127.0.0.1")
    assert len(set(ports)) == 3
    addresses = [f"127.0.0.1:{port}" for port in ports]
    found = [cluster({"TF_CONFIG": text}) for text in worker_configs(addresses)]
    assert [item.index for item in found] == [0, 1, 2]
    assert all(item.addresses == tuple(addresses) for item in found)


def test_scratch_folder_copies_the_run_and_is_removed(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.json").write_text("{}")
    (run / ".lock").write_text("held by the chief")
    with scratch_folder(run) as folder:
        assert (folder / "checkpoint" / "state.json").read_text() == "{}"
        assert not (folder / ".lock").exists()
    assert not folder.exists()
    with pytest.raises(RuntimeError), scratch_folder() as folder:
        raise RuntimeError("a failed worker")
    assert not folder.exists()


@pytest.mark.parametrize("parts", [2, 3])
def test_parts_of_a_batch_are_the_batch(small_line, parts):
    """The replicas' parts of every training batch, augmentation included, put back
    together are the one-process batch (oracle: the pipeline without parts)."""
    specs = head_specs(RunConfig(), small_line)
    augment = AugmentConfig(flip="horizontal", translate=3, rotate=10, color_jitter=0.2)

    def pipeline(part):
        return batches(
            small_line.train,
            specs,
            64,
            shuffle_seed=5,
            first_epoch=1,
            end_epoch=2,
            augment=augment,
            part=part,
        )[0]

    whole = list(pipeline(None).take(4))
    pieces = list(pipeline((0, parts, parts)).take(4 * parts))
    for step, (images, targets) in enumerate(whole):
        mine = pieces[step * parts : (step + 1) * parts]
        assert [len(part[0]) for part in mine] == [
            (k + 1) * 64 // parts - k * 64 // parts for k in range(parts)
        ]
        np.testing.assert_allclose(np.concatenate([part[0] for part in mine]), images.numpy(), atol=1e-4)
        for name in targets:
            np.testing.assert_array_equal(np.concatenate([part[1][name] for part in mine]), targets[name])
    # a worker yields only its own parts: the second of three workers, one replica each
    second = list(pipeline((1, 1, parts)).take(2))
    np.testing.assert_array_equal(second[1][0], pieces[parts + 1][0])


def test_engine_default_is_keras():
    engine = Engine("default")
    assert (engine.replicas, engine.is_chief, engine.loop) == (1, True, False)
    assert engine.from_chief([1.5, 2.0]).tolist() == [1.5, 2.0]
    engine.check_batch(1)
    assert engine.eval_batch(1001, 512) == 512


_SYNC_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, tensorflow as tf, keras
    sys.path.insert(0, sys.argv[1])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
    from fruitcnn.layers import BatchNorm

    def train(strategy, synchronized):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input((6, 6, 3))
            x = keras.layers.Conv2D(4, 3)(inputs)
            x = BatchNorm(momentum=0.5, synchronized=synchronized, name="bn")(x)
            x = keras.layers.Flatten()(x)
            model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
            model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        rng = np.random.default_rng(1)
        images = rng.normal(1.0, 2.0, size=(4, 30, 6, 6, 3)).astype("float32")
        labels = rng.integers(0, 3, size=(4, 30))
        replicas = strategy.num_replicas_in_sync

        def parts(context):  # per batch of 30, each replica's part in turn (10 each, or all 30)
            bounds = [k * 30 // replicas for k in range(replicas + 1)]
            data = tf.data.Dataset.from_tensor_slices((images, labels))
            pieces = [data.map(lambda x, y, a=a, b=b: (x[a:b], y[a:b])) for a, b in zip(bounds, bounds[1:])]
            return tf.data.Dataset.choose_from_datasets(pieces, tf.data.Dataset.range(replicas).repeat(4))

        data = strategy.distribute_datasets_from_function(parts)

        @tf.function
        def step(batch):
            strategy.run(model.train_step, args=(batch,))

        for batch in data:
            step(batch)
        layer = model.get_layer("bn")
        return {
            "mean": layer.moving_mean.numpy().tolist(),
            "variance": layer.moving_variance.numpy().tolist(),
            "kernel": model.weights[0].numpy().ravel().tolist(),
        }

    one = train(tf.distribute.get_strategy(), True)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1", "/cpu:2"])  # one per process
    three = train(mirrored, True)
    apart = train(mirrored, False)
    print(json.dumps({"one": one, "three": three, "apart": apart}))
    """
)


def test_synchronized_batch_norm_matches_one_process():
    """Three replicas (logical CPUs) with synchronised batch norm: the moving statistics
    and weights of one process on the same global batches, to 1e-5; without
    synchronisation they are not (each replica normalised its own third)."""
    done = subprocess.run(
        [sys.executable, "-c", _SYNC_SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("mean", "variance", "kernel"):
        np.testing.assert_allclose(found["three"][name], found["one"][name], rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(np.subtract(found["apart"]["variance"], found["one"]["variance"]))) > 1e-3


def _environment(scratch: Path) -> dict[str, str]:
    # TMPDIR: where the workers' temporary run folders go, to see that none is left
    return {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(ROOT)}


def _leftovers(scratch: Path) -> list[str]:
    return sorted(path.name for path in scratch.glob("fruitcnn-worker-*"))


def _history(run: Path) -> list[dict]:
    return runs.read_csv(run / runs.HISTORY_FILE)


def _launch(args: list[str], scratch: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "fruitcnn.distributed",
        "--workers",
        "2",
        "--grace",
        "20",
        "--",
        "train.py",
    ]
    return subprocess.run(
        command + args,
        cwd=ROOT,
        env=_environment(scratch),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_two_workers_train_as_one_process(tmp_path):
    """Two workers on 127.0.0.1 and one process, same global batch and seed: both workers
    finish, the chief's run folder is complete, the workers leave nothing behind, their
    weights agree exactly, and the losses and weights (batch norm's moving statistics
    included) equal the one-process run's: 1e-4 relative, 1e-5 absolute."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    one, two = tmp_path / "one", tmp_path / "two"
    # SGD: Adam divides the near-zero gradients of the weights on the line data's constant
    # green channel by their own size, which turns float rounding into steps of ~lr
    args = [*RUN, "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05"]
    alone = subprocess.run(
        [sys.executable, "train.py", *args, "--out", str(one)],
        cwd=ROOT,
        env=_environment(scratch),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    done = _launch([*args, "--out", str(two)], scratch)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (
        "[worker 1] worker 1 of 2" in done.stdout
        and "finished; the chief writes the run folder" in done.stdout
    )
    assert "the workers' weights agree" in done.stdout
    expected = ["checkpoint", "classes.json", "config.json", "data.json", "environment.json", "history.csv"]
    expected += ["metrics.json", "model.keras", "tb"]
    assert sorted(path.name for path in two.iterdir() if not path.name.startswith(".")) == expected
    assert (two / "checkpoint" / "state.json").is_file()
    assert _leftovers(scratch) == []
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["distributed"] == {
        "strategy": "multiworker",
        "workers": 2,
        "replicas": 2,
        "weights_disagreement": 0.0,
    }
    assert json.loads((two / "config.json").read_text())["train"]["strategy"] == "multiworker"
    sessions = json.loads((two / "environment.json").read_text())["sessions"]
    assert [(session["kind"], session["strategy"]) for session in sessions] == [("start", "multiworker")]
    rows_one, rows_two = _history(one), _history(two)
    assert len(rows_one) == len(rows_two) == 2
    for first, second in zip(rows_one, rows_two):
        assert first["lr"] == second["lr"]
        for column in ("train_loss", "val_loss", "test_loss"):
            assert float(second[column]) == pytest.approx(float(first[column]), rel=1e-4), column
    # every weight, batch norm's moving statistics included, as one process has them
    single = keras.saving.load_model(one / "model.keras", compile=False)
    shared = keras.saving.load_model(two / "model.keras", compile=False)
    for weight, mine, theirs in zip(single.weights, single.get_weights(), shared.get_weights()):
        np.testing.assert_allclose(theirs, mine, atol=1e-5, err_msg=weight.path)


def test_a_lost_worker_stops_the_chief_and_the_run_resumes(tmp_path):
    """kill -9 of worker 1 after the first epoch: the chief fails within a minute with a
    message that says so and how to resume (no hang); two new workers resume the run."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = tmp_path / "run"
    args = [
        sys.executable,
        "train.py",
        *RUN,
        "--epochs",
        "30",
        "--out",
        str(run),
        "--strategy",
        "multiworker",
    ]
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2, "127.0.0.1")]
    workers = [
        subprocess.Popen(
            args,
            cwd=ROOT,
            env={**_environment(scratch), "TF_CONFIG": config},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for config in worker_configs(addresses)
    ]
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (run / "history.csv").is_file() or len(_history(run)) < 1:
            assert time.monotonic() < deadline, "no epoch finished"
            assert workers[0].poll() is None, workers[0].communicate()[1][-3000:]
            time.sleep(0.2)
        workers[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, errors = workers[0].communicate(timeout=120)
        waited = time.monotonic() - killed
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert workers[0].returncode == 1, errors[-3000:]
    assert "another worker stopped or cannot be reached" in errors
    assert f"restart every worker with --resume {run}" in errors
    assert waited < 60
    epochs_done = json.loads((run / "checkpoint" / "state.json").read_text())["epoch"]
    assert 1 <= epochs_done < 30
    # the killed worker could not remove its folder (nor its claim); the chief had none
    assert len([name for name in _leftovers(scratch) if not name.endswith(claims.CLAIM_SUFFIX)]) <= 1
    done = _launch(["--resume", str(run), "--no-report", "--verbose", "2"], scratch)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [int(row["epoch"]) for row in _history(run)] == list(range(1, 31))
    sessions = json.loads((run / "environment.json").read_text())["sessions"]
    assert [session["kind"] for session in sessions] == ["start", "resume"]
    assert json.loads((run / "metrics.json").read_text())["distributed"]["weights_disagreement"] == 0.0
    assert _leftovers(scratch) == []  # the resuming worker removed the killed one's (fruitcnn.claims)


def test_mirrored_strategy_trains_through_keras_fit(small_line, tmp_path):
    """--strategy mirrored on a machine without GPUs: one replica (the CPU), Keras's fit,
    the same losses as the default strategy, and metrics.json says how it ran."""
    results = {}
    for strategy in ("default", "mirrored"):
        config = RunConfig(train=TrainConfig(epochs=1, batch_size=64, strategy=strategy))
        results[strategy] = train(config, dataset=small_line, run_dir=tmp_path / strategy, verbose=0)
    assert results["mirrored"].metrics["distributed"] == {
        "strategy": "mirrored",
        "workers": 1,
        "replicas": 1,
        "weights_disagreement": 0.0,
    }
    assert "distributed" not in results["default"].metrics
    for column in ("train_loss", "val_loss", "test_loss"):
        assert results["mirrored"].history[0][column] == pytest.approx(
            results["default"].history[0][column], rel=1e-5
        )


def test_workers_follow_the_chiefs_time_budget(tmp_path):
    """--time-budget with two workers: their clocks differ, so the chief's plan (the
    decay's end, when to stop) is sent to both after every step; had they planned apart,
    their learning rates and so their weights would differ."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = tmp_path / "run"
    # 14 s: with 8 s a loaded CI machine ran out of time before the chief's first plan
    done = _launch([*RUN[:-1], "0", "--time-budget", "14s", "--out", str(run)], scratch)  # --verbose 0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["distributed"]["weights_disagreement"] == 0.0
    spent = metrics["time_budget"]
    assert spent["budget_s"] == 14.0 and spent["plans"] >= 1 and spent["steps"] > 0
    assert _leftovers(scratch) == []


def test_a_chief_that_refuses_its_run_folder_stops_the_worker_with_words(tmp_path):
    """The chief exits at once (its --out already holds a run); the worker, waiting for
    it to make the model's variables, fails with the message, not a traceback."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.json").write_text("{}")
    done = _launch([*RUN, "--epochs", "1", "--out", str(run)], scratch)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "already holds a run" in done.stderr
    assert "[worker 1] train.py (worker 1 of 2" in done.stdout
    assert "another worker stopped or cannot be reached" in done.stdout
    assert "no epoch had finished; start every worker again" in done.stdout
    assert "Traceback" not in done.stdout
    assert _leftovers(scratch) == []


def test_launcher_refuses_bad_arguments(capsys):
    from fruitcnn.distributed import launch

    with pytest.raises(SystemExit) as stop:
        launch.main(["--workers", "0", "--", "train.py"])
    assert stop.value.code == 2 and "--workers must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        launch.main(["--workers", "2"])
    assert stop.value.code == 2 and "give the command after --" in capsys.readouterr().err
