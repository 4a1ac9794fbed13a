"""--stream: images decoded once into rows on disk and read batch by batch.

Oracles: the in-memory path on the same files (rows, labels, order, splits, skipped
files, statistics and training batches equal), and plain numpy indexing of the same
array for :class:`Rows`.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from fruitcnn.config import AugmentConfig, DataConfig, RunConfig
from fruitcnn.data import load_dataset
from fruitcnn.data.problems import DatasetError
from fruitcnn.data.rows import Rows, RowWriter, concatenate
from fruitcnn.training.models import batches, channel_statistics, head_specs
from tests.fruitcnn.data import formats


def _mixed_tree(root):
    """Class folders with what the reader must handle alike in both paths: an image of
    another size, a greyscale one among colour ones, a corrupt file."""
    formats.class_tree(root, {"apple": 14, "pear": 11, "plum": 9})
    formats.write_png(root / "apple" / "larger.png", formats.pattern(900, 12))
    formats.write_png(root / "pear" / "grey.png", formats.pattern(901, 8, 1))
    (root / "plum" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def _reversed_tar(folder, archive):
    """A .tar.gz whose members come in the reverse of the listing's order."""
    with tarfile.open(archive, "w:gz") as handle:
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_file():
                data = path.read_bytes()
                info = tarfile.TarInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}")
                info.size = len(data)
                handle.addfile(info, io.BytesIO(data))
    return archive


def _assert_same(streamed, held):
    assert streamed.class_names == held.class_names
    assert streamed.info["split"] == held.info["split"]
    assert streamed.info["skipped"] == held.info["skipped"]
    assert streamed.image_shape == held.image_shape
    for name, split in streamed.splits.items():
        assert isinstance(split.images, Rows)
        np.testing.assert_array_equal(np.asarray(split.images), held.splits[name].images)
        np.testing.assert_array_equal(split.labels, held.splits[name].labels)


@pytest.mark.parametrize("container", ["folder", "tar.gz in reverse order"])
@pytest.mark.parametrize("image_size", [None, 10])
def test_streamed_splits_equal_the_in_memory_ones(tmp_path, container, image_size):
    source = _mixed_tree(tmp_path / "fruit")
    if container != "folder":
        source = _reversed_tar(source, tmp_path / "fruit.tgz")
    settings = {"dataset": str(source), "image_size": image_size, "split": "50/20/30"}
    held = load_dataset(DataConfig(**settings))
    streamed = load_dataset(DataConfig(**settings, stream=True))
    _assert_same(streamed, held)
    assert held.info["skipped"][0]["file"].endswith("plum/broken.png")
    assert streamed.info["notes"][0].endswith("streamed from disk (--stream)")
    assert not streamed.info["from_cache"]
    again = load_dataset(DataConfig(**settings, stream=True))  # the rows, not the files
    assert again.info["from_cache"]
    _assert_same(again, held)


def test_own_split_and_array_formats_stream_alike(tmp_path):
    """Training/Test folders (validation carved from training) and MNIST IDX files
    (read as arrays, then written as rows), also pooled by an explicit --split."""
    formats.class_tree(tmp_path / "split" / "Training", {"a": 8, "b": 8})
    formats.class_tree(tmp_path / "split" / "Test", {"a": 3, "b": 4}, start=50)
    formats.write_mnist(tmp_path / "mnist", train=30, test=10)
    for settings in (
        {"dataset": str(tmp_path / "split")},
        {"dataset": str(tmp_path / "mnist")},
        {"dataset": str(tmp_path / "mnist"), "split": "60/20/20"},
    ):
        _assert_same(load_dataset(DataConfig(**settings, stream=True)), load_dataset(DataConfig(**settings)))


def test_rows_index_like_the_array(tmp_path):
    """Every kind of index a split's images get, against numpy on the same array,
    over a view that spans two files."""
    array = np.random.default_rng(0).integers(0, 256, (23, 3, 4, 2), dtype=np.uint8)
    with RowWriter(tmp_path / "entry") as writer:
        writer.add("first", array[:10])
        writer.add("second", array[10:])
        rows = concatenate([writer.rows("first", (3, 4, 2)), writer.rows("second", (3, 4, 2))])
        assert rows.shape == array.shape and len(rows) == 23 and rows.nbytes == array.nbytes
        keys = [
            0,
            -1,
            np.int64(12),
            slice(None),
            slice(3, 17, 2),
            slice(None, None, -1),
            np.array([5, 2, 2, 19, 9, 10]),  # unsorted, repeated, across the files' border
            np.arange(23) % 3 == 0,
            np.array([], np.int64),
            (slice(2, 5), 1),
            (4, slice(None), 0),
        ]
        for key in keys:
            np.testing.assert_array_equal(rows[key], array[key], err_msg=repr(key))
        np.testing.assert_array_equal(np.asarray(rows), array)
        np.testing.assert_array_equal(np.concatenate(list(rows.chunks(5))), array)
        view = rows.subset(np.array([20, 3, 11, 7])).subset(slice(1, None))
        np.testing.assert_array_equal(np.asarray(view), array[[3, 11, 7]])
        with pytest.raises(IndexError):
            rows[23]


