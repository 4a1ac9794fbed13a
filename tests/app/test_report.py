"""The report: its numbers against an independent evaluation, its files, its escaping,
and how it renders in headless Chromium."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fruitcnn
from app.report.build import ReportOptions, RunRecord, build_report
from fruitcnn import browser, runs
from fruitcnn.config import ArchConfig, DataConfig, RunConfig, TrainConfig, parse_layers
from fruitcnn.data import Dataset, Split, load_dataset
from fruitcnn.training import train
from visualize.methods import REPORTED_MAPS

FAST = TrainConfig(epochs=2, batch_size=32, learning_rate=0.01, warmup_epochs=0.0)
QUIET = {"progress": lambda line: None}
# the explanation-quality section is made on request (report.py --quality-images N)
MEASURED = ReportOptions(quality_images=32)
# CI installs Chromium and sets this, so the rendering test cannot skip there.
REQUIRE_BROWSER = os.environ.get("FRUITCNN_REQUIRE_CHROMIUM") == "1"


def _config(head="single", arch=None):
    return RunConfig(
        data=DataConfig(images_per_class=24, seed=3),
        train=FAST,
        head=head,
        **({"arch": arch} if arch else {}),
    )


@pytest.fixture(scope="module")
def single_report(tmp_path_factory, small_line):
    run = train(
        _config(), dataset=small_line, run_dir=tmp_path_factory.mktemp("report") / "single", verbose=0
    )
    return run, build_report(run.run_dir, dataset=small_line, model=run.model, options=MEASURED, **QUIET)


@pytest.fixture(scope="module")
def multi_report(tmp_path_factory, small_line):
    run = train(
        _config("multi"), dataset=small_line, run_dir=tmp_path_factory.mktemp("report") / "multi", verbose=0
    )
    return run, build_report(run.run_dir, dataset=small_line, options=MEASURED, **QUIET)


def test_report_numbers_match_an_independent_evaluation(single_report, small_line):
    run, report = single_report
    model = fruitcnn.load_model(run.run_dir)
    for split in ("train", "val", "test"):
        data = small_line.splits[split]
        predicted = model.predict(data.images.astype("float32"), verbose=0)["class"].argmax(axis=1)
        confusion = np.zeros((96, 96), int)
        np.add.at(confusion, (data.labels, predicted), 1)
        scores = pd.read_csv(report.folder / f"scores-{split}.csv").iloc[:96]
        np.testing.assert_array_equal(scores["support"].astype(int), confusion.sum(axis=1))
        np.testing.assert_array_equal(scores["predicted"].astype(int), confusion.sum(axis=0))
        np.testing.assert_array_equal(scores["correct"].astype(int), np.diag(confusion))
        np.testing.assert_array_equal(report.splits[split].heads["class"].confusion, confusion)
    summary = json.loads((report.folder / "summary.json").read_text())
    # the report's test accuracy is the one training recorded for model.keras
    assert summary["test"]["accuracy"] == pytest.approx(run.metrics["test_accuracy"], abs=1e-6)
    assert summary["val"]["accuracy"] == pytest.approx(run.metrics["val_accuracy"], abs=1e-6)
    averages = pd.read_csv(report.folder / "scores-test.csv").set_index("class").loc["micro average"]
    assert averages["f1"] == pytest.approx(summary["test"]["accuracy"], abs=1e-6)
    assert "differs from the one training recorded" not in report.html.read_text()


def test_report_files_markdown_and_html_carry_the_same_figures(single_report):
    run, report = single_report
    folder = run.run_dir / "report"
    markdown = report.markdown.read_text()
    linked = re.findall(r"\]\(report/([^)]+)\)", markdown)
    assert linked and all((folder / name).is_file() for name in linked)
    figures = sorted(name for name in linked if name.endswith(".png"))
    assert {"curves.png", "curves-time.png", "confusion-test.png", "confusion-train-normalised.png"} <= set(
        figures
    )
    # 96 classes at 12 per figure: 8 grids of the validation split
    assert sorted(path.name for path in folder.glob("grid-*.png")) == [
        f"grid-val-{n:02d}.png" for n in range(1, 9)
    ]
    page = report.html.read_text()
    assert "<title>fruitcnn report: single</title>" in page and "<h1>fruitcnn report: single</h1>" in page
    assert markdown.startswith("# fruitcnn report: single\n")
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == len(figures) and all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # self-contained: nothing fetched
    for heading in ("Summary", "Learning curves", "Confusion matrices", "Precision, recall and F1 per class",
                    "Architecture", "Environment and timestamps", "Data and hyperparameters"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in page and f"## {heading}" in markdown
    assert "Python" in page or "python" in page
    for layer in ("conv1", "bn1", "class_logits"):
        assert f">{layer}<" in page
    environment = json.loads((run.run_dir / runs.ENVIRONMENT_FILE).read_text())["sessions"]
    assert len(environment) == 1 and environment[0]["keras"] in page and environment[0]["tensorflow"] in page
    assert not list(run.run_dir.glob(".report*")), "temporary report folder left behind"


def test_multi_head_report_has_per_head_tables_and_failing_combinations(multi_report, small_line):
    run, report = multi_report
    test = report.splits["test"]
    assert list(test.heads) == ["length", "width", "colour", "angle"]
    assert test.accuracy == pytest.approx(run.metrics["test_accuracy"], abs=1e-6)
    for head in test.heads:
        assert test.heads[head].accuracy == pytest.approx(run.metrics[f"test_{head}_accuracy"], abs=1e-6)
        assert (report.folder / f"confusion-test-{head}.png").is_file()
        assert (report.folder / f"scores-val-{head}.csv").is_file()
    failures = pd.read_csv(report.folder / "failures-test.csv")
    wrong = int((~test.all_right).sum())
    assert failures["images"].sum() == wrong
    # the combination table agrees with the heads' own mistakes
    angle_wrong = int((~test.heads["angle"].correct).sum())
    with_angle = failures[failures["failing heads"].str.contains("angle")]["images"].sum()
    assert with_angle == angle_wrong
    page = report.html.read_text()
    assert "Heads and their failures" in page and "head &#x27;angle&#x27;" in page


def _strange_dataset(count=114):
    """A 114-class dataset (Fruits-360 scale) with class names that need escaping."""
    rng = np.random.default_rng(5)
    names = [f"Fruit {index:03d} Golden Delicious" for index in range(count)]
    names[0] = '<img src=x onerror="alert(1)"> & Co'
    names[1] = "Tom | Jerry *bold* [link](x)"
    names[2] = "x $\\frac$ costs $5"  # matplotlib would read $...$ as math
    colours = rng.integers(0, 256, (count, 3))

    def split(per_class, seed):
        labels = np.repeat(np.arange(count), per_class).astype(np.int32)
        noise = np.random.default_rng(seed).integers(-20, 20, (labels.size, 8, 8, 3))
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        return Split(images, labels)

    return Dataset("strange", split(3, 1), split(2, 2), split(2, 3), tuple(names))


def test_report_of_114_classes_escapes_names_and_renders_in_chromium(tmp_path):
    if browser.find_chromium() is None:
        if REQUIRE_BROWSER:
            pytest.fail("FRUITCNN_REQUIRE_CHROMIUM=1 but no Chromium found")
        pytest.skip("no Chromium or Chrome on this machine (apt-get install chromium) to render the report")
    dataset = _strange_dataset()
    arch = ArchConfig(layers=parse_layers("conv(8,3) relu gap"))
    config = RunConfig(data=DataConfig(dataset="strange"), arch=arch, train=FAST)
    run = train(config, dataset=dataset, run_dir=tmp_path / "strange", verbose=0)
    report = build_report(
        run.run_dir,
        dataset=dataset,
        model=run.model,
        options=ReportOptions(top_k=3, quality_images=32),
        **QUIET,
    )
    page = report.html.read_text()
    assert '<img src=x onerror="alert(1)">' not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; Co" in page
    markdown = report.markdown.read_text()
    assert "<img src=x" not in markdown and r"Tom \| Jerry \*bold\* \[link\](x)" in markdown
    for width in (1280, 800):
        check = browser.render_check(report.html, width=width)
        # curves, matrices, grids, deletion/insertion curves
        assert check["images"] == 2 + 6 + 10 + 1 and check["sections"] == 9
        assert check["title"] == "fruitcnn report: strange"
        assert browser.problems(check) == [], check
    shot = browser.screenshot(report.html, tmp_path / "shot.png", width=1280, height=1200)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert pixels.shape == (1200, 1280, 3)
    assert pixels.std() > 20  # a rendered page, not a blank one
    assert np.abs(pixels[5] - [0x17, 0x32, 0x4D]).max() <= 3  # the header bar (#17324d) is on top


def test_render_check_finds_broken_images_and_overflow(tmp_path):
    if browser.find_chromium() is None:
        if REQUIRE_BROWSER:
            pytest.fail("FRUITCNN_REQUIRE_CHROMIUM=1 but no Chromium found")
        pytest.skip("no Chromium or Chrome on this machine (apt-get install chromium)")
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><img alt="gone" src="data:image/png;base64,AAAA">'
        '<div style="width: 3000px">wide</div></body></html>'
    )
    found = browser.problems(browser.render_check(page, width=1000))
    assert any("did not render" in problem and "gone" in problem for problem in found)
    assert any("3008 px wide in a 1000 px window" in problem for problem in found)


def test_report_refuses_other_data_and_non_runs(single_report, small_line, tmp_path):
    run, _ = single_report
    with pytest.raises(ValueError, match="is not a folder"):
        RunRecord.read(tmp_path / "nothing")
    with pytest.raises(ValueError, match="has no model.keras"):
        RunRecord.read(tmp_path)
    other = Dataset("line", small_line.test, small_line.val, small_line.train, small_line.class_names)
    with pytest.raises(ValueError, match="the data changed since training"):
        build_report(run.run_dir, dataset=other, model=run.model, **QUIET)
    renamed = Dataset(
        "line", small_line.train, small_line.val, small_line.test, tuple(reversed(small_line.class_names))
    )
    with pytest.raises(ValueError, match="other classes for head 'class'"):
        build_report(run.run_dir, dataset=renamed, model=run.model, **QUIET)
    with pytest.raises(ValueError, match="grid split must be one of"):
        ReportOptions(grid_split="holdout")
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        ReportOptions(top_k=0)


def test_tensorboard_gets_a_validation_confusion_matrix_per_epoch(single_report):
    import tensorflow as tf

    run, _ = single_report
    images = {}
    for path in Path(run.run_dir / "tb" / "validation").glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == "confusion/class":
                    images[event.step] = value.tensor.string_val
    assert sorted(images) == [0, 1]
    width, height, png = images[1][0], images[1][1], images[1][2]
    picture = tf.io.decode_png(png).numpy()
    assert picture.shape[:2] == (int(height), int(width)) and picture.shape[0] > 300


def _small_dataset(count=6, seed=9):
    """Six classes of 8x8 colour patches: quick to train and to report on."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (count, 3))

    def split(per_class, offset):
        labels = np.repeat(np.arange(count), per_class).astype(np.int32)
        noise = np.random.default_rng(seed + offset).integers(-40, 40, (labels.size, 8, 8, 3))
        return Split(np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8), labels)

    return Dataset(
        "small", split(20, 1), split(6, 2), split(6, 3), tuple(f"colour {i}" for i in range(count))
    )


