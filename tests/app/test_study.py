"""Study files: planning trials, templates, errors, and the result tables (no training here)."""

import json
from pathlib import Path

import pytest

from app.study.plan import (
    DONE,
    FAILED,
    PENDING,
    STUDY_CSV,
    STUDY_MD,
    STUDY_PLOT,
    check_settings,
    load_study,
    study_from_dict,
    trial_folder,
)
from app.study.records import differing_settings
from app.study.tables import TrialResult, best_row, study_rows, write_tables
from fruitcnn import runs
from fruitcnn.config import config_from_settings
from fruitcnn.model import plan_layers
from fruitcnn.plots import study_figure

GRID = """
name = "tiny"
description = "two by two"

[base]
dataset = "line"
epochs = 1
arch = "conv({filters},3) {norm} relu gap"

[grid]
filters = [8, 16]
norm = { with-bn = "bn", without = "" }
"""


def _write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_grid_is_every_combination_in_file_order(tmp_path):
    study = load_study(_write(tmp_path, GRID))
    assert study.name == "tiny" and [parameter.name for parameter in study.parameters] == ["filters", "norm"]
    assert [trial.labels for trial in study.trials] == [
        {"filters": "8", "norm": "with-bn"},
        {"filters": "8", "norm": "without"},
        {"filters": "16", "norm": "with-bn"},
        {"filters": "16", "norm": "without"},
    ]
    assert [trial.number for trial in study.trials] == [1, 2, 3, 4]
    assert study.trials[1].settings == {"dataset": "line", "epochs": 1, "arch": "conv(8,3)  relu gap"}
    assert study.trials[2].settings["arch"] == "conv(16,3) bn relu gap"
    assert trial_folder(study, study.trials[2]) == "3-filters=16-norm=with-bn"
    check_settings(study)


def test_variants_cross_the_grid_and_override_base_variables():
    study = study_from_dict(
        {
            "base": {
                "dataset": "line",
                "layers": 2,
                "hidden": 1,
                "arch": "{layers}*[conv(8) relu maxpool(2)] flatten {hidden}*[fc(16) relu]",
            },
            "variants": [
                {"label": "baseline"},
                {"label": "deeper", "layers": 3},
                {"label": "no fc", "hidden": 0},
            ],
            "grid": {"lr": [0.01, 0.001]},
        }
    )
    assert [trial.labels for trial in study.trials][:3] == [
        {"variant": "baseline", "lr": "0.01"},
        {"variant": "baseline", "lr": "0.001"},
        {"variant": "deeper", "lr": "0.01"},
    ]
    settings = {
        trial.labels["variant"]: trial.settings for trial in study.trials if trial.labels["lr"] == "0.01"
    }
    assert settings["baseline"]["arch"] == "2*[conv(8) relu maxpool(2)] flatten 1*[fc(16) relu]"
    assert settings["deeper"]["arch"].startswith("3*[")
    assert settings["no fc"]["arch"].endswith("0*[fc(16) relu]")
    assert settings["deeper"]["lr"] == 0.01 and "layers" not in settings["deeper"]
    check_settings(study)  # 0*[...] leaves the fc layers out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"grid": {"lr": [0.1]}, "trials": []}, "unknown study entry trials"),
        (
            {"grid": {"fliters": [8]}},
            "study entry fliters neither name a setting nor appear as {fliters}",
        ),
        ({"grid": {"learning_rate": [0.1]}}, "study entry learning_rate .* did you mean 'lr'\\?"),
        ({"grid": {"status": [1, 2]}}, "\\[grid\\] status: a name study.csv or the tuner uses itself"),
        ({"grid": {"study_plan": [1, 2]}}, "\\[grid\\] study_plan: a name study.csv or the tuner uses"),
        (
            {"variants": [{"label": "a", "lr": 0.1}], "grid": {"lr": [0.5, 0.6]}},
            "lr is set by \\[\\[variants\\]\\] and varied by \\[grid\\]",
        ),
        (
            {"base": {"arch": "conv({width}) gap"}, "grid": {"lr": [0.1]}},
            "uses {width}, which no \\[grid\\] entry",
        ),
        (
            {"base": {"epochs": [1, 2]}, "grid": {"lr": [0.1]}},
            "\\[base\\] epochs = \\[1, 2\\]: takes one value; put varied values under \\[grid\\]",
        ),
        ({"grid": {"lr": [0.1, 0.1]}}, "lists a value twice"),
        ({"grid": {"lr": 0.1}}, "give a list of values, e.g. lr = \\[1, 2\\]"),
        ({"grid": {"lr": []}}, "lr has no values"),
        ({"base": {"epochs": 1}}, "the study varies nothing"),
        ({"grid": {"variant": ["a"]}}, "'variant' is the name of the \\[\\[variants\\]\\] list"),
        ({"name": "my study", "grid": {"lr": [0.1]}}, "study name 'my study' must be letters"),
        ({"variants": [{"label": "a"}, {"label": "a"}]}, "labels must differ"),
        ({"base": {"a": "{b}", "b": "{a}", "arch": "{a}"}, "grid": {"lr": [0.1]}}, "nest deeper than 8"),
    ],
)
def test_bad_study_files_are_explained(data, message):
    with pytest.raises(ValueError, match=message):
        study_from_dict(data)