def test_streamed_batches_and_statistics_equal_the_held_ones(tmp_path):
    """Training batches (shuffled, augmented, and a worker's parts) and the channel
    statistics read from rows equal those of the same images held in memory."""
    source = formats.class_tree(tmp_path / "shapes", {"a": 40, "b": 40, "c": 40}, size=12)
    del source
    settings = {"dataset": str(tmp_path / "shapes")}
    held, streamed = load_dataset(DataConfig(**settings)), load_dataset(DataConfig(**settings, stream=True))
    assert channel_statistics(streamed.train.images) == channel_statistics(held.train.images)
    specs = head_specs(RunConfig(data=DataConfig(**settings)), held)
    augment = AugmentConfig(flip="horizontal", translate=2)
    for options in (
        {"shuffle_seed": 4, "first_epoch": 1, "end_epoch": 3, "augment": augment},
        {"shuffle_seed": 4, "end_epoch": 1, "part": (1, 1, 3)},
        {},
    ):
        ours = list(batches(streamed.train, specs, 16, **options)[0])
        theirs = list(batches(held.train, specs, 16, **options)[0])
        assert len(ours) == len(theirs) > 0
        for (images, targets), (expected, expected_targets) in zip(ours, theirs):
            np.testing.assert_array_equal(images.numpy(), expected.numpy())
            for name in targets:
                np.testing.assert_array_equal(targets[name], expected_targets[name])


def test_damaged_rows_are_decoded_again(tmp_path, monkeypatch):
    formats.class_tree(tmp_path / "shapes", {"a": 6, "b": 6})
    settings = {"dataset": str(tmp_path / "shapes"), "stream": True}
    first = load_dataset(DataConfig(**settings))
    (path, _), *_ = first.train.images.files
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 1)
    second = load_dataset(DataConfig(**settings))
    assert not second.info["from_cache"]
    _assert_same(second, first)


def test_stream_is_refused_where_it_cannot_work(tmp_path, monkeypatch):
    formats.class_tree(tmp_path / "shapes", {"a": 6, "b": 6})
    with pytest.raises(ValueError, match="generated in memory"):
        DataConfig(dataset="line", stream=True)
    with pytest.raises(ValueError, match="tensorflow-datasets"):
        DataConfig(dataset="tfds:mnist", stream=True)
    with pytest.raises(ValueError, match="--cue"):
        DataConfig(dataset=str(tmp_path / "shapes"), stream=True, cue="patch")
    monkeypatch.setenv("FRUITCNN_CACHE", "off")
    with pytest.raises(DatasetError, match="(?s)caching is off.*--cache-dir DIR"):
        load_dataset(DataConfig(dataset=str(tmp_path / "shapes"), stream=True))


def test_a_failed_read_leaves_no_rows_behind(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FRUITCNN_CACHE", str(cache))
    formats.class_tree(tmp_path / "shapes", {"a": 6})
    (tmp_path / "shapes" / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty class folder"):
        load_dataset(DataConfig(dataset=str(tmp_path / "shapes"), stream=True))
    assert not list((cache / "decoded").iterdir())


def test_a_header_beyond_the_first_bytes_is_read_whole(tmp_path):
    """The first pass reads a folder's files only up to their header; the one colour
    image of a greyscale set, whose header lies behind a 30 KB comment, is found by
    reading it whole, so the set is RGB as in memory."""
    formats.class_tree(tmp_path / "grey", {"a": 5, "b": 5})  # colour PNGs, made greyscale below
    for path in (tmp_path / "grey").rglob("*.png"):
        Image.open(path).convert("L").save(path)
    colour = io.BytesIO()
    Image.fromarray(formats.pattern(7)).save(colour, "JPEG", comment=b"x" * 30000)
    (tmp_path / "grey" / "a" / "late-header.jpg").write_bytes(colour.getvalue())
    settings = {"dataset": str(tmp_path / "grey"), "split": "50/50"}
    held = load_dataset(DataConfig(**settings))
    assert held.image_shape == (8, 8, 3)
    _assert_same(load_dataset(DataConfig(**settings, stream=True)), held)