@pytest.mark.parametrize(
    "arch_changes, train_changes",
    [({}, {"tta": "flip"}), ({"bn_batch_stats_at_inference": True}, {}), ({}, {"test_each_epoch": False})],
    ids=["tta-flip", "bn-batch-statistics", "test-only-at-the-end"],
)
def test_report_evaluates_as_training_did(tmp_path, arch_changes, train_changes):
    dataset = _small_dataset()
    arch = ArchConfig(layers=parse_layers("conv(8,3) bn relu gap"), **arch_changes)
    train_config = TrainConfig(**{**FAST.__dict__, "batch_size": 16, **train_changes})
    config = RunConfig(data=DataConfig(dataset="small"), arch=arch, train=train_config)
    run = train(config, dataset=dataset, run_dir=tmp_path / "run", verbose=0)
    report = build_report(run.run_dir, dataset=dataset, options=MEASURED, **QUIET)
    for split in ("val", "test"):
        assert report.splits[split].accuracy == pytest.approx(run.metrics[f"{split}_accuracy"], abs=1e-6)
    page = report.html.read_text()
    assert "differs from the one training recorded" not in page
    if arch_changes:  # an image's prediction depends on its batch: no per-image explanation to measure
        assert "Not measured: this model&#x27;s batch norm (bn1) uses the statistics" in page
    if not config.train.test_each_epoch:  # no test curve: the history's test columns are empty
        assert all(row["test_accuracy"] == "" for row in runs.read_csv(run.run_dir / "history.csv"))
        assert "<h2>Learning curves</h2>" in page


