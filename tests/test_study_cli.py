"""study.py end to end: a 2x2 grid of real 1-epoch runs, resuming, the plan check, and
Keras Tuner's chief/worker mode across processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import keras_tuner
import pytest
import tensorflow as tf

import study as study_cli
from app.study.plan import STUDY_CSV, STUDY_MD, STUDY_PLOT
from fruitcnn import load_model, runs, training
from fruitcnn.config import RunConfig
from fruitcnn.model import flops_per_image

ROOT = Path(__file__).resolve().parents[1]
SMALL = """
name = "small"
[base]
dataset = "line"
images_per_class = 12
epochs = 1
batch_size = 32
arch = "conv({filters},3) bn relu {pooling}"

[grid]
"""
GRID_2X2 = SMALL + 'filters = [4, 8]\npooling = ["gap", "gmp"]\n'


def _study(tmp_path, text, name="small.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _summaries(folder: Path) -> dict:
    """Every summary value in the event files of ``folder``, by tag."""
    values = {}
    for events in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            values.update({value.tag: value for value in event.summary.value})
    return values


def _hparams_tags(folder: Path) -> set[str]:
    return set(_summaries(folder))


def _session_hparams(folder: Path) -> dict:
    """The hparams of the TensorBoard HParams session written in ``folder``."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    value = _summaries(folder)["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    return {
        name: getattr(value, value.WhichOneof("kind"))
        for name, value in data.session_start_info.hparams.items()
    }


