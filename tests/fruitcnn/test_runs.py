"""Run-folder I/O: atomic writes, checkpoint commits, clear errors."""

import json

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