def test_report_of_a_resumed_run_and_of_a_run_without_environment(tmp_path):
    import keras

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    dataset = _small_dataset()
    arch = ArchConfig(layers=parse_layers("conv(8,3) relu gap"))
    train_config = TrainConfig(**{**FAST.__dict__, "batch_size": 16})
    config = RunConfig(data=DataConfig(dataset="small"), arch=arch, train=train_config)
    with pytest.raises(KeyboardInterrupt):
        train(config, dataset=dataset, run_dir=tmp_path / "run", verbose=0, callbacks=[StopAfterFirstEpoch()])
    train(config, dataset=dataset, run_dir=tmp_path / "run", resume=True, verbose=0)
    sessions = json.loads((tmp_path / "run" / runs.ENVIRONMENT_FILE).read_text())["sessions"]
    assert [session["kind"] for session in sessions] == ["start", "resume"]
    report = build_report(tmp_path / "run", dataset=dataset, options=ReportOptions(quality_images=0), **QUIET)
    page = report.html.read_text()
    assert sessions[0]["time"] in page and ">resume<" in page and ">report<" in page
    # a run from before environment.json: the start is taken from history.csv
    (tmp_path / "run" / runs.ENVIRONMENT_FILE).unlink()
    page = build_report(tmp_path / "run", dataset=dataset, options=ReportOptions(quality_images=0), **QUIET)
    page = page.html.read_text()
    assert "(from history.csv)" in page


