"""Run-folder I/O: atomic writes, checkpoint commits, clear errors."""

import json
import os

import pytest

from fruitcnn import runs


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")

    def broken(temporary):
        with open(temporary, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        runs.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.keras"]


def test_json_and_csv_round_trip(tmp_path):
    runs.write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert runs.read_json(tmp_path / "a.json") == {"x": [1, 2]}
    runs.write_csv(tmp_path / "h.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "extra": "x"}])
    assert runs.read_csv(tmp_path / "h.csv") == [
        {"epoch": 1, "loss": 0.5, "extra": ""},
        {"epoch": 2, "loss": 0.25, "extra": "x"},
    ]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist; is .* a fruitcnn run folder"):
        runs.read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        runs.read_json(tmp_path / "bad.json")


def test_commit_publishes_the_best_and_drops_stale_checkpoints(tmp_path):
    folder = tmp_path / runs.CHECKPOINT_DIR
    folder.mkdir()
    for name in (
        "epoch-0001.keras",
        "epoch-0002.keras",
        "best-0001.keras",
        "best-0002.keras",
        "epoch-0003.keras",
    ):
        (folder / name).write_text(name)
    # epoch-0003 was written by a run killed before its state.json: not committed
    state = {"epoch": 2, "last_checkpoint": "epoch-0002.keras", "best_checkpoint": "best-0002.keras"}
    runs.commit_checkpoint(tmp_path, state, best_changed=True)
    assert json.loads((folder / "state.json").read_text()) == state
    assert sorted(path.name for path in folder.glob("*.keras")) == ["best-0002.keras", "epoch-0002.keras"]
    assert (tmp_path / "model.keras").read_text() == "best-0002.keras"


def test_read_state_explains_a_run_without_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="has no checkpoint to resume .*never finished an epoch"):
        runs.read_state(tmp_path)


def test_latest_resumable_run(tmp_path):
    with pytest.raises(ValueError, match="found no unfinished run"):
        runs.latest_resumable_run(tmp_path)
    for name, finished in (("a", False), ("b", True)):
        run = tmp_path / name
        (run / runs.CHECKPOINT_DIR).mkdir(parents=True)
        (run / runs.CONFIG_FILE).write_text("{}")
        (run / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text("{}")
        if finished:
            (run / runs.METRICS_FILE).write_text("{}")
    assert runs.latest_resumable_run(tmp_path) == tmp_path / "a"


def test_run_names_of_dataset_paths_are_short():
    from fruitcnn.runs import new_run_name

    assert new_run_name("../shared/data/fruits-360-24.tgz", "single").startswith("fruits-360-24-single-")
    assert new_run_name("/data/mnist/", "single").startswith("mnist-single-")
    assert new_run_name("tfds:cifar10", "single").startswith("tfds-cifar10-single-")
    assert new_run_name("line", "multi").startswith("line-multi-")


def test_run_folders_are_created_exclusively(tmp_path):
    first = runs.create_run_folder(tmp_path, "line-single-20261203-101010")
    second = runs.create_run_folder(tmp_path, "line-single-20261203-101010")
    third = runs.create_run_folder(tmp_path, "line-single-20261203-101010")
    assert [first.name, second.name, third.name] == [
        "line-single-20261203-101010",
        "line-single-20261203-101010-2",
        "line-single-20261203-101010-3",
    ]


@pytest.mark.parametrize("name", ["../../x", "a/b", "/tmp/x", "..", "", "a\\b"])
def test_run_names_are_not_paths(name):
    with pytest.raises(ValueError, match="is not a run name: it must be a plain folder name"):
        runs.check_run_name(name)


def test_out_folder_may_not_be_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is an existing file, not a folder"):
        runs.check_out_folder(tmp_path / "file")
    assert runs.check_out_folder(tmp_path / "new") == tmp_path / "new"


def _hold_in_another_process(run, seconds):
    """A child process that holds ``run`` for ``seconds`` (prints 'held' once it does)."""
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from fruitcnn import runs\n"
        f"with runs.hold({str(run)!r}, 'training'):\n"
        "    print('held', flush=True)\n"
        f"    time.sleep({seconds})\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_held_run_refuses_a_second_process_and_names_the_holder(tmp_path):
    run = tmp_path / "run"
    child = _hold_in_another_process(run, 30)
    try:
        assert runs.holder(run)["pid"] == child.pid
        with pytest.raises(
            runs.RunInUse, match=f"in use: process {child.pid} is training .*kill {child.pid}"
        ):
            with runs.hold(run, "resuming"):
                pass
    finally:
        child.kill()
        child.wait()
    assert runs.holder(run) is None  # the OS releases the lock of a killed process
    with runs.hold(run, "resuming"):
        with runs.hold(run, "writing the report of"):  # reentrant in one process
            assert runs.holder(run)["pid"] == os.getpid()
    assert runs.holder(run) is None


def test_a_folder_created_for_a_run_that_wrote_nothing_is_removed(tmp_path):
    with pytest.raises(RuntimeError):
        with runs.hold(tmp_path / "new", "training"):
            raise RuntimeError("failed before the first file")
    assert not (tmp_path / "new").exists()
    with runs.hold(tmp_path / "kept", "training"):
        (tmp_path / "kept" / "config.json").write_text("{}")
    assert sorted(path.name for path in (tmp_path / "kept").iterdir()) == [".lock", "config.json"]


def test_json_is_strict_not_finite_numbers_become_null(tmp_path):
    import numpy as np

    runs.write_json(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.int64(3)})
    text = (tmp_path / "m.json").read_text()

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    assert json.loads(text, parse_constant=refuse) == {"a": None, "b": [None, 1.5], "c": 3}


def test_finished_runs_are_complete_not_diverged_and_not_in_use(tmp_path):
    for name, metrics in (
        ("done", {"best_epoch": 1}),
        ("diverged", {"diverged": {"epoch": 1}}),
        ("busy", {}),
    ):
        run = tmp_path / name
        run.mkdir()
        (run / runs.CONFIG_FILE).write_text("{}")
        (run / runs.MODEL_FILE).write_text("x")
        (run / runs.METRICS_FILE).write_text(json.dumps(metrics))
    (tmp_path / "interrupted").mkdir()
    (tmp_path / "interrupted" / runs.CONFIG_FILE).write_text("{}")
    (tmp_path / "interrupted" / runs.MODEL_FILE).write_text("x")  # no metrics.json yet
    child = _hold_in_another_process(tmp_path / "busy", 30)
    try:
        assert [run.name for run in runs.finished_runs(tmp_path)] == ["done"]
    finally:
        child.kill()
        child.wait()
    assert sorted(run.name for run in runs.finished_runs(tmp_path)) == ["busy", "done"]
