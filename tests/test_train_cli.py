"""train.py as users type it: flags, --summary, errors, a tiny end-to-end run, resume."""

import json
import tarfile

import pytest

import train as cli
from fruitcnn.config import SETTING_FIELDS, config_from_settings
from tests.fruitcnn.data import formats


def _run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _fails(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_summary_of_cs671_needs_no_dataset(capsys):
    code, out, _ = _run(
        ["--arch", "cs671-part1", "--image-size", "28", "--num-classes", "96", "--summary"], capsys
    )
    assert code == 0
    for name in ("conv1", "relu1", "bn1", "pool1", "flatten", "fc1", "class_logits"):
        assert name in out
    assert "4,069,216 parameters" in out
    assert "(None, 22, 22, 32)" in out


@pytest.mark.parametrize(
    ("preset", "parameters", "last_map"),
    [("ece4179-shallow", "390,602", "(None, 3, 3, 128)"), ("ece4179-deep", "901,066", "(None, 6, 6, 192)")],
)
def test_summary_of_the_ece4179_presets(capsys, preset, parameters, last_map):
    code, out, _ = _run(["--arch", preset, "--image-size", "96", "--num-classes", "10", "--summary"], capsys)
    assert code == 0
    assert f"architecture {preset}: input 96x96x3, {parameters} parameters" in out
    assert last_map in out and "(None, 10)" in out


def test_the_shallow_net_on_cifar_sized_images_names_the_image_size_to_use(capsys):
    err = _fails(
        ["--arch", "ece4179-shallow", "--image-size", "32", "--num-classes", "10", "--summary"], capsys
    )
    assert "receives a 2x2 map from relu3 but needs at least 3x3" in err
    assert "pass --image-size 39 or larger" in err


def test_summary_of_the_multihead_model(capsys):
    code, out, _ = _run(["--multihead", "--summary"], capsys)
    assert code == 0
    for head in ("length", "width", "colour", "angle"):
        assert f"{head}_logits" in out


def test_too_small_image_is_refused_with_the_way_out(capsys):
    err = _fails(["--arch", "cs671-part1", "--image-size", "6", "--num-classes", "10", "--summary"], capsys)
    assert "layer conv1" in err and "needs at least 7x7" in err
    assert "smallest input this architecture accepts is 8x8" in err and "--image-size 8" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "resnet50", "--summary"], "unknown architecture preset 'resnet50'"),
        (["--dataset", "cifar100", "--epochs", "1"], "unknown dataset 'cifar100'"),
        (["--split", "60:40"], "cannot read split '60:40'"),
        (["--out", "a", "--run", "b"], "either --out DIR or --run NAME"),
        (["--resume", "--epochs", "5"], "--resume continues a run with its saved config.json; drop --epochs"),
        (["--resume", "--multihead"], "drop --multihead"),
        (["--num-classes", "10"], "--num-classes only applies to --summary"),
        (["--momentum", "2"], "momentum must be in [0, 1)"),
        (["--arch", "bn(epsilon=none) gap", "--summary"], "bn epsilon must be a number > 0"),
        (["--bn-layer", "keras", "--bn-test-batch-stats", "--summary"], "need fruitcnn's bn layer"),
        (["--lr", "inf"], "TrainConfig.learning_rate (--lr) must be a finite number, got inf"),
        (["--l2", "nan"], "ArchConfig.l2 (--l2) must be a finite number, got nan"),
        (["--run", "../../x"], "--run '../../x' is not a run name: it must be a plain folder name"),
        (["--unpack-limits", "size=3"], "unpack limit 'size=3': expected member=SIZE"),
    ],
)
def test_bad_flags_are_explained(argv, message, capsys):
    assert message in _fails(argv, capsys)


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "python train.py --dataset line --multihead" in out
    helps = {action.dest: action.help for action in cli.build_parser()._actions}
    # defaults come from the config dataclasses
    assert helps["bn_momentum"].endswith("(default: 0.9)")
    assert helps["epochs"].endswith("(default: 2)") and helps["split"].endswith("(default: auto)")


def test_flags_are_built_from_the_config_fields():
    actions = {action.dest: action for action in cli.build_parser()._actions}
    for setting in SETTING_FIELDS:  # every setting is a flag of that name, with help
        assert actions[setting].help and actions[setting].default is None
    assert actions["lr"].help == "peak learning rate (default: 0.01)"
    assert actions["lr"].option_strings == ["--lr"] and actions["lr"].metavar == "F"
    assert actions["flip"].choices == ("none", "horizontal", "vertical", "both")
    normalize = actions["normalize"]
    assert normalize.option_strings == ["--no-normalize"] and "(default" not in normalize.help
    test_each_epoch = actions["test_each_epoch"]
    assert test_each_epoch.option_strings == ["--test-each-epoch", "--no-test-each-epoch"]
    assert test_each_epoch.help.endswith("(default: after every epoch; the photo recipe: only at the end)")
    for flags, value in (([], None), (["--test-each-epoch"], True), (["--no-test-each-epoch"], False)):
        assert cli.build_parser().parse_args(flags).test_each_epoch is value
    assert actions["image_size"].help.endswith("(default: None)")
    assert cli.build_parser().parse_args(["--time-budget", "1h30m"]).time_budget == 5400.0


def test_a_bad_time_budget_is_explained(capsys):
    assert "argument --time-budget: cannot read the time budget 'soon'" in _fails(
        ["--time-budget", "soon"], capsys
    )
    assert "argument --epochs: invalid int value: 'two'" in _fails(["--epochs", "two"], capsys)


