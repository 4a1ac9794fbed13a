"""bench/run.py's contract: the last stdout line is the JSON report, for every task kind.

The constants the tests make small are patched in the module that owns them (bench.common,
bench.tasks.*), which its functions read when they run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench import common
from bench.tasks import data, distributed, quality, shortcut, stream, study
from tests.fruitcnn.data import formats

# bench/run.py is a script (python bench/run.py TASK): loaded from its file, as it is run.
_SPEC = importlib.util.spec_from_file_location(
    "bench_run", Path(__file__).resolve().parents[2] / "bench" / "run.py"
)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_fruits_task_runs_on_any_fruits_360_style_archive(tmp_path, capsys, monkeypatch):
    top = tmp_path / "src" / "fruits-360-other"
    formats.class_tree(top / "Training", {"Kiwi": 40, "Lemon": 40, "Mango": 40}, size=100)
    formats.class_tree(top / "Test", {"Kiwi": 5, "Lemon": 5, "Mango": 5}, start=500, size=100)
    archive = formats.tar_folder(top, tmp_path / "other.tgz")
    monkeypatch.setattr(common, "_PEAK_REPEATS", 1)
    assert bench.main(["fruits", "--data", str(archive)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["task"] == "fruits" and report["classes"] == 3 and report["image_shape"] == [100, 100, 3]
    assert 0.0 <= report["test_accuracy"] <= 1.0 and report["test_images"] == 15
    assert report["wall_s"] >= report["data_s"] > 0 and report["cache_hit"] is True
    assert (
        report["command"]
        == f"python train.py --dataset {archive} --arch fruits --epochs 2 --batch-size 64 --lr 0.01"
    )
    assert report["meets_target"] == (report["test_accuracy"] >= 0.99 and report["wall_s"] <= 180)
    assert len(report["test_accuracy_by_epoch"]) == report["epochs"]


def test_data_task_without_its_data_is_explained(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["mnist", "--data", str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "pass --data PATH" in capsys.readouterr().err


def test_line_task_refuses_data(capsys):
    with pytest.raises(SystemExit):
        bench.main(["line", "--data", "x"])
    assert "generates its data" in capsys.readouterr().err


def test_study_task_compares_the_study_engine_with_a_plain_loop(tmp_path, capsys, monkeypatch):
    study_file = tmp_path / "tiny.toml"
    study_file.write_text(
        'name = "tiny"\n[base]\ndataset = "line"\nimages_per_class = 12\nepochs = 1\nbatch_size = 32\n'
        'arch = "conv({filters},3) bn relu gap"\n[grid]\nfilters = [4, 8]\n'
    )
    monkeypatch.setattr(study, "_STUDY_FILE", study_file)
    assert bench.main(["study"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["task"] == "study" and report["trials"] == report["trials_done"] == 2
    assert report["best_trial"]["filters"] in ("4", "8") and 0.0 <= report["test_accuracy"] <= 1.0
    # Both times are rounded to 0.1 s in the JSON, the ratio is not: a few per cent apart at most here.
    assert report["overhead_ratio"] == pytest.approx(report["wall_s"] / report["plain_loop_s"], rel=0.04)
    assert report["wall_s"] >= report["train_s_sum"] > 0


def test_explain_quality_task_measures_every_method_on_a_small_line_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(quality, "_QUALITY_IMAGES_PER_CLASS", 8)
    monkeypatch.setattr(quality, "_QUALITY_EPOCHS", 1)
    monkeypatch.setattr(quality, "_QUALITY_IMAGES", 6)
    monkeypatch.setattr(quality, "_SHUFFLED_IMAGES_PER_CLASS", 4)
    monkeypatch.setattr(quality, "_SHUFFLED_EPOCHS", 2)
    monkeypatch.setitem(data.RECIPES["fruits"], "data", tmp_path / "no-fruits.tgz")
    assert bench.main(["explain-quality"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["task"] == "explain-quality" and report["wall_s"] > 0 and report["images"] == 6
    methods = report["methods"]
    assert {"occlusion_prob", "occlusion_loss", "saliency", "smoothgrad", "gradcam"} <= set(methods)
    variants = {"saliency_logit", "gradient_x_input", "gradcam_relu1", "gradcam_relu2"}
    assert variants <= set(methods) and "gradcam_relu3" not in methods  # relu3 is gradcam's default
    for values in methods.values():
        assert values["images"] == 6
        for name in ("pointing", "mask_mass", "deletion_auc", "deletion_auc_random", "insertion_auc"):
            assert 0.0 <= values[name] <= 1.0
            low, high = values[f"{name}_interval"]  # the 95% bootstrap interval holds the mean
            assert low - 1e-4 <= values[name] <= high + 1e-4
        assert -1.0 <= values["randomization_spearman"] <= 1.0
        assert -1.0 <= values["data_randomization_spearman"] <= 1.0
        assert len(values["cascade_spearman"]) == len(report["cascade_layers"]) == 4
        assert values["cascade_spearman"][-1] == pytest.approx(values["randomization_spearman"], abs=1e-4)
    # gradient x input is zero wherever the image is black, so all its mass lies on the
    # line whatever the model learned: the masks are aligned with the maps
    assert methods["gradient_x_input"]["mask_mass"] == 1.0 and methods["gradient_x_input"]["pointing"] == 1.0
    assert report["cascade_layers"] == ["class_logits", "conv3", "conv2", "conv1"]
    assert report["patch"] == 3 and isinstance(report["misses"], list)
    assert 0.0 <= report["shuffled_labels_train_accuracy"] <= 1.0
    assert report["meets_goals"] == (not report["misses"])
    assert report["fruits"] == {"skipped": f"{tmp_path / 'no-fruits.tgz'} does not exist"}
    for figure in report["figures"]:
        assert (tmp_path / figure).stat().st_size > 1000
    assert (tmp_path / report["folder"] / "line-quality.csv").is_file()
    assert report["background"] == "black"


def test_explain_quality_draws_the_lines_on_the_background_asked_for(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    asked = []

    def measured(models, out, background, methods):
        asked.append((background, methods))
        return {"test_accuracy": 1.0, "methods": {}, "misses": []}

    monkeypatch.setattr(quality, "_line_quality", measured)
    monkeypatch.setattr(quality, "_fruits_quality", lambda models, out, methods: {"skipped": "not here"})
    assert bench.main(["explain-quality", "--background", "texture"]) == 0
    assert bench.main(["explain-quality", "--methods", "occlusion_prob, gradcam_relu2"]) == 0
    assert asked == [("texture", None), ("black", ("occlusion_prob", "gradcam_relu2"))]
    for flags, message in (
        (["line", "--background", "noise"], "--background is for the explain-quality task"),
        (["line", "--methods", "rise"], "--methods is for the explain-quality and shortcut tasks, not line"),
        (["explain-quality", "--methods", "rise,lime"], "--methods 'rise,lime': unknown lime; expected"),
        (["explain-quality", "--methods", ","], "--methods ',': no method; expected"),
    ):
        with pytest.raises(SystemExit) as stop:
            bench.main(flags)
        assert stop.value.code == 2
        assert message in capsys.readouterr().err
    assert len(asked) == 2  # refused before any work


def test_quality_tasks_measure_the_methods_asked_for_if_the_model_offers_them():
    offered = ("occlusion_prob", "saliency", "gradcam", "gradcam_relu2")
    assert quality.chosen_methods(offered) == list(offered)
    assert quality.chosen_methods(offered, ("gradcam_relu2", "saliency")) == ["gradcam_relu2", "saliency"]
    with pytest.raises(ValueError, match="model has no gradcam_relu9; it offers occlusion_prob, saliency"):
        quality.chosen_methods(offered, ("saliency", "gradcam_relu9"))


def test_stl96_task_compares_the_deep_net_with_the_recipe_in_the_same_time(tmp_path, capsys, monkeypatch):
    formats.write_stl10(tmp_path / "stl10_binary", train=40, test=20)
    monkeypatch.setattr(common, "_PEAK_REPEATS", 1)
    monkeypatch.setitem(data.RECIPES["stl96"], "settings", {"split": "30/10/20", "batch_size": 16})
    assert bench.main(["stl96", "--data", str(tmp_path / "stl10_binary"), "--time-budget", "6"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["task"] == "stl96" and report["time_budget_s"] == 6
    deep, recipe = report["deep"], report["recipe"]
    assert deep["arch"] == "ece4179-deep" and "no batch norm" in deep["recipe"]
    stl = tmp_path / "stl10_binary"
    assert deep["command"] == f"python train.py --dataset {stl} --arch ece4179-deep --split 30/10/20 " + (
        "--batch-size 16 --time-budget 6 --test-each-epoch"
    )
    assert recipe["command"] == (
        f"python train.py --dataset {stl} --split 30/10/20 --batch-size 16 --time-budget 6 --test-each-epoch"
    )
    assert recipe["arch"].startswith("photos-w") and "96-px colour photos" in recipe["recipe"]
    # the recipe chose the precision from this machine's two matmul peaks, and said so
    assert deep["precision"] == "float32" and recipe["precision"] in ("float32", "mixed_bfloat16")
    assert (recipe["precision"] == "mixed_bfloat16") == ("mixed_bfloat16: " in recipe["recipe"])
    assert recipe["precision_peak_fraction"] > 0
    assert (
        report["test_accuracy"] == recipe["test_accuracy"]
        and report["deep_test_accuracy"] == deep["test_accuracy"]
    )
    for run in (deep, recipe):
        assert len(run["test_accuracy_by_epoch"]) == len(run["elapsed_s_by_epoch"]) >= 1
        assert run["elapsed_s_by_epoch"][-1] <= 6 + 10  # the budget, within its tolerance
    assert report["deep_time_to_deep_accuracy_s"] is not None
    with pytest.raises(SystemExit):
        bench.main(["mnist", "--time-budget", "5"])
    assert "--time-budget is for the cifar10 and stl96 tasks" in capsys.readouterr().err


def test_images_stepped_count_a_budget_runs_partial_last_epoch():
    from types import SimpleNamespace

    dataset = SimpleNamespace(train=[0] * 100)  # 100 images, batch 32: 3 whole steps an epoch
    config = SimpleNamespace(train=SimpleNamespace(batch_size=32))
    whole = SimpleNamespace(history=[{"epoch": 1}, {"epoch": 2}])
    budget = SimpleNamespace(history=[{"steps": 3}, {"steps": 3}, {"steps": 1}])
    assert common.images_stepped(whole, dataset, config) == 2 * 3 * 32
    assert common.images_stepped(budget, dataset, config) == 7 * 32  # not 3 whole epochs (9 steps)


@pytest.mark.parametrize("task", sorted(data.RECIPES))
def test_each_recipes_command_gives_train_py_its_settings(task):
    import train

    settings = {"dataset": str(data.RECIPES[task]["data"]), **data.RECIPES[task]["settings"]}
    args = train.build_parser().parse_args(common.train_flags(settings))
    assert train._settings(args) == settings


def test_train_flags_write_switches_and_whole_seconds_as_train_py_takes_them():
    import train

    settings = {"multihead": True, "strict": True, "normalize": False, "test_each_epoch": False}
    settings |= {"time_budget": 1170.0, "lr": 0.05, "arch": "ece4179-deep", "translate": 4}
    flags = common.train_flags(settings)
    assert " ".join(flags) == (
        "--multihead --strict --no-normalize --no-test-each-epoch --time-budget 1170 --lr 0.05 "
        "--arch ece4179-deep --translate 4"
    )
    assert train._settings(train.build_parser().parse_args(flags)) == settings
    # switches at their defaults need no flag
    assert common.train_flags({"normalize": True, "multihead": False}) == []
    # the photo recipe turns the per-epoch test off, so asking for it is written out
    assert common.train_flags({"test_each_epoch": True}) == ["--test-each-epoch"]


def test_shortcut_task_trains_with_and_without_each_cue_and_checks_both(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    objects = formats.object_tree(tmp_path / "objects", classes=3, per_class=12, size=32)
    photos = formats.photo_tree(tmp_path / "photos", count=40, size=20)
    monkeypatch.setattr(shortcut, "SETTINGS", {"arch": "fruits", "epochs": 1, "batch_size": 16, "lr": 0.01})
    monkeypatch.setattr(shortcut, "IMAGES", 6)
    monkeypatch.setattr(shortcut, "CUES", ("patch", "hue"))
    assert bench.main(["shortcut", "--data", str(objects), "--backgrounds", str(photos)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["task"] == "shortcut" and report["wall_s"] > 0 and report["images"] == 6
    assert 0 < report["object_area_share"] < 1 and set(report["cues"]) == {"patch", "hue"}
    assert {"occlusion_prob", "integrated_gradients", "rise", "gradcampp", "layercam"} <= set(
        report["methods"]
    )
    for values in report["methods"].values():
        assert values["images"] == 6 and 0 <= values["pointing"] <= 1
        low, high = values["mask_mass_interval"]
        assert low - 1e-4 <= values["mask_mass"] <= high + 1e-4
    for kind, found in report["cues"].items():
        for model in ("trained_with_cue", "trained_without_cue"):
            figures = found[model]
            assert 0 <= figures["flagged"] <= 1 and 0 <= figures["accuracy_without_cue"] <= 1
            assert set(figures["shares"]) == set(report["methods"]) - set(shortcut.SKIPPED_IN_CHECKS)
            shares = figures["shares"]["occlusion_prob"]
            regions = ("object", "cue") if kind == "hue" else ("object", "cue", "rest")
            assert sum(shares[region] for region in regions) == pytest.approx(1.0, abs=1e-3) or not any(
                shares[region] for region in regions
            )
    assert report["meets_goals"] == (not report["misses"])
    with pytest.raises(SystemExit):
        bench.main(["shortcut", "--data", str(objects), "--backgrounds", str(tmp_path / "none")])
    assert "pass --backgrounds PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # both missing: both named at once
        bench.main(["shortcut", "--data", str(tmp_path / "no"), "--backgrounds", str(tmp_path / "none")])
    error = capsys.readouterr().err
    assert "no does not exist; pass --data PATH" in error
    assert "none does not exist; pass --backgrounds PATH" in error


def test_distributed_task_compares_two_workers_with_one_process(capsys, monkeypatch):
    run = ["--dataset", "line", "--images-per-class", "4", "--epochs", "3", "--batch-size", "64"]
    monkeypatch.setattr(distributed, "RUN", [*run, "--no-report", "--verbose", "0"])
    monkeypatch.setattr(distributed, "BATCH", 64)
    assert bench.main(["distributed"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["task"] == "distributed" and report["weights_disagreement"] == 0.0
    assert report["speedup_here"] == pytest.approx(
        report["step_ms_one_process"] / report["step_ms_two_workers"], rel=0.01
    )
    # the line model's gradients and its three batch norms' sums (16, 32, 64 channels)
    assert report["batch_norm_floats"] == (2 * 16 + 1) + (2 * 32 + 1) + (2 * 64 + 1)
    assert report["bytes_per_step"] == 4 * (report["gradient_floats"] + report["batch_norm_floats"])
    assert report["batch_norm_all_reduces"] == 12 and report["widest_batch_norm_floats"] == 65
    assert report["loss_max_relative_difference"] < 1e-3
    assert report["gradient_all_reduce_ms_loopback"] > 0 and report["expected_speedup_two_machines_lan"] > 0


def test_stream_task_compares_streamed_and_held_runs_at_two_sizes(tmp_path, capsys, monkeypatch):
    source = tmp_path / "photos"
    formats.class_tree(source / "Training", {"Kiwi": 24, "Lemon": 24}, size=20)
    formats.class_tree(source / "Test", {"Kiwi": 8, "Lemon": 8}, start=100, size=20)
    run = ["--arch", "conv(8) relu maxpool(2) gap", "--epochs", "2", "--batch-size", "8"]
    monkeypatch.setattr(stream, "RUN", [*run, "--no-report", "--verbose", "0"])
    monkeypatch.setattr(stream, "BATCH", 8)
    assert bench.main(["stream", "--data", str(formats.tar_folder(source, tmp_path / "photos.tgz"))]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["task"] == "stream" and report["images"] == {"base": 64, "x4": 256}
    assert report["decoded_mb_added"] == pytest.approx(3 * 64 * 20 * 20 * 3 / 2**20, abs=0.05)
    runs = report["runs"]
    # the same images, batches and seed: the streamed runs train what the held ones do
    for size in ("base", "x4"):
        assert runs[f"stream_{size}"]["test_accuracy"] == runs[f"held_{size}"]["test_accuracy"]
        assert all(runs[f"{mode}_{size}"]["train_peak_mb"] > 0 for mode in ("held", "stream"))
    assert report["throughput_ratio_held_over_stream"] == pytest.approx(
        runs["held_base"]["img_per_s"] / runs["stream_base"]["img_per_s"], rel=0.01
    )
    assert report["meets_throughput_goal"] == (report["throughput_ratio_held_over_stream"] <= 1.3)