def test_file_errors_and_setting_errors_name_the_trial(tmp_path):
    with pytest.raises(ValueError, match='taken from the file name; add name = "my-study"'):
        load_study(_write(tmp_path, "[grid]\nlr = [1]", "my study.toml"))
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_study(_write(tmp_path, "[grid\nlr = [1]"))
    with pytest.raises(ValueError, match="does not exist; example study files are in studies/"):
        load_study(tmp_path / "missing.toml")
    study = study_from_dict({"base": {"dataset": "line"}, "grid": {"epochs": [2, 0]}})
    with pytest.raises(ValueError, match="trial 2 \\(epochs=0\\): epochs must be >= 1"):
        check_settings(study)
    json_study = load_study(_write(tmp_path, json.dumps({"grid": {"lr": [0.1, 0.2]}}), "s.json"))
    assert json_study.name == "s" and len(json_study.trials) == 2


def test_study_blocks_and_an_epochs_grid(tmp_path):
    study = study_from_dict(
        {
            "base": {"dataset": "line", "arch": "2*stage({width}) gap"},
            "blocks": {"stage": "conv({filters},3) bn relu maxpool(2)"},
            "grid": {"width": [8, 16], "epochs": [1, 3]},
        }
    )
    assert study.trials[2].settings == {"dataset": "line", "arch": "2*stage(16) gap", "epochs": 1}
    config = config_from_settings(study.trials[2].settings, blocks=study.blocks)
    assert [spec.params.get("filters") for spec in config.arch.layers if spec.kind == "conv"] == [16, 16]
    check_settings(study)
    labels = [trial.labels for trial in study.trials]
    rows = study_rows(study, [_result("0000", labels[1], DONE, val=0.5, test=0.25, epochs=3)])
    # The varied epochs keep their own column; the epochs trained are a result column.
    assert (rows[1]["epochs"], rows[1]["epochs_trained"]) == ("3", 3)
    assert (rows[0]["epochs"], rows[0]["epochs_trained"]) == ("1", "")


