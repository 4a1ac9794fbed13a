"""explain.py end to end on models trained by train.py; its errors name the fix."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import explain as cli
import train

# Trained in this order: the newer run's name sorts first.
RUNS = {"multi": "z-multi", "single": "a-single"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A four-head and then a single-head line run under <tmp>/saved_models/ (the newer
    one's name sorts first, so "latest" cannot be mistaken for "last name")."""
    root = tmp_path_factory.mktemp("explain")
    common = "--images-per-class 6 --epochs 1 --batch-size 32 --verbose 0 --no-report".split()
    for name, extra in (("multi", ["--multihead"]), ("single", [])):
        assert train.main([*common, *extra, "--out", str(root / "saved_models" / RUNS[name])]) == 0
    image = np.zeros((28, 28, 3), np.uint8)
    image[10:13, 4:20] = (255, 0, 0)  # a red horizontal line, width 3, length 16
    Image.fromarray(image).save(root / "line.png")
    # the same picture twice the size with an alpha channel: converted as the training data was
    big = np.kron(image, np.ones((2, 2, 1), np.uint8))
    Image.fromarray(np.dstack([big, np.full((56, 56), 255, np.uint8)])).save(root / "big.png")
    return root


def test_design_card_command_uses_the_latest_run(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    assert cli.main(["--layer", "conv2", "--image", "line.png"]) == 0
    out = capsys.readouterr().out
    assert f"model: saved_models/{RUNS['single']} (the latest finished run" in out
    top = next(line for line in out.splitlines() if line.startswith("line: "))
    assert len(top.split(", ")) == 3 and top.split(", ")[0].split()[1].startswith("len")  # top 3 printed
    written = trained / "saved_models" / RUNS["single"] / "explanations"
    for name in ("line_occlusion_prob", "line_occlusion_loss", "line_saliency", "line_gradcam"):
        assert (written / f"{name}.png").is_file()
        maps = np.load(written / f"{name}.npy")
        assert maps.shape == (28, 28) and maps.dtype == np.float32 and np.isfinite(maps).all()


def test_the_occlusion_engines_write_the_same_maps_and_say_which_ran(trained, tmp_path, capsys):
    run = trained / "saved_models" / RUNS["single"]
    maps = {}
    for engine in ("auto", "batched"):
        argv = ["--model", str(run), "--image", str(trained / "line.png"), "--method", "occlusion"]
        argv += ["--patch", "7", "--out", str(tmp_path / engine), "--occlusion-engine", engine]
        assert cli.main(argv) == 0
        maps[engine] = np.load(tmp_path / engine / "line_occlusion_prob.npy")
    printed = capsys.readouterr().out
    assert "occlusion: incremental engine, 784 positions in" in printed
    assert "occlusion: batched re-inference, 784 positions in" in printed
    np.testing.assert_allclose(maps["auto"], maps["batched"], atol=1e-4)


def test_a_model_the_incremental_engine_cannot_follow_falls_back_and_says_why(
    trained, tmp_path, capsys, monkeypatch
):
    from visualize.incremental import Unsupported, engine

    def refuse(model, head):
        raise Unsupported("layer conv9 (DilatedConv) on the image path")

    monkeypatch.setattr(engine, "analyse", refuse)
    run = trained / "saved_models" / RUNS["single"]
    argv = ["--model", str(run), "--image", str(trained / "line.png"), "--method", "occlusion"]
    assert cli.main([*argv, "--stride", "4", "--out", str(tmp_path)]) == 0
    assert (
        "occlusion: batched re-inference (the incremental engine does not apply: layer conv9 (DilatedConv) "
        "on the image path), 49 positions in" in capsys.readouterr().out
    )
    with pytest.raises(SystemExit):
        cli.main([*argv, "--occlusion-engine", "incremental", "--out", str(tmp_path)])
    assert "incremental occlusion cannot handle this model: layer conv9" in capsys.readouterr().err
    from visualize.explain_run import DEFAULT_SMOOTHGRAD

    smoothgrad = next(action for action in cli.build_parser()._actions if action.dest == "smoothgrad")
    assert smoothgrad.default == DEFAULT_SMOOTHGRAD


def test_all_methods_on_a_four_head_model_with_a_chosen_target(trained, tmp_path, capsys):
    run = trained / "saved_models" / RUNS["multi"]
    argv = [
        "--model",
        str(run),
        "--image",
        str(trained / "line.png"),
        "--method",
        "all",
        "--out",
        str(tmp_path),
    ]
    assert cli.main([*argv, "--target", "angle:45", "--stride", "2", "--fill", "blur"]) == 0
    out = capsys.readouterr().out
    assert "line [angle]:" in out and "line [colour]:" in out
    names = {path.name for path in tmp_path.iterdir()}
    assert {"line_occlusion_prob_angle.npy", "line_saliency_angle.png", "line_gradcam_angle.npy"} <= names
    assert {
        "line_gradcampp_angle.npy",
        "line_layercam_angle.png",
        "line_integrated_gradients_angle.npy",
    } <= names
    assert {
        "line_activations_relu3.png",
        "filters_relu3.png",
        "filters_relu3.csv",
        "filters_weights.png",
    } <= names
    assert not any(name.endswith("_colour.npy") for name in names)  # only the chosen head


def test_samples_from_the_runs_own_split_use_their_true_labels(trained, tmp_path, capsys):
    run = trained / "saved_models" / RUNS["single"]
    argv = [
        "--model",
        str(run),
        "--samples",
        "2",
        "--split",
        "test",
        "--method",
        "saliency",
        "--out",
        str(tmp_path),
    ]
    assert cli.main([*argv, "--saliency", "logit", "--smoothgrad", "2", "--times-input"]) == 0
    assert len(list(tmp_path.glob("test*_saliency.npy"))) == 2
    explained = pd.read_csv(tmp_path / "explained.csv")
    assert (
        list(explained["explained"]) == list(explained["true"])
        and explained["true"].str.startswith("len").all()
    )


def test_images_of_any_size_and_mode_and_chosen_filters(trained, tmp_path, capsys):
    run = trained / "saved_models" / RUNS["single"]
    argv = ["--model", str(run), "--image", str(trained / "big.png"), "--out", str(tmp_path)]
    assert cli.main([*argv, "--method", "activations,filters", "--layer", "conv2", "--filters", "0,5"]) == 0
    assert np.load(tmp_path / "filters_conv2.npy").shape == (2, 28, 28, 3)  # once per layer, not per image
    assert np.load(tmp_path / "big_activations_conv2.npy").shape == (14, 14, 32)
    assert cli.main([*argv, "--method", "activations", "--layer", "gmp"]) == 0  # any layer, also not spatial
    assert np.load(tmp_path / "big_activations_gmp.npy").shape == (64,)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layer", "conv9"], "unknown layer 'conv9'; this model's conv layers are conv1, conv2, conv3"),
        (["--target", "purple"], "head 'class' has no class 'purple'; its classes are len7_w1_ang000_red"),
        (["--method", "xray"], "unknown method 'xray'; choose from occlusion, saliency"),
        (["--fill", "pink"], "expected one of mean, gray, zero, blur or a number"),
        ([], "nothing to explain: give --image FILE"),
        (["--image", "line.png", "--stride", "0"], "--stride must be at least 1 pixel, got 0"),
        (
            ["--image", "line.png", "--layer", "gmp"],
            "layer 'gmp' has output shape (None, 64), not feature maps",
        ),
        (["--image", "missing.png"], "cannot read image missing.png"),
        (["--image", "line.png", "--patch", "29"], "--patch 29 is larger than the model's 28x28 images"),
        (["--image", "line.png", "--dataset", "x"], "--dataset names the run's data for --samples"),
    ],
)
def test_errors_say_what_to_do(trained, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(trained)
    with pytest.raises(SystemExit) as stop:
        cli.main(["--model", f"saved_models/{RUNS['single']}", *argv])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_four_head_target_needs_the_head(trained, capsys):
    with pytest.raises(SystemExit):
        cli.main(
            ["--model", str(trained / "saved_models" / RUNS["multi"]), "--image", "x.png", "--target", "45"]
        )
    assert "write HEAD:CLASS, e.g. angle:" in capsys.readouterr().err


def test_quality_scores_the_maps_drawn_against_the_line_masks(trained, tmp_path, capsys):
    from fruitcnn import runs
    from fruitcnn.config import RunConfig
    from fruitcnn.data import load_dataset
    from visualize import quality

    run = trained / "saved_models" / RUNS["single"]
    argv = ["--model", str(run), "--samples", "3", "--quality", "--out", str(tmp_path), "--stride", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "randomization_spearman" in printed and "pointing" in printed
    scores = pd.read_csv(tmp_path / "quality.csv")
    # every image's hit or miss is printed as in the CSV
    assert printed.count(" hit ") + printed.count(" miss ") == len(scores)
    assert printed.count(" hit ") == int(scores["pointing"].sum())
    assert sorted(scores["method"].unique()) == ["gradcam", "occlusion_loss", "occlusion_prob", "saliency"]
    assert len(scores) == 12 and set(scores["pointing"]) <= {0.0, 1.0}
    assert (scores["deletion_auc_random"] > 0).all() and scores["randomization_spearman"].between(-1, 1).all()
    # the scores are those of the maps written: recomputed from the .npy files and the masks
    split = load_dataset(RunConfig.from_dict(runs.read_json(run / runs.CONFIG_FILE)).data).test
    for stem, rows in scores.groupby("image"):
        mask = split.masks[int(stem.removeprefix("test"))][None]
        probability = np.load(tmp_path / f"{stem}_occlusion_prob.npy")[None]
        row = rows.set_index("method")
        assert row.loc["occlusion_prob", "pointing"] == quality.pointing_game(-probability, mask)[0]
        saliency = np.load(tmp_path / f"{stem}_saliency.npy")[None]
        assert row.loc["saliency", "mask_mass"] == pytest.approx(
            quality.mask_mass(saliency, mask)[0], abs=1e-6
        )


def test_quality_of_a_four_head_model_and_of_files_without_masks(trained, tmp_path, capsys):
    run = trained / "saved_models" / RUNS["multi"]
    argv = ["--model", str(run), "--image", str(trained / "line.png"), "--quality", "--method", "gradcam"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    scores = pd.read_csv(tmp_path / "quality.csv")
    assert sorted(scores["head"]) == ["angle", "colour", "length", "width"]
    assert scores["pointing"].isna().all()  # an image file has no mask
    assert scores["insertion_auc"].between(0, 1).all()
    measured = capsys.readouterr().out.split("quality (visualize.quality)")[1]
    assert "pointing" not in measured and "mask_mass" not in measured  # no mask: neither legend nor column
    assert "mean over" not in measured and all(head in measured for head in ("length", "angle"))
    with pytest.raises(SystemExit):
        cli.main([*argv[:-2], "--method", "activations", "--out", str(tmp_path)])
    assert "--quality measures heatmaps" in capsys.readouterr().err


def test_samples_of_moved_data_are_read_from_dataset(trained, tmp_path, capsys):
    import json
    import shutil

    from fruitcnn.data import line

    run = tmp_path / "run"
    shutil.copytree(trained / "saved_models" / RUNS["single"], run)
    data = line.generate_line_dataset(6, seed=0)
    line.write_png_folders(data, tmp_path / "lines")
    config = json.loads((run / "config.json").read_text())
    config["data"]["dataset"] = str(tmp_path / "gone")  # trained on a folder that has moved since
    (run / "config.json").write_text(json.dumps(config))
    argv = ["--model", str(run), "--samples", "1", "--method", "saliency", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "gone" in capsys.readouterr().err
    assert cli.main([*argv, "--dataset", str(tmp_path / "lines")]) == 0


def test_a_model_made_elsewhere_with_a_plain_output_is_explained(trained, tmp_path, capsys):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="softmax", name="probabilities"),
        ]
    )
    model.save(tmp_path / "mine.keras")
    argv = ["--model", str(tmp_path / "mine.keras"), "--image", str(trained / "line.png")]
    argv += ["--out", str(tmp_path / "out"), "--method", "occlusion,saliency,gradcam"]
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "pass --input-range 0-1" in capsys.readouterr().err
    assert cli.main([*argv, "--input-range", "0-1"]) == 0
    assert "line: " in capsys.readouterr().out  # top predictions, classes by index
    for name in ("line_occlusion_prob", "line_saliency", "line_gradcam"):
        assert np.isfinite(np.load(tmp_path / "out" / f"{name}.npy")).all()


def test_first_layer_filter_images_are_its_kernels_and_every_layer_in_one_call(trained, tmp_path, capsys):
    from visualize.filters import window_correlation

    run = trained / "saved_models" / RUNS["single"]
    argv = ["--model", str(run), "--method", "filters", "--out", str(tmp_path)]
    assert cli.main([*argv, "--layer", "conv1", "--filters", "all"]) == 0  # no image needed
    patterns = np.load(tmp_path / "filters_conv1.npy")
    kernels = np.load(tmp_path / "filters_weights.npy")
    assert patterns.shape == (16, 28, 28, 3) and kernels.shape == (16, 4, 4, 3)
    scores = [window_correlation(pattern, kernel) for pattern, kernel in zip(patterns, kernels)]
    assert np.mean(scores) >= 0.9, scores
    measures = pd.read_csv(tmp_path / "filters_conv1.csv")
    assert list(measures.columns) == [
        "filter",
        "dead",
        "activation",
        "percentile_99",
        "structure",
        "above_percentile",
    ]
    living = measures[~measures["dead"]]
    assert living["above_percentile"].all() and (living["structure"] > 0.3).all()
    assert "living above the 99th percentile of their activations there" in capsys.readouterr().out
    assert cli.main([*argv, "--layer", "all"]) == 0
    assert sorted(path.name for path in tmp_path.glob("filters_relu*.png")) == [
        "filters_relu1.png",
        "filters_relu2.png",
        "filters_relu3.png",
    ]
    cams = ["--model", str(run), "--image", str(trained / "line.png"), "--method", "gradcam"]
    assert cli.main([*cams, "--layer", "relu1,relu3", "--out", str(tmp_path / "cams")]) == 0
    assert sorted(path.name for path in (tmp_path / "cams").glob("*.npy")) == [
        "line_gradcam_relu1.npy",
        "line_gradcam_relu3.npy",
    ]


def test_serve_checks_its_folder_and_port_before_loading_anything(tmp_path, capsys):
    import socket

    with pytest.raises(SystemExit) as stop:
        cli.main(["--serve", str(tmp_path / "nowhere")])
    assert stop.value.code == 2
    assert "no such folder; give saved_models or a run folder" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit):
            cli.main(["--serve", str(tmp_path), "--port", str(port)])
    assert f"--port {port}: Address already in use; choose another port" in capsys.readouterr().err


def test_cued_samples_explain_the_test_images_with_the_planted_cue(trained, tmp_path, capsys):
    import json
    import shutil

    plain = trained / "saved_models" / RUNS["single"]
    argv = ["--samples", "2", "--method", "saliency", "--cued"]
    with pytest.raises(SystemExit):  # trained without a cue: nothing cued to explain
        cli.main(["--model", str(plain), *argv, "--out", str(tmp_path / "none")])
    assert "trained without one (--cue none)" in capsys.readouterr().err
    run = tmp_path / "run"
    shutil.copytree(plain, run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["cue"] = "patch"  # as if trained with --cue patch
    (run / "config.json").write_text(json.dumps(config))
    assert cli.main(["--model", str(run), *argv, "--out", str(tmp_path / "cued"), "--quality"]) == 0
    written = sorted(path.name for path in (tmp_path / "cued").glob("*_saliency.npy"))
    assert len(written) == 2 and all(name.startswith("test-cued") for name in written)
    with pytest.raises(SystemExit):
        cli.main(["--model", str(run), "--image", str(trained / "line.png"), "--cued"])
    assert "--cued chooses the cued copies of --samples" in capsys.readouterr().err
