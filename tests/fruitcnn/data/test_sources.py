"""Readers of real dataset formats, on small files written in those formats."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from fruitcnn.config import DataConfig
from fruitcnn.data import describe, load_dataset, warning_lines
from fruitcnn.data.images import decode, read_image_file
from fruitcnn.data.problems import DatasetError
from fruitcnn.data.sources import load_cifar_pickle, parse_idx
from tests.fruitcnn.data import formats


def load(path, **settings):
    return load_dataset(DataConfig(dataset=str(path), **settings))


def as_set(images):
    return {image.tobytes() for image in images}


# ------------------------------------------------------------------ image folders


def test_class_folders_are_read_exactly_and_split(tmp_path):
    written = formats.class_tree(tmp_path / "shapes", {"big circle": 10, "square": 10, "tri angle": 10})
    data = load(tmp_path / "shapes")
    assert data.class_names == ("big circle", "square", "tri angle")  # folder names with spaces
    assert data.info["format"] == "image-folders" and data.info["split"].startswith("60/40")
    assert (len(data.train), len(data.val), len(data.test)) == (16, 2, 12)
    # every image is decoded exactly (PNG is lossless) and keeps its class
    for split in data.splits.values():
        for image, label in zip(split.images, split.labels):
            assert any(np.array_equal(image, array) for array in written[data.class_names[label]])
    everything = np.concatenate([s.images for s in data.splits.values()])
    assert as_set(everything) == as_set([a for arrays in written.values() for a in arrays])


def test_mixed_modes_are_converted_consistently(tmp_path):
    root = tmp_path / "modes"
    rgb = formats.pattern(1)
    Image.fromarray(rgb).save(formats_dir(root / "a") / "rgb.png")
    Image.fromarray(rgb[:, :, 0]).save(root / "a" / "grey.png")
    rgba = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    rgba[0, 0, 3] = 0  # one transparent pixel: composited over white
    Image.fromarray(rgba).save(formats_dir(root / "b") / "rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "b" / "palette.png")
    data = load(root, split="50/50", val_fraction=0.5)
    assert data.image_shape == (8, 8, 3)
    images = {tuple(img.reshape(-1)[:6]): img for s in data.splits.values() for img in s.images}
    assert len(images) == 4
    grey = decode((root / "a" / "grey.png").read_bytes(), channels=3)
    assert np.array_equal(grey[:, :, 0], rgb[:, :, 0]) and np.array_equal(grey[:, :, 2], rgb[:, :, 0])
    composited = decode((root / "b" / "rgba.png").read_bytes())
    assert composited[0, 0].tolist() == [255, 255, 255] and np.array_equal(composited[1:], rgb[1:])
    # explain.py reads a file exactly as training did
    assert np.array_equal(read_image_file(root / "b" / "rgba.png"), composited)


def formats_dir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_all_greyscale_stays_one_channel_and_image_size_resizes(tmp_path):
    root = tmp_path / "digits"
    for label in ("0", "1"):
        for number in range(3):
            formats.write_png(root / label / f"{number}.png", formats.pattern(number, 12, 1))
    data = load(root, split="4/2", val_fraction=0.25)
    assert data.image_shape == (12, 12, 1)
    resized = load(root, split="4/2", val_fraction=0.25, image_size=6)
    assert resized.image_shape == (6, 6, 1)
    expected = np.asarray(Image.fromarray(formats.pattern(0, 12, 1)[:, :, 0]).resize((6, 6), Image.BILINEAR))
    assert any(
        np.array_equal(image[:, :, 0], expected) for s in resized.splits.values() for image in s.images
    )


def test_mixed_sizes_resize_to_the_most_common(tmp_path):
    root = tmp_path / "sizes"
    formats.class_tree(root, {"a": 3, "b": 3}, size=10)
    formats.write_png(root / "a" / "odd.png", formats.pattern(99, 20))
    data = load(root, split="5/2", val_fraction=0.2)
    assert data.image_shape == (10, 10, 3)
    assert any("1 images of other sizes were resized to 10x10" in note for note in data.info["notes"])


@pytest.mark.parametrize("kind", ["tgz", "tar.gz", "tar", "zip", "folder"])
def test_fruits_360_layout_from_folder_and_archives(tmp_path, kind):
    top = tmp_path / "src" / "fruits-360"
    train = formats.class_tree(top / "Training", {"Apple Braeburn": 6, "Banana": 6})
    test = formats.class_tree(top / "Test", {"Apple Braeburn": 2, "Banana": 3}, start=100)
    (top / "LICENSE").write_text("MIT")
    if kind == "folder":
        path = top
    elif kind == "zip":
        path = formats.zip_folder(top, tmp_path / "fruits.zip")
    else:
        mode = "w" if kind == "tar" else "w:gz"
        path = formats.tar_folder(top, tmp_path / f"assignment1.{kind}", mode)
    data = load(path)
    assert data.info["format"] == "split-folders"
    assert data.class_names == ("Apple Braeburn", "Banana")
    # the own test split is used unchanged; validation comes from Training only
    assert as_set(data.test.images) == as_set(test["Apple Braeburn"] + test["Banana"])
    assert as_set(np.concatenate([data.train.images, data.val.images])) == as_set(
        train["Apple Braeburn"] + train["Banana"]
    )
    assert len(data.val) == 1 and data.info["split"] == "own train/test, val = 0.1 of train"


def test_train_val_test_folders_use_their_own_validation(tmp_path):
    for part, count in (("train", 5), ("val", 2), ("test", 3)):
        formats.class_tree(tmp_path / "d" / part, {"cat": count, "dog": count}, start=10 * len(part) + count)
    data = load(tmp_path / "d")
    assert (len(data.train), len(data.val), len(data.test)) == (10, 4, 6)
    assert data.info["split"] == "own train/val/test"


def test_train_and_val_folders_as_imagenet_ships_them_report_on_val(tmp_path):
    train = formats.class_tree(tmp_path / "imagenette" / "train", {"n01": 10, "n02": 10})
    val = formats.class_tree(tmp_path / "imagenette" / "val", {"n01": 3, "n02": 4}, start=100)
    data = load(tmp_path / "imagenette")
    # val/ is where such sets are reported: it is the test split, unchanged ...
    assert as_set(data.test.images) == as_set(val["n01"] + val["n02"])
    # ... and the model is chosen on a part of train/, never on val/
    assert as_set(np.concatenate([data.train.images, data.val.images])) == as_set(train["n01"] + train["n02"])
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 7)
    assert data.info["split"] == "own train/val: val/ is the test split (as such sets are reported), " + (
        "validation = 0.1 of train/"
    )
    pooled = load(tmp_path / "imagenette", split="60/40")  # pooling only when asked for
    assert "pooled" in pooled.info["split"] and len(pooled.test) == round(0.4 * 27)


def test_explicit_split_pools_the_own_parts(tmp_path):
    formats.class_tree(tmp_path / "d" / "Training", {"a": 8, "b": 8})
    formats.class_tree(tmp_path / "d" / "Test", {"a": 2, "b": 2}, start=50)
    data = load(tmp_path / "d", split="10/5/5")
    assert (len(data.train), len(data.val), len(data.test)) == (10, 5, 5)
    assert "pooled" in data.info["split"]


def test_links_inside_an_archive_are_followed(tmp_path):
    source = tmp_path / "src"
    formats.class_tree(source / "data", {"a": 3, "b": 3})
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as handle:
        handle.add(source / "data", arcname="data")
        link = tarfile.TarInfo("data/b/copy.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../a/000.png"
        handle.addfile(link)
    data = load(archive, split="5/2", val_fraction=0.2)
    assert sum(len(s) for s in data.splits.values()) == 7


# ------------------------------------------------------------------ unsafe and broken archives


def test_unsafe_archive_entries_are_all_refused(tmp_path):
    archive = tmp_path / "evil.tgz"
    payload = formats.jpeg_bytes(formats.pattern(0))
    with tarfile.open(archive, "w:gz") as handle:
        for name in ("ok/a/1.jpg", "ok/b/1.jpg", "../escape.jpg", "/etc/owned.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            handle.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("ok/a/passwd.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        handle.addfile(link)
    with pytest.raises(DatasetError) as caught:
        load(archive)
    message = str(caught.value)
    assert "unsafe archive entry (3)" in message
    for name in ("../escape.jpg", "/etc/owned.jpg", "ok/a/passwd.jpg"):
        assert name in message
    assert not (tmp_path.parent / "escape.jpg").exists()


def test_unsafe_zip_entry_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("a/1.png", b"x")
        handle.writestr("../../x.png", b"x")
    with pytest.raises(DatasetError, match=r"(?s)unsafe archive entry.*\.\./\.\./x\.png"):
        load(archive)


@pytest.mark.parametrize("name", ["broken.tgz", "broken.zip"])
def test_unreadable_archive_says_so(tmp_path, name):
    good = formats.tar_folder(formats_dir(tmp_path / "d"), tmp_path / "good.tgz")
    path = tmp_path / name
    path.write_bytes(good.read_bytes()[:20] if name.endswith(".tgz") else b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError, match="(?s)unreadable archive.*download it again"):
        load(path)


def test_unknown_name_and_plain_file(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'no-such-thing'.*tfds:NAME"):
        load("no-such-thing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not an archive"):
        load(tmp_path / "notes.txt")


# ------------------------------------------------------------------ bad input, reported together


def test_all_problems_of_one_scan_are_reported_together(tmp_path):
    root = tmp_path / "bad"
    formats.class_tree(root / "Training", {"apple": 4, "pear": 4})
    formats.class_tree(root / "Test", {"apple": 2, "pear": 2, "plum": 2}, start=40)  # plum: not trained
    (root / "Training" / "empty").mkdir()
    (root / "Training" / "apple" / "notes.txt").write_text("not an image")
    good = (root / "Training" / "pear" / "000.png").read_bytes()
    (root / "Training" / "pear" / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DatasetError) as caught:
        load(root)
    message = str(caught.value)
    assert "empty class folder (1)" in message and "Training/empty/" in message
    assert "class missing from the training split (1)" in message and "plum" in message
    assert "fix:" in message and "nothing was trained" in message


def test_skipped_files_are_listed_and_strict_refuses_them(tmp_path):
    root = tmp_path / "data"
    formats.class_tree(root, {"a": 5, "b": 5})
    (root / "a" / "readme.txt").write_text("x")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    good = formats.jpeg_bytes(formats.pattern(7))
    (root / "b" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / ".DS_Store").write_bytes(b"\0")
    data = load(root, split="6/4", val_fraction=0.2)
    skipped = {item["file"]: item["reason"] for item in data.info["skipped"]}
    assert skipped == {
        "a/readme.txt": "not an image file",
        "b/broken.jpg": "corrupt or unreadable image",
        "b/truncated.jpg": "corrupt or unreadable image",
    }
    assert data.info["ignored"] == [".DS_Store"]
    assert sum(len(s) for s in data.splits.values()) == 10
    assert "skipped 3 file(s)" in data.info["messages"][0]
    with pytest.raises(DatasetError) as caught:
        load(root, split="6/4", val_fraction=0.2, strict=True)
    assert all(name in str(caught.value) for name in skipped) and "--strict" in str(caught.value)


def test_single_class_is_an_error(tmp_path):
    formats.class_tree(tmp_path / "one", {"only": 5})
    with pytest.raises(DatasetError, match="fewer than two classes"):
        load(tmp_path / "one")


def test_images_without_class_folders(tmp_path):
    for number in range(3):
        formats.write_png(tmp_path / "flat" / f"{number}.png", formats.pattern(number))
    with pytest.raises(DatasetError, match="(?s)no class folders.*3 images"):
        load(tmp_path / "flat")


# ------------------------------------------------------------------ MNIST IDX


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    arrays = formats.write_mnist(tmp_path / "mnist", gz=gz)
    data = load(tmp_path / "mnist")
    assert data.info["format"] == "mnist" and data.image_shape == (28, 28, 1)
    assert data.class_names == tuple(str(i) for i in range(10))
    assert np.array_equal(data.test.images[:, :, :, 0], arrays["t10k"][0])
    assert np.array_equal(data.test.labels, arrays["t10k"][1])
    assert len(data.train) + len(data.val) == 30


def test_mnist_damaged_files(tmp_path):
    formats.write_mnist(tmp_path / "m", gz=False)
    labels = tmp_path / "m" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(formats.idx_bytes(np.zeros(7, np.uint8)))  # 7 labels for 10 images
    images = tmp_path / "m" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(DatasetError) as caught:
        load(tmp_path / "m")
    message = str(caught.value)
    assert "malformed IDX file" in message and "truncated" in message
    assert "MNIST files do not match" in message and "(10, 28, 28) vs labels (7,)" in message


def test_parse_idx_rejects_other_files():
    with pytest.raises(DatasetError, match="not an IDX file"):
        parse_idx(b"\x89PNG....", "x")


# ------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize("archived", [False, True])
def test_cifar10_python_batches(tmp_path, archived):
    folder = tmp_path / "cifar-10-batches-py"
    arrays = formats.write_cifar10(folder)
    path = formats.tar_folder(folder, tmp_path / "cifar-10-python.tar.gz") if archived else folder
    data = load(path)
    assert data.info["format"] == "cifar10" and data.class_names[:2] == ("name0", "name1")
    # the red, green and blue planes of each row become an (H, W, 3) image
    assert np.array_equal(data.test.images, arrays["test"][0])
    assert np.array_equal(data.test.labels, arrays["test"][1])
    assert as_set(np.concatenate([data.train.images, data.val.images])) == as_set(arrays["train"][0])


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "owned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    content = pickle.dumps({b"data": Exploit(), b"labels": [0]}, protocol=2)
    with pytest.raises(DatasetError, match="unsafe or damaged pickle.*refused to load posix.system"):
        load_cifar_pickle(content, "data_batch_1")
    assert not marker.exists()
    folder = tmp_path / "cifar"
    formats.write_cifar10(folder)
    (folder / "data_batch_3").write_bytes(content)
    with pytest.raises(DatasetError, match="(?s)unreadable CIFAR batch.*data_batch_3"):
        load(folder)
    assert not marker.exists()


def test_cifar10_missing_batch(tmp_path):
    folder = tmp_path / "c"
    formats.write_cifar10(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="(?s)CIFAR-10 batch missing.*data_batch_4"):
        load(folder)


# ------------------------------------------------------------------ STL-10


def test_stl10_binary_column_major_and_one_based_labels(tmp_path):
    arrays = formats.write_stl10(tmp_path / "stl10_binary")
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").write_bytes(b"")
    data = load(tmp_path / "stl10_binary", val_fraction=0.25)
    assert data.info["format"] == "stl10" and data.image_shape == (96, 96, 3)
    assert data.class_names[0] == "airplane"
    assert np.array_equal(data.test.images, arrays["test"][0])
    assert np.array_equal(data.test.labels, arrays["test"][1].astype(int) - 1)
    assert data.info["skipped"][0]["reason"].startswith("unlabelled images")


def test_stl10_damaged(tmp_path):
    formats.write_stl10(tmp_path / "s")
    x = tmp_path / "s" / "train_X.bin"
    x.write_bytes(x.read_bytes()[:-10])
    (tmp_path / "s" / "test_y.bin").write_bytes(bytes([0, 11, 3]))
    with pytest.raises(DatasetError) as caught:
        load(tmp_path / "s")
    assert "truncated STL-10 file" in str(caught.value) and "labels run 0..11, expected 1..10" in str(
        caught.value
    )


# ------------------------------------------------------------------ mini-ImageNet


def write_mini_imagenet(root, tables):
    for part, rows in tables.items():
        lines = ["filename,label"]
        for index, label in rows:
            name = f"{label}{index:08d}.jpg"
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "images" / name).write_bytes(formats.jpeg_bytes(formats.pattern(index, 12)))
            lines.append(f"{name},{label}")
        (root / f"{part}.csv").write_text("\n".join(lines) + "\n")


def test_mini_imagenet_csv_layout(tmp_path):
    root = tmp_path / "mini"
    write_mini_imagenet(
        root,
        {
            "train": [(i, "n01") for i in range(5)] + [(i, "n02") for i in range(5, 10)],
            "val": [(10, "n01"), (11, "n02")],
            "test": [(12, "n01"), (13, "n02"), (14, "n02")],
        },
    )
    with open(root / "test.csv", "a") as handle:
        handle.write("n0200000099.jpg,n02\n")  # listed, but no such file
    data = load(root)
    assert data.info["format"] == "mini-imagenet" and data.class_names == ("n01", "n02")
    assert (len(data.train), len(data.val), len(data.test)) == (10, 2, 3)
    assert data.info["skipped"] == [
        {"file": "images/n0200000099.jpg", "reason": "listed in csv but missing", "detail": "test.csv line 5"}
    ]


def test_mini_imagenet_few_shot_split_needs_pooling(tmp_path):
    root = tmp_path / "mini"
    write_mini_imagenet(
        root,
        {
            "train": [(i, "n01") for i in range(4)] + [(i, "n02") for i in range(4, 8)],
            "val": [(i, "n03") for i in range(8, 12)],
            "test": [(i, "n04") for i in range(12, 16)],
        },
    )
    with pytest.raises(DatasetError) as caught:
        load(root)
    assert "class missing from the training split (2)" in str(caught.value) and "--split" in str(caught.value)
    pooled = load(root, split="50/25/25")
    assert len(pooled.class_names) == 4 and set(pooled.test.labels.tolist()) == {0, 1, 2, 3}


# ------------------------------------------------------------------ tensorflow-datasets


def test_tfds_unknown_name():
    with pytest.raises(DatasetError, match="no tensorflow-datasets dataset of that name"):
        load("tfds:surely_not_a_dataset")


def test_tfds_offline_fails_fast_with_local_alternatives(tmp_path, monkeypatch):
    from fruitcnn.data import tfds_source

    monkeypatch.setattr(tfds_source, "_PROBE_HOST", ("unreachable.invalid", 443))
    started = time.monotonic()
    with pytest.raises(DatasetError) as caught:
        load("tfds:mnist", data_dir=str(tmp_path / "tfds"))
    assert time.monotonic() - started < 20
    message = str(caught.value)
    assert "not prepared" in message and "offline" in message and "MNIST IDX" in message


def test_tfds_prepared_dataset_is_converted(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from fruitcnn.data import tfds_source

    monkeypatch.setattr(tfds_source, "online", lambda timeout=0: True)
    with tfds.testing.mock_data(num_examples=12):
        data = load("tfds:mnist", data_dir="")
    assert data.image_shape == (28, 28, 1) and data.class_names == tuple(str(i) for i in range(10))
    # the mock serves every split name asked for: train, validation and test
    assert (len(data.train), len(data.val), len(data.test)) == (12, 12, 12)
    assert data.train.images.dtype == np.uint8


# ------------------------------------------------------------------ cache


def test_second_load_comes_from_the_cache_and_changes_invalidate_it(tmp_path):
    root = tmp_path / "d"
    formats.class_tree(root, {"a": 5, "b": 5})
    (root / "a" / "x.txt").write_text("x")
    first = load(root, val_fraction=0.2)
    second = load(root, val_fraction=0.2)
    assert not first.info["from_cache"] and second.info["from_cache"]
    for name in ("train", "val", "test"):
        assert np.array_equal(first.splits[name].images, second.splits[name].images)
    assert second.info["skipped"] == first.info["skipped"]  # still reported from the cache
    with pytest.raises(DatasetError, match="a/x.txt"):
        load(root, val_fraction=0.2, strict=True)
    formats.write_png(root / "b" / "new.png", formats.pattern(77))
    third = load(root, val_fraction=0.2)
    assert not third.info["from_cache"] and sum(len(s) for s in third.splits.values()) == 11


def test_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUITCNN_CACHE", "off")
    formats.class_tree(tmp_path / "d", {"a": 3, "b": 3})
    assert not load(tmp_path / "d", split="4/2", val_fraction=0.25).info["from_cache"]
    assert not load(tmp_path / "d", split="4/2", val_fraction=0.25).info["from_cache"]


def test_gzip_members_of_mnist_are_checked(tmp_path):
    formats.write_mnist(tmp_path / "m")
    path = tmp_path / "m" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(1000))[:300])
    with pytest.raises(DatasetError, match="corrupt gzip file"):
        load(tmp_path / "m")


def test_a_set_too_large_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    from fruitcnn.data import sources

    formats.class_tree(tmp_path / "d", {"a": 4, "b": 4}, size=16)
    monkeypatch.setattr(sources, "_available_memory", lambda: 4000)  # bytes
    with pytest.raises(DatasetError, match=r"(?s)8 images of 16x16x3 need .* --image-size 9 or smaller"):
        load(tmp_path / "d")


# ------------------------------------------------------------------ unpack limits, links, bombs


@pytest.fixture
def small_floor(monkeypatch):
    """Ratios are judged from 1 MiB on (64 MiB in use), so the bombs here stay small."""
    from fruitcnn.data import trees

    monkeypatch.setattr(trees, "RATIO_FLOOR", 1 << 20)


def _zip_with(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as handle:
        for name, content in members.items():
            handle.writestr(name, content)
    return path


def test_a_zip_bomb_is_refused_from_its_headers_before_anything_is_read(tmp_path, small_floor, monkeypatch):
    formats.class_tree(tmp_path / "data", {"a": 3, "b": 3})
    members = {f"data/{p.relative_to(tmp_path / 'data').as_posix()}": p.read_bytes() for p in
               (tmp_path / "data").rglob("*.png")}  # fmt: skip
    members["data/a/zeros.png"] = bytes(8 << 20)  # 8 MiB of zeros: about 8 KiB packed
    members["data/b/more.png"] = bytes(4 << 20)
    archive = _zip_with(tmp_path / "bomb.zip", members)
    from fruitcnn.data import trees

    read = []
    original = trees.ZipTree._read
    monkeypatch.setattr(
        trees.ZipTree, "_read", lambda self, names: read.append(names) or original(self, names)
    )
    with pytest.raises(DatasetError) as error:
        load(archive)
    message = str(error.value)
    assert "beyond the unpack limits (2)" in message  # one pass names both
    assert "data/a/zeros.png: unpacks to 8.0 MiB from" in message and "data/b/more.png" in message
    assert "--unpack-limits ratio=" in message and not read
    data = load(archive, unpack_limits="ratio=100000", split="50/50", val_fraction=0.5)  # trusted: raised
    assert data.info["skipped"][0]["reason"] == "corrupt or unreadable image"


def test_per_file_and_total_limits_name_the_files(tmp_path):
    formats.class_tree(tmp_path / "data", {"a": 3, "b": 3}, size=32)
    with pytest.raises(DatasetError, match=r"unpacks to .* more than the per-file limit 1.0 KiB"):
        load(tmp_path / "data", unpack_limits="member=1K")
    with pytest.raises(
        DatasetError, match=r"the files read unpack to .* in all, more than the limit 4.0 KiB"
    ):
        load(tmp_path / "data", unpack_limits="total=4KiB")


def test_a_tar_gz_whose_headers_claim_too_much_is_refused_while_listing(tmp_path, small_floor):
    archive = tmp_path / "bomb.tgz"
    with tarfile.open(archive, "w:gz") as handle:
        for index in range(3):
            info = tarfile.TarInfo(f"data/c{index}/zeros.png")
            info.size = 4 << 20
            handle.addfile(info, io.BytesIO(bytes(info.size)))
    claimed = r"bomb at entry 'data/c\d/zeros.png': its entries claim .* MiB of data from a .* KiB archive"
    with pytest.raises(DatasetError, match=claimed):
        load(archive)


def test_a_tar_gz_that_unpacks_far_more_than_it_read_is_refused_while_streaming(tmp_path, small_floor):
    archive = tmp_path / "mixed.tgz"
    noise = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    with tarfile.open(archive, "w:gz") as handle:
        for name, content in (("data/a/zeros.png", bytes(6 << 20)), ("data/b/noise.png", noise)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            handle.addfile(info, io.BytesIO(content))
    # 9 MiB claimed from a 3 MiB archive passes ratio 10, but the first 6 MiB came from a few KiB
    with pytest.raises(
        DatasetError, match=r"bomb at entry 'data/b/noise.png': 6.0 MiB unpacked from the first"
    ):
        load(archive, unpack_limits="ratio=10")


def test_a_gzipped_idx_bomb_is_refused_while_it_is_unpacked(tmp_path, small_floor):
    folder = tmp_path / "mnist"
    formats.write_mnist(folder, train=20, test=10)
    bomb = folder / "t10k-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(bytes(16 << 20)))
    with pytest.raises(
        DatasetError, match=r"t10k-images-idx3-ubyte.gz: refused as a possible decompression bomb"
    ):
        load(folder)


def test_an_image_that_declares_too_many_pixels_is_refused_unread():
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", 10000, 10000) + bytes(data[24:29])  # IHDR: width, height, then the rest
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    with pytest.raises(ValueError, match="10000 x 10000 pixels, more than the 89,478,485 decoded"):
        decode(bytes(data))


def test_linked_class_folders_are_followed_and_loops_listed(tmp_path):
    formats.class_tree(tmp_path / "elsewhere", {"b": 4})
    formats.class_tree(tmp_path / "data", {"a": 4})
    (tmp_path / "data" / "b").symlink_to(tmp_path / "elsewhere" / "b", target_is_directory=True)
    (tmp_path / "data" / "a" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)
    data = load(tmp_path / "data", split="50/50", val_fraction=0.5)
    assert data.class_names == ("a", "b")
    assert sum(len(split) for split in data.splits.values()) == 8
    (skipped,) = data.info["skipped"]
    assert skipped["reason"] == "folder reached twice through links"
    assert skipped["file"] == "a/loop/" and "the same folder as the dataset's own folder" in skipped["detail"]


def test_an_error_lists_the_files_that_would_be_skipped_too(tmp_path):
    formats.class_tree(tmp_path / "data", {"a": 4, "b": 4})
    (tmp_path / "data" / "empty").mkdir()
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "data" / "b" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as error:
        load(tmp_path / "data")
    message = str(error.value)
    assert "empty class folder (1)" in message and "besides, 2 file(s) would be skipped" in message
    assert "a/broken.png" in message and "b/notes.txt" in message


def test_an_unusable_cache_dir_is_an_error_and_a_failing_cache_a_warning(tmp_path, monkeypatch, capsys):
    from fruitcnn.data import cache

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--cache-dir .*file/sub is not usable .*or --cache-dir off"):
        cache.use_cache_dir(str(tmp_path / "file" / "sub"))
    monkeypatch.setenv("FRUITCNN_CACHE", str(tmp_path / "file"))  # a file: nothing can be stored
    formats.class_tree(tmp_path / "data", {"a": 2, "b": 2})
    load(tmp_path / "data", split="50/50", val_fraction=0.5)
    assert "warning: the decoded images were not cached" in capsys.readouterr().err


def test_cs671_split_takes_60_40_of_the_training_data_only(tmp_path):
    arrays = formats.write_mnist(tmp_path / "mnist", train=50, test=20)
    data = load(tmp_path / "mnist", split="train:60/40", val_fraction=0.1)
    assert (len(data.train) + len(data.val), len(data.test)) == (30, 20)  # 60/40 of the 50 training images
    training = as_set(arrays["train"][0][..., None])
    for split in data.splits.values():  # nothing from t10k
        assert as_set(split.images) <= training
    assert "of the own training part only (50 images; its test part unused)" in data.info["split"]
    line = load_dataset(DataConfig(images_per_class=5, split="train:60/40"))  # no own split: all of it
    assert len(line.test) == round(0.4 * 480)
    with pytest.raises(ValueError, match="optionally of the training part only"):
        DataConfig(dataset="x", split="train:60-40")


def test_stl10_with_the_ece4179_split_pools_both_parts(tmp_path):
    # as the handout uses it: 5,000 + 8,000 labelled images pooled, 8000/2000/3000 by class
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    for part, count in (("train", 5000), ("test", 8000)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        # each image filled with its own number (mod 251) and its label in the first pixel
        images = np.zeros((count, 3, 96, 96), np.uint8)
        images[:, :, 0, 0] = labels[:, None]
        images[:, :, 1, 1] = (np.arange(count) % 251)[:, None] + (part == "test")
        (folder / f"{part}_X.bin").write_bytes(images.tobytes())
        (folder / f"{part}_y.bin").write_bytes((labels + 1).tobytes())
    data = load(folder, split="8000/2000/3000", seed=4)
    assert (len(data.train), len(data.val), len(data.test)) == (8000, 2000, 3000)
    for split in (data.train, data.val, data.test):
        assert np.array_equal(split.images[:, 0, 0, 0], split.labels)  # every image keeps its label
        assert np.bincount(split.labels, minlength=10).tolist() == [len(split) // 10] * 10  # stratified
    assert "8000/2000/3000" in data.info["split"]


def test_describe_says_what_was_read(tmp_path):
    for name in ("apple", "pear"):
        (tmp_path / name).mkdir()
        for index in range(5):
            Image.new("RGB", (6, 4), (index * 40, 0, 0)).save(tmp_path / name / f"{index}.png")
    (tmp_path / "apple" / "broken.png").write_bytes(b"not a png")
    dataset = load_dataset(DataConfig(dataset=str(tmp_path), split="60/40"))
    first, *notes = describe(dataset)
    assert first.startswith(f"data: {tmp_path} (")
    assert ": 2 classes, 4x6x3; train 5 / val 1 / test 4 (60/40 stratified); read in " in first
    assert all(note.startswith("  ") for note in notes)
    problems = warning_lines(dataset)
    assert any("broken.png" in line for line in problems)  # the skipped file
    assert any("validation split holds 1 image(s) for 2 classes" in line for line in problems)