def test_flags_map_to_config_fields():
    args = cli.build_parser().parse_args(
        [
            "--multihead",
            "--epochs",
            "7",
            "--lr",
            "0.2",
            "--optimizer",
            "sgd",
            "--l2",
            "0.001",
            "--split",
            "70/30",
            "--bn-test-batch-stats",
            "--arch",
            "conv(8) gap",
        ]
    )
    config = cli.make_config(args)
    assert config.head == "multi"
    assert (config.train.epochs, config.train.learning_rate, config.train.optimizer) == (7, 0.2, "sgd")
    assert config.arch.l2 == 0.001 and config.arch.bn_batch_stats_at_inference
    assert config.data.split == "70/30" and config.arch.name == "custom"
    assert cli.make_config(cli.build_parser().parse_args([])).arch.name == "line"
    # A study file's settings are the same names with the same meaning.
    same = {
        "multihead": True,
        "epochs": 7,
        "lr": 0.2,
        "optimizer": "sgd",
        "l2": 0.001,
        "split": "70/30",
        "bn_test_batch_stats": True,
        "arch": "conv(8) gap",
    }
    assert config_from_settings(same) == config


def test_end_to_end_run_and_resume_of_a_finished_run(tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = [
        "--images-per-class",
        "6",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        str(out_dir),
        "--verbose",
        "0",
    ]
    code, out, _ = _run(argv, capsys)
    assert code == 0
    assert "test accuracy:" in out and f"run saved in {out_dir}/" in out
    assert f"report: {out_dir / 'report.html'}" in out and (out_dir / "report.md").is_file()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["test_images"] == round(0.4 * 96 * 6)
    # --config reuses a saved configuration; flags override single fields
    args = cli.build_parser().parse_args(["--config", str(out_dir / "config.json"), "--epochs", "4"])
    config = cli.make_config(args)
    assert config.data.images_per_class == 6 and config.train.epochs == 4
    # an existing run is never overwritten
    assert "already holds a run" in _fails(argv, capsys)
    assert "already finished its 1 epochs; nothing to resume" in _fails(["--resume", str(out_dir)], capsys)


def test_resume_without_checkpoint_is_explained(tmp_path, capsys):
    assert "has no checkpoint to resume" in _fails(["--resume", str(tmp_path)], capsys)


def test_train_on_a_downloaded_archive_with_a_skipped_file(tmp_path, capsys):
    top = tmp_path / "src" / "fruits"
    formats.class_tree(top / "Training", {"Apple Braeburn": 12, "Banana": 12}, size=16)
    formats.class_tree(top / "Test", {"Apple Braeburn": 4, "Banana": 4}, start=50, size=16)
    (top / "Training" / "Banana" / "broken.jpg").write_bytes(b"not a jpeg")
    archive = formats.tar_folder(top, tmp_path / "assignment1.tgz")
    out_dir = tmp_path / "run"
    argv = [
        "--dataset",
        str(archive),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(out_dir),
        "--verbose",
        "0",
    ]
    code, out, err = _run(
        argv + ["--flip", "horizontal", "--translate", "2", "--label-smoothing", "0.1"], capsys
    )
    assert code == 0
    assert "data: " in out and "2 classes, 16x16x3; train 22 / val 2 / test 8" in out
    assert "skipped 1 file(s)" in err and "fruits/Training/Banana/broken.jpg" in err
    data = json.loads((out_dir / "data.json").read_text())
    assert (
        data["skipped"][0]["file"] == "fruits/Training/Banana/broken.jpg"
        and data["format"] == "split-folders"
    )
    config = json.loads((out_dir / "config.json").read_text())
    assert config["arch"]["name"].startswith("photos-w")  # colour photos get the photo recipe's network
    recipe = config["recipe"]
    assert recipe.startswith("recipe photos:") and "16-px colour photos, 2 classes" in recipe
    assert config["train"]["optimizer"] == "sgd" and config["train"]["warmup_epochs"] == 0.23  # of 1 epoch
    assert config["train"]["batch_size"] == 8 and config["train"]["time_budget"] == 0  # flags win
    assert config["augment"] == {"flip": "horizontal", "translate": 2, "rotate": 0.0, "color_jitter": 0.0}
    # --strict refuses the same data, naming the file, with no traceback
    err = _fails(["--dataset", str(archive), "--strict", "--out", str(tmp_path / "other")], capsys)
    assert "broken.jpg" in err and "Traceback" not in err


def test_bad_datasets_are_explained_without_traceback(tmp_path, capsys):
    err = _fails(["--dataset", str(tmp_path / "missing.tgz")], capsys)
    assert "unknown dataset" in err and "fix:" in err
    unsafe = tmp_path / "unsafe.tar"
    with tarfile.open(unsafe, "w") as handle:
        handle.addfile(tarfile.TarInfo("../outside.png"))
    assert "unsafe archive entry" in _fails(["--dataset", str(unsafe)], capsys)


def test_an_existing_file_is_no_run_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    err = _fails(["--images-per-class", "2", "--out", str(tmp_path / "notes.txt")], capsys)
    assert "is an existing file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_unusable_cache_dir_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = _fails(["--images-per-class", "2", "--cache-dir", str(tmp_path / "file")], capsys)
    assert "--cache-dir" in err and "is not usable" in err


def test_a_diverging_run_exits_non_zero_with_strict_json(tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = ["--images-per-class", "6", "--batch-size", "32", "--optimizer", "sgd", "--lr", "1e12"]
    argv += ["--schedule", "constant", "--out", str(out_dir), "--verbose", "0"]
    code, out, err = _run(argv, capsys)
    assert code == 1 and "test accuracy" not in out
    assert "train.py: training diverged: the training loss exploded to" in err and "try --lr 1e+11" in err
    text = (out_dir / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and json.loads(text)["diverged"]["epoch"] == 1
    assert "diverged at epoch 1" in _fails(["--resume", str(out_dir)], capsys)