def test_the_study_plot_puts_every_trial_at_its_value():
    rows = [
        {"filters": "8", "norm": "a", "best_val_accuracy": 0.5, "test_accuracy": 0.25},
        {"filters": "16", "norm": "a", "best_val_accuracy": 0.75, "test_accuracy": 0.5},
        {"filters": "16", "norm": "b", "best_val_accuracy": 0.25, "test_accuracy": 1.0},
    ]
    figure = study_figure([("filters", ["8", "16"]), ("norm", ["a", "b"])], rows)
    panels = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_xlabel() for axis in panels] == ["filters", "norm"]

    def points(axis, label):
        lines = [line for line in axis.lines if line.get_label() == label or line.get_marker() == label]
        return sorted((round(float(x)), float(y)) for line in lines for x, y in zip(*line.get_data()))

    assert points(panels[0], "o") == [(0, 50.0), (1, 25.0), (1, 75.0)]  # validation dots at each value
    assert points(panels[0], "x") == [(0, 25.0), (1, 50.0), (1, 100.0)]
    (mean,) = [line for line in panels[0].lines if line.get_label() == "validation mean"]
    assert list(mean.get_ydata()) == [50.0, 50.0]
    assert [tick.get_text() for tick in panels[1].get_xticklabels()] == ["a", "b"]


def _result(trial_id, labels, status, val=None, test=None, params=1000, message="", epochs=2, loss=0.5):
    metrics = {}
    if val is not None:
        metrics = {
            "val_accuracy": val,
            "val_loss": loss,
            "test_accuracy": test,
            "parameters": float(params),
            "flops_per_image": 2.5e6,
            "best_epoch": 1.0,
            "epochs": float(epochs),
            "train_seconds": 10.04,
            "wall_seconds": 12.0,
        }
    return TrialResult(trial_id, labels, status, metrics, message)


def test_rows_follow_the_plan_and_the_best_is_chosen_on_validation(tmp_path):
    study = load_study(_write(tmp_path, GRID))
    labels = [trial.labels for trial in study.trials]
    results = [
        _result("0000", labels[0], DONE, val=0.90, test=0.99),  # best test, not best validation
        _result("0001", labels[2], FAILED, message="Traceback ...\nValueError: out of memory"),
        _result("0002", labels[1], DONE, val=0.95, test=0.80, params=2000, loss=0.25),
        _result("0003", labels[3], DONE, val=0.95, test=0.70, params=1500, loss=0.25),
        _result("0004", labels[2], DONE, val=0.50, test=0.50),  # the failed trial's later try
    ]
    rows = study_rows(study, results)
    assert [row["trial"] for row in rows] == [1, 2, 3, 4]
    assert [row["status"] for row in rows] == [DONE, DONE, DONE, DONE]
    assert rows[0]["best_val_accuracy"] == 0.90 and rows[0]["mflop_per_image"] == 2.5
    assert rows[2]["best_val_accuracy"] == 0.50  # the last try replaces the failure
    assert rows[1]["run"] == "runs/2-filters=8-norm=without"
    best = best_row(rows)
    assert best["trial"] == 4  # ties on validation accuracy and loss go to the fewer parameters
    lower_loss = [_result("0005", labels[1], DONE, val=0.95, test=0.1, params=9000, loss=0.125)]
    assert best_row(study_rows(study, results + lower_loss))["trial"] == 2  # the loss decides first

    pending = study_rows(study, results[:2])
    assert [row["status"] for row in pending] == [DONE, PENDING, FAILED, PENDING]
    assert pending[2]["message"] == "ValueError: out of memory" and pending[1]["run"] == ""
    assert best_row(pending)["trial"] == 1