def test_grid_table_names_the_images_of_the_grids(single_report, small_line):
    run, report = single_report
    table = pd.read_csv(report.folder / "grid-val.csv")
    result = report.splits["val"].heads["class"]
    labels, names = small_line.val.labels, small_line.class_names
    assert set(table["kind"]) <= {"correct", "mistake"} and len(table) > 0
    for row in table.itertuples():
        assert names[labels[row.image]] == row.true  # the image really is of that class
        assert result.class_names[result.predictions[row.image]] == row.predicted
        assert (row.true == row.predicted) == (row.kind == "correct")
        assert row.probability == pytest.approx(result.confidence[row.image], abs=1e-6)
    assert table.groupby(["true", "kind"])["rank"].max().max() <= 5


def test_explanation_quality_section_measures_the_run_model(single_report, small_line):
    from visualize import quality

    run, report = single_report
    page, markdown = report.html.read_text(), report.markdown.read_text()
    assert "<h2>Explanation quality</h2>" in page and "## Explanation quality" in markdown
    assert re.search(r"Measured in \d+ s\. 32 test images", page)  # the section says what it cost
    table = pd.read_csv(report.folder / "quality.csv")
    # the default methods and those added since (Integrated Gradients, RISE, Grad-CAM++, LayerCAM)
    assert table["method"].tolist() == list(REPORTED_MAPS)
    assert (report.folder / "quality-curves.png").stat().st_size > 1000
    # the same numbers from visualize.quality directly, on the same seeded choice of test images
    chosen = np.sort(np.random.default_rng(0).choice(len(small_line.test), size=32, replace=False))
    again = quality.quality_scores(
        run.model,
        small_line.test.images[chosen],
        target=small_line.test.labels[chosen],
        masks=small_line.test.masks[chosen],
        methods=REPORTED_MAPS,
    ).summary()
    for column in ("pointing", "mask_mass", "deletion_auc", "insertion_auc", "randomization_spearman"):
        np.testing.assert_allclose(table[column], again[column].to_numpy(), atol=1e-5)
        # each mean with its 95% bootstrap interval and the number of images behind it
        assert (table[f"{column}_low"] <= table[column] + 1e-6).all()
        assert (table[column] <= table[f"{column}_high"] + 1e-6).all()
    assert (table["images"] == 32).all()
    assert "95% bootstrap intervals of the means above" in page
    failing = table["checks failed"].fillna("")
    for text, value in zip(failing, table["randomization_spearman"]):
        assert ("randomization_spearman" in text) == (value >= 0.3)
    assert all(
        ("pointing" in text)
        == (
            row["method"] in ("occlusion_prob", "occlusion_loss", "saliency", "gradcam")
            and row["pointing"] < 0.95
        )
        for text, (_, row) in zip(failing, table.iterrows())
    )