def test_a_2x2_study_runs_every_trial_and_its_table_matches_the_runs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert study_cli.main([str(_study(tmp_path, GRID_2X2)), "--out", str(out), "--verbose", "0"]) == 0
    rows = runs.read_csv(out / STUDY_CSV)
    assert [(row["filters"], row["pooling"]) for row in rows] == [
        (4, "gap"),
        (4, "gmp"),
        (8, "gap"),
        (8, "gmp"),
    ]
    for row in rows:
        run = out / row["run"]
        config = RunConfig.from_dict(runs.read_json(run / runs.CONFIG_FILE))
        assert config.arch.layers[0].params["filters"] == row["filters"]
        assert config.arch.layers[-1].kind == row["pooling"] and config.train.epochs == 1
        metrics = runs.read_json(run / runs.METRICS_FILE)
        assert row["best_val_accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-12)
        assert row["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-12)
        assert row["best_val_loss"] == pytest.approx(metrics["val_loss"], abs=1e-12)
        assert row["parameters"] == metrics["parameters"]
        assert (row["epochs_trained"], row["best_epoch"], row["status"]) == (1, 1, "done")
        assert row["mflop_per_image"] == round(flops_per_image(load_model(run)) / 1e6, 2)
        assert row["wall_s"] >= row["train_s"] > 0
        tags = _hparams_tags(run / runs.TENSORBOARD_DIR)
        assert {"_hparams_/session_start_info", "study/val_accuracy", "study/test_accuracy"} <= tags
        # Numbers stay numbers for the HParams dashboard; other values are their labels.
        assert _session_hparams(run / runs.TENSORBOARD_DIR) == {
            "filters": row["filters"],
            "pooling": row["pooling"],
        }
    assert "_hparams_/experiment" in _hparams_tags(out / "runs")
    # The best trial on validation (ties: lower loss, fewer parameters, earlier trial) has the report.
    best = min(
        rows,
        key=lambda row: (-row["best_val_accuracy"], row["best_val_loss"], row["parameters"], row["trial"]),
    )
    with_report = [row["trial"] for row in rows if (out / row["run"] / runs.REPORT_HTML).is_file()]
    assert with_report == [best["trial"]]
    markdown = (out / STUDY_MD).read_text()
    assert f"**Best on validation: trial {best['trial']}**" in markdown
    assert f"([report]({best['run']}/{runs.REPORT_HTML}))" in markdown
    assert (out / STUDY_PLOT).is_file()
    printed = capsys.readouterr().out
    assert (
        "study small: 4 of 4 trials done" in printed
        and f"best trial's report: {out / best['run']}" in printed
    )

    # Run again, also under another tuner id (as when a study is continued as a chief):
    # nothing is trained, the tables stay.
    monkeypatch.setattr(training, "train", None)  # any training would fail
    for tuner_id in (None, "another-machine"):
        if tuner_id:
            monkeypatch.setenv("KERASTUNER_TUNER_ID", tuner_id)
        assert study_cli.main([str(tmp_path / "small.toml"), "--out", str(out), "--verbose", "0"]) == 0
        assert "4 of 4 trials already done" in capsys.readouterr().out
        assert runs.read_csv(out / STUDY_CSV) == rows

    # A changed study file does not mix with these trials.
    _study(tmp_path, SMALL + 'filters = [4, 8, 16]\npooling = ["gap", "gmp"]\n')
    with pytest.raises(SystemExit):
        study_cli.main([str(tmp_path / "small.toml"), "--out", str(out), "--plan"])
    with pytest.raises(SystemExit):
        study_cli.main([str(tmp_path / "small.toml"), "--out", str(out)])
    assert "holds study 'small' with other trials (4 trials before, 6 now)" in capsys.readouterr().err


class _CtrlC(keras.callbacks.Callback):
    """Leaves a file in the run folder and presses Ctrl-C after the second step."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            (self.run / "half-written.txt").write_text("left over")
            raise KeyboardInterrupt


def test_an_interrupted_study_keeps_finished_trials_and_restarts_the_interrupted_one(
    tmp_path, monkeypatch, capsys
):
    path = _study(tmp_path, SMALL.replace("{pooling}", "gap") + "filters = [4, 6, 8]\n")
    out = tmp_path / "out"
    real_train = training.train
    started = []

    def interrupted_second(config, **kwargs):
        started.append(Path(kwargs["run_dir"]).name)
        if started == ["1-filters=4", "2-filters=6"]:  # Ctrl-C in the second trial's first epoch
            kwargs["callbacks"] = [_CtrlC(Path(kwargs["run_dir"]))]
        return real_train(config, **kwargs)

    monkeypatch.setattr(training, "train", interrupted_second)
    assert study_cli.main([str(path), "--out", str(out), "--verbose", "0"]) == 130
    assert [row["status"] for row in runs.read_csv(out / STUDY_CSV)] == ["done", "pending", "pending"]
    assert (out / "runs" / "2-filters=6" / "half-written.txt").is_file()
    error = capsys.readouterr().err
    assert "study interrupted: run the same command again" in error and "train.py --resume" not in error

    started.clear()
    assert study_cli.main([str(path), "--out", str(out), "--verbose", "0", "--reports", "none"]) == 0
    assert started == ["2-filters=6", "3-filters=8"]  # trial 1 is kept, trial 2 starts again
    assert not (out / "runs" / "2-filters=6" / "half-written.txt").exists()
    assert [row["status"] for row in runs.read_csv(out / STUDY_CSV)] == ["done"] * 3


def _stopped_after_training(tmp_path, monkeypatch, filters: str) -> tuple[Path, list, list[str]]:
    """A study whose first trial trained to the end and whose process then stopped
    before Keras Tuner saved the trial, and before train()'s last commit of the state
    (the window of a kill -9 between metrics.json and the tuner's state). Returns the
    study file, the train() wrapper's list of started run names and the arguments."""
    path = _study(tmp_path, SMALL.replace("{pooling}", "gap") + f"filters = {filters}\n")
    out = tmp_path / "out"
    real_train = training.train
    started, stopped = [], []

    def stopped_after_first(config, **kwargs):
        started.append(Path(kwargs["run_dir"]).name)
        result = real_train(config, **kwargs)
        if not stopped:
            stopped.append(result.run_dir)
            state = runs.read_state(result.run_dir)
            del state["finished"]
            runs.write_json(result.run_dir / runs.CHECKPOINT_DIR / runs.STATE_FILE, state)
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(training, "train", stopped_after_first)
    arguments = [str(path), "--out", str(out), "--verbose", "0", "--reports", "none"]
    assert study_cli.main(arguments) == 130
    assert not (out / STUDY_CSV).exists()  # the tables are written when a trial ends
    assert (out / "runs" / "1-filters=4" / runs.METRICS_FILE).is_file()
    started.clear()
    return out, started, arguments


def test_a_trial_that_finished_before_the_study_stopped_is_taken_as_it_is(tmp_path, monkeypatch, capsys):
    def in_place(path, state):
        raise AssertionError(f"keras_tuner's save_json wrote {path} in place")

    # every state file of the tuner is written atomically (app.study.tuning.save_state)
    monkeypatch.setattr(keras_tuner.src.utils, "save_json", in_place)
    out, started, arguments = _stopped_after_training(tmp_path, monkeypatch, "[4, 8]")
    run = out / "runs" / "1-filters=4"
    model_bytes = (run / runs.MODEL_FILE).read_bytes()
    capsys.readouterr()
    assert study_cli.main(arguments) == 0
    assert started == ["2-filters=8"]  # trial 1 is not trained again
    assert f"{run} had finished before the study was stopped" in capsys.readouterr().out
    rows = runs.read_csv(out / STUDY_CSV)
    assert [row["status"] for row in rows] == ["done", "done"]
    metrics = runs.read_json(run / runs.METRICS_FILE)
    assert rows[0]["best_val_accuracy"] == pytest.approx(metrics["val_accuracy"])
    assert rows[0]["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert rows[0]["best_epoch"] == metrics["best_epoch"] and rows[0]["parameters"] == metrics["parameters"]
    assert rows[0]["mflop_per_image"] == pytest.approx(flops_per_image(load_model(run)) / 1e6, rel=1e-3)
    assert 0 < rows[0]["wall_s"] < 600
    assert (run / runs.MODEL_FILE).read_bytes() == model_bytes
    assert runs.read_state(run)["finished"] is True  # train.py --resume now says it finished
    assert _session_hparams(run / runs.TENSORBOARD_DIR) == {"filters": 4.0}
    state_files = {path.relative_to(out / "tuner").as_posix() for path in (out / "tuner").rglob("*.json")}
    assert {"oracle.json", "tuner0.json", "trial_0000/trial.json", "trial_0001/trial.json"} <= state_files
    assert not [path for path in (out / "tuner").rglob(".*") if ".tmp" in path.name]


@pytest.mark.parametrize("damage", ["settings", "diverged"])
def test_a_finished_run_of_other_settings_or_a_diverged_one_fails_its_trial_with_advice(
    tmp_path, monkeypatch, capsys, damage
):
    out, started, arguments = _stopped_after_training(tmp_path, monkeypatch, "[4]")
    run = out / "runs" / "1-filters=4"
    if damage == "settings":
        config = runs.read_json(run / runs.CONFIG_FILE)
        config["train"]["seed"] += 1
        runs.write_json(run / runs.CONFIG_FILE, config)
        expected = "holds a finished run with other settings than trial 1 (filters=4): train.seed differs ("
    else:
        metrics = runs.read_json(run / runs.METRICS_FILE)
        metrics["diverged"] = {"epoch": 1, "where": "training", "loss": "nan"}
        runs.write_json(run / runs.METRICS_FILE, metrics)
        expected = "diverged when the study trained it before (training loss nan at epoch 1)"
    before = {path.name: path.stat().st_mtime_ns for path in run.iterdir() if path.name != runs.LOCK_FILE}
    assert study_cli.main(arguments) == 1
    assert started == []
    rows = runs.read_csv(out / STUDY_CSV)
    assert rows[0]["status"] == "failed" and expected in rows[0]["message"]
    assert "away to train this trial again." in rows[0]["message"]
    after = {path.name: path.stat().st_mtime_ns for path in run.iterdir() if path.name != runs.LOCK_FILE}
    assert after == before  # left as it was


def test_a_failed_trial_is_listed_and_tried_again_by_the_next_run(tmp_path, monkeypatch, capsys):
    path = _study(tmp_path, SMALL.replace("{pooling}", "gap") + "filters = [4, 8]\n")
    out = tmp_path / "out"
    real_train = training.train

    def fails_for_four_filters(config, **kwargs):
        if config.arch.layers[0].params["filters"] == 4:
            raise RuntimeError("boom: out of memory")
        return real_train(config, **kwargs)

    monkeypatch.setattr(training, "train", fails_for_four_filters)
    arguments = [str(path), "--out", str(out), "--verbose", "0", "--reports", "none"]
    assert study_cli.main(arguments) == 1
    rows = runs.read_csv(out / STUDY_CSV)
    assert [row["status"] for row in rows] == ["failed", "done"]
    assert rows[0]["message"] == "RuntimeError: boom: out of memory"
    assert "- trial 1: RuntimeError: boom: out of memory" in (out / STUDY_MD).read_text()
    assert "trial 1 failed: RuntimeError: boom: out of memory" in capsys.readouterr().out

    monkeypatch.setattr(training, "train", real_train)
    assert study_cli.main(arguments) == 0
    assert [row["status"] for row in runs.read_csv(out / STUDY_CSV)] == ["done", "done"]

    # --restart trains both again; --reports all gives each its report.
    before = (out / "runs" / "2-filters=8" / runs.METRICS_FILE).stat().st_mtime_ns
    assert study_cli.main([*arguments[:-2], "--reports", "all", "--restart"]) == 0
    assert (out / "runs" / "2-filters=8" / runs.METRICS_FILE).stat().st_mtime_ns != before
    assert all((out / "runs" / name / runs.REPORT_HTML).is_file() for name in ("1-filters=4", "2-filters=8"))


def test_plan_lists_the_trials_and_stops_a_trial_that_does_not_fit_before_training(tmp_path, capsys):
    path = _study(tmp_path, SMALL + 'filters = [4]\npooling = ["gap"]\n')
    assert study_cli.main([str(path), "--out", str(tmp_path / "out"), "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "study small: 1 trials" in printed and "1  filters=4, pooling=gap" in printed
    assert not (tmp_path / "out").exists()  # a plan touches nothing
    shallow = _study(
        tmp_path,
        SMALL.replace('arch = "conv({filters},3) bn relu {pooling}"', "")
        + 'arch = ["cs671-part1", "ece4179-shallow"]\n',
    )
    with pytest.raises(SystemExit):
        study_cli.main([str(shallow), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert "trial 2 (arch=ece4179-shallow): layer pool1" in error
    assert "The smallest input this architecture accepts is 39x39 (got 28x28): pass --image-size 39" in error
    assert not (tmp_path / "out" / "runs").exists()  # nothing was trained
    assert not (tmp_path / "out" / "study.json").exists()  # so the study file can be fixed in place


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_chief_and_worker_processes_share_one_study(tmp_path, monkeypatch, capsys):
    path = _study(tmp_path, SMALL.replace("{pooling}", "gap") + "filters = [4, 8]\n")
    oracle = f"127.0.0.1:{_free_port()}"
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(tuner_id, out):
        command = [sys.executable, str(ROOT / "study.py"), str(path), "--out", str(out), "--verbose", "0"]
        command += ["--oracle", oracle, "--tuner-id", tuner_id]
        return subprocess.Popen(
            command,
            env=environment,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    chief = start("chief", tmp_path / "chief")
    worker = start("worker1", tmp_path / "worker")
    try:
        worker_output, _ = worker.communicate(timeout=300)
        chief_output, _ = chief.communicate(timeout=120)
    finally:  # a hung chief or worker must not outlive the test
        for process in (worker, chief):
            if process.poll() is None:
                process.kill()
    assert worker.returncode == 0, worker_output
    assert chief.returncode == 0, chief_output
    assert "worker worker1: no trials left" in worker_output
    assert sorted(path.name for path in (tmp_path / "worker" / "runs").iterdir()) == [
        "1-filters=4",
        "2-filters=8",
    ]
    rows = runs.read_csv(tmp_path / "chief" / STUDY_CSV)
    assert [row["status"] for row in rows] == ["done", "done"]
    for row in rows:  # the chief's table holds the worker's results
        metrics = runs.read_json(tmp_path / "worker" / row["run"] / runs.METRICS_FILE)
        assert row["best_val_accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-12)
    assert "is not on this machine" in chief_output

    # The chief's folder continues on one machine: nothing is trained again.
    monkeypatch.setattr(training, "train", None)  # any training would fail
    assert study_cli.main([str(path), "--out", str(tmp_path / "chief"), "--verbose", "0"]) == 0
    assert "2 of 2 trials already done" in capsys.readouterr().out


def test_a_worker_with_another_study_file_is_refused(tmp_path):
    from app.study.plan import load_study
    from app.study.tuning import StudyOracle, _check_same_study

    chief_study = load_study(_study(tmp_path, GRID_2X2, "chief.toml"))
    chief_space = StudyOracle(chief_study).get_space()
    _check_same_study(load_study(_study(tmp_path, GRID_2X2, "same.toml")), chief_space)
    other = load_study(_study(tmp_path, GRID_2X2.replace("epochs = 1", "epochs = 2"), "other.toml"))
    with pytest.raises(ValueError, match="this worker's study file plans other trials than the chief's"):
        _check_same_study(other, chief_space)


def test_a_study_runs_on_the_users_own_data_and_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = GRID_2X2.replace('dataset = "line"', 'dataset = "../shared/data/nowhere.tgz"')
    study = _study(tmp_path, text)
    with pytest.raises(SystemExit) as stop:
        study_cli.main([str(study), "--plan"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "../shared/data/nowhere.tgz does not exist" in err
    assert f"python study.py {study} --dataset PATH" in err
    assert study_cli.main([str(study), "--plan", "--dataset", "line", "--set", "epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "4 trials -> saved_models/studies/small-epochs3-line" in out  # a folder of its own
    assert "base dataset = 'line'" in out and "base epochs = 3" in out
    with pytest.raises(SystemExit):
        study_cli.main([str(study), "--plan", "--dataset", "line", "--set", "filters=4"])
    assert "filters is varied by the study" in capsys.readouterr().err
