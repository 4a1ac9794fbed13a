"""report.py: one command writes the report of any run; bad input is explained."""

import json

import pytest

import report as cli
from fruitcnn.config import DataConfig, RunConfig, TrainConfig
from fruitcnn.training import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small_line):
    config = RunConfig(
        data=DataConfig(images_per_class=24, seed=3),
        train=TrainConfig(epochs=1, batch_size=32, learning_rate=0.01, warmup_epochs=0.0),
    )
    return train(
        config, dataset=small_line, run_dir=tmp_path_factory.mktemp("cli") / "run", verbose=0
    ).run_dir


def test_report_command_writes_the_report_with_its_options(run_dir, capsys):
    argv = [
        str(run_dir),
        "--grid-split",
        "test",
        "--top-k",
        "2",
        "--order",
        "confusion",
        "--quality-images",
        "5",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "report written in" in out and str(run_dir / "report.html") in out
    assert "data: line (generated): 96 classes" in out  # the data was read again, with the run's config
    grids = sorted(path.name for path in (run_dir / "report").glob("grid-*.png"))
    assert grids and all(name.startswith("grid-test-") for name in grids)
    assert (
        "Classes are ordered so that confused classes sit together" in (run_dir / "report.html").read_text()
    )
    # a second report replaces the folder: no grid of the earlier split is left behind
    assert "measuring the explanations of 5 test images" in out
    assert (run_dir / "report" / "quality.csv").is_file()
    assert cli.main([str(run_dir), "--top-k", "2", "--quality-images", "0"]) == 0
    grids = sorted(path.name for path in (run_dir / "report").glob("grid-*.png"))
    assert grids and all(name.startswith("grid-val-") for name in grids)
    assert not (run_dir / "report" / "quality.csv").exists()  # left out, and no stale copy
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert summary["test"]["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_report_command_takes_the_latest_run_and_explains_errors(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main([])
    assert stop.value.code == 2
    assert "no finished run (metrics.json and model.keras, not being trained now) under saved_models/" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([str(run_dir), "--top-k", "0"])
    assert "top_k must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main([str(run_dir), "--dataset", str(tmp_path / "elsewhere.tgz")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "elsewhere.tgz" in err and "Traceback" not in err


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: val)" in out and "(default: 5)" in out and "python report.py RUN --screenshot" in out


def test_a_run_whose_model_was_replaced_by_a_plain_keras_model_is_reported(run_dir, tmp_path, capsys):
    import shutil

    import keras

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    keras.utils.set_random_seed(0)
    plain = keras.Sequential(
        [
            keras.Input((28, 28, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(96),  # logits, one tensor out
        ]
    )
    plain.save(copy / "model.keras")
    assert cli.main([str(copy), "--quality-images", "4"]) == 0
    assert "report written in" in capsys.readouterr().out
    assert (copy / "report" / "quality.csv").is_file()