def test_the_report_says_what_the_decisions_rest_on(single_report, small_line):
    from visualize import quality

    run, report = single_report
    page = report.html.read_text()
    assert "What the decisions rest on" in page
    regions = pd.read_csv(report.folder / "regions.csv").set_index("measured by")
    assert list(regions.index[:2]) == ["area", "removal"] and set(REPORTED_MAPS) <= set(regions.index)
    assert regions.loc["area", ["object", "rest"]].sum() == pytest.approx(1.0)
    chosen = np.sort(np.random.default_rng(0).choice(len(small_line.test), size=32, replace=False))
    again = quality.region_check(
        run.model,
        small_line.test.images[chosen],
        small_line.test.masks[chosen],
        target=small_line.test.labels[chosen],
        methods=["occlusion_prob", "saliency"],
    ).summary()
    for row in ("removal", "occlusion_prob", "saliency"):
        np.testing.assert_allclose(
            regions.loc[row, ["object", "rest"]], again.loc[row, ["object", "rest"]], atol=1e-6
        )


def test_with_a_planted_cue_the_cued_test_images_are_checked(single_report):
    from app.report.build import measure_explanations

    run, _ = single_report
    cued = load_dataset(DataConfig(images_per_class=24, seed=3, cue="patch"))
    record = RunRecord.read(run.run_dir)
    found = measure_explanations(record, run.model, cued, 12)["regions"]["class"]
    assert found.cue and set(found.accuracy) == {"images", "clean", "other_cue"} and found.substituted
    # the model never saw the patch: removing it, or putting another class's patch in its
    # place (the other 95 classes' colours), costs (almost) nothing; it is never relied on
    assert not found.removal["relies_on_cue"].any()
    assert found.removal["drop_cue"].max() < 0.2 and found.removal["drop_other_cue"].abs().max() < 0.2
    assert "No reliance on the planted cue" in found.verdict()[0]


def test_multi_head_report_measures_every_head_and_quality_can_be_left_out(
    multi_report, tmp_path, small_line
):
    run, report = multi_report
    for head in ("length", "width", "colour", "angle"):
        assert len(pd.read_csv(report.folder / f"quality-{head}.csv")) == len(REPORTED_MAPS)
    again = build_report(run.run_dir, dataset=small_line, **QUIET)  # the default: not measured
    assert "Explanation quality" not in again.html.read_text()
    assert not list(again.folder.glob("quality*"))
    with pytest.raises(ValueError, match="quality_images must be 0"):
        ReportOptions(quality_images=-1)