def test_tables_hold_the_rows_and_link_the_best_report(tmp_path):
    study = load_study(_write(tmp_path, GRID))
    labels = [trial.labels for trial in study.trials]
    results = [
        _result("0000", labels[0], DONE, val=0.875, test=0.8125),
        _result("0001", labels[1], DONE, val=0.9375, test=0.90625),
        _result("0002", labels[2], FAILED, message="ValueError: boom"),
    ]
    rows = study_rows(study, results)
    folder = tmp_path / "out"
    best_run = folder / rows[1]["run"]
    best_run.mkdir(parents=True)
    (best_run / runs.REPORT_HTML).write_text("<html></html>")
    write_tables(folder, study, rows, wall_s=24.0)
    saved = runs.read_csv(folder / STUDY_CSV)
    assert [row["trial"] for row in saved] == [1, 2, 3, 4]
    assert saved[1]["best_val_accuracy"] == 0.9375 and saved[1]["filters"] == 8
    assert [row["status"] for row in saved] == [DONE, DONE, FAILED, PENDING]
    markdown = (folder / STUDY_MD).read_text()
    assert (
        "**Best on validation: trial 2** (filters=8, norm=without): 93.75% validation, 90.62% test"
        in markdown
    )
    assert "([report](runs/2-filters=8-norm=without/report.html))" in markdown
    assert (
        "| 1 | `8` | `with-bn` | 1,000 | 2.50 | 87.50% | 0.5 | 81.25% | 1 / 2 | 10 | 12 | done |" in markdown
    )
    assert "4 trials: 2 done, 1 failed, 1 pending; 0.4 min of trials" in markdown
    assert "- `with-bn`: `bn`" in markdown and "- `without`: (nothing)" in markdown
    assert "- trial 3: ValueError: boom" in markdown
    assert (folder / STUDY_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A diverged trial (validation loss NaN, accuracy finite) still gets its row.
    diverged = _result("0003", labels[3], DONE, val=0.125, test=0.125, loss=float("nan"))
    rows = study_rows(study, [*results, diverged])
    assert rows[3]["best_val_loss"] == "" and best_row(rows)["trial"] == 2
    write_tables(folder, study, rows)
    assert (
        "| 4 | `16` | `without` | 1,000 | 2.50 | 12.50% | n/a | 12.50% |" in (folder / STUDY_MD).read_text()
    )


# Image shape of each dataset the shipped study files use (the data itself is not read).
SHIPPED_SHAPES = {
    "line": (28, 28, 3),
    "../shared/data/fruits-360-24.tgz": (100, 100, 3),
    "../shared/data/cifar10-jpg.tgz": (32, 32, 3),
    "../shared/data/mnist": (28, 28, 1),
    "../shared/data/stl10-standin/stl10_binary": (96, 96, 3),
}


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "studies").glob("*.toml")), ids=lambda p: p.name
)
def test_shipped_study_files_plan_and_every_trial_fits_its_data(path):
    study = load_study(path)
    assert study.name == path.stem and study.description
    check_settings(study)
    for trial in study.trials:
        config = config_from_settings(trial.settings, blocks=study.blocks)
        height, width, channels = SHIPPED_SHAPES[config.data.dataset]
        size = config.data.image_size
        shape = (size, size, channels) if size else (height, width, channels)
        config = config_from_settings(trial.settings, image_shape=shape, blocks=study.blocks)
        plan_layers(config.arch, shape)


def test_a_study_refuses_multiworker_trials(tmp_path):
    text = '[base]\nstrategy = "multiworker"\n[grid]\nlr = [0.1, 0.2]'
    with pytest.raises(ValueError, match="spreads its trials over machines"):
        load_study(_write(tmp_path, text))
    mirrored = load_study(
        _write(tmp_path, '[base]\nstrategy = "mirrored"\n[grid]\nlr = [0.1, 0.2]', "m.toml")
    )
    assert [trial.settings["strategy"] for trial in mirrored.trials] == ["mirrored", "mirrored"]


def test_a_saved_config_is_compared_setting_by_setting_as_json_holds_it():
    planned = {"train": {"seed": 1, "crop": (4, 4), "lr": float("nan")}, "arch": {"name": "a"}}
    saved = {"train": {"seed": 2, "crop": [4, 4], "lr": None}, "arch": {"name": "a"}, "added": 1}
    assert differing_settings(planned, saved) == ["added", "train.seed"]
    assert differing_settings(planned, json.loads(json.dumps(runs.finite_json(planned)))) == []
    assert differing_settings(planned, ["not", "a", "config"]) == ["the whole config"]
