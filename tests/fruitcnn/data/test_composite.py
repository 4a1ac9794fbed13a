"""Object masks, objects pasted on photos, planted cues (fruitcnn.data.composite), and
--object-masks / --paste-on / --cue through load_dataset."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fruitcnn.config import DataConfig
from fruitcnn.data import composite, describe, load_dataset
from fruitcnn.data.problems import DatasetError
from tests.fruitcnn.data import formats


def _jpeg_round_trip(image: np.ndarray, quality: int = 85) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _objects(count: int = 6, size: int = 40, seed: int = 0):
    """Discs (with a white highlight inside: a hole to fill) on white, JPEG-compressed
    as Fruits-360 is, and their true masks."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(count):
        centre = rng.uniform(size * 0.35, size * 0.65, 2)
        radius = rng.uniform(size * 0.2, size * 0.3)
        disc = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2
        image = np.full((size, size, 3), 255, np.uint8)
        image[disc] = rng.integers(20, 200, 3)
        highlight = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= (radius / 3) ** 2
        image[highlight] = 250
        images.append(_jpeg_round_trip(image))
        masks.append(disc)
    return np.stack(images), np.stack(masks)


def test_object_masks_find_objects_on_white_and_fill_their_holes():
    images, truth = _objects()
    found = composite.object_masks(images)
    assert found.shape == truth.shape and found.dtype == bool
    # JPEG blurs the edge by a pixel or so; the highlight inside is filled
    disagree = (found != truth).sum(axis=(1, 2)) / truth.sum(axis=(1, 2))
    assert disagree.max() < 0.12
    centre = truth.shape[1] // 2
    assert found[:, centre - 1 : centre + 2, centre - 1 : centre + 2].all()


def test_fill_holes_and_specks():
    mask = np.zeros((1, 9, 9), bool)
    mask[0, 2:7, 2:7] = True
    mask[0, 4, 4] = False  # a hole
    mask[0, 0, 8] = True  # a speck
    filled = composite.fill_holes(mask)
    assert filled[0, 4, 4] and filled[0, 0, 8]
    opened = composite._open(filled)
    # the speck goes; the square stays but for its four corners (an opening with a cross)
    assert not opened[0, 0, 8] and opened[0, 2:7, 2:7].sum() == 25 - 4 and opened.sum() == 21


def test_object_masks_refuse_photos_without_a_plain_background():
    photos = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="plain border"):
        composite.object_masks(photos)
    assert composite.plain_border_problem(_objects()[0]) is None


def test_pasted_objects_keep_exact_masks_and_the_background_elsewhere():
    images, masks = _objects(5, size=30)
    backgrounds = np.random.default_rng(2).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    pasted, pasted_masks = composite.paste_objects(images, masks, backgrounds, np.random.default_rng(3))
    assert pasted.shape == backgrounds.shape and pasted_masks.shape == (5, 48, 48)
    np.testing.assert_array_equal(pasted[~pasted_masks], backgrounds[~pasted_masks])
    for index in range(5):
        rows, columns = np.flatnonzero(pasted_masks[index].any(1)), np.flatnonzero(pasted_masks[index].any(0))
        longer = max(rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1)
        low, high = composite.PASTE_SCALE
        assert low * 48 - 2 <= longer <= high * 48 + 2
        # the object's colour (the disc's, away from its edge and highlight) is pasted
        inside = pasted[index][pasted_masks[index]]
        assert np.abs(inside.astype(int) - backgrounds[index][pasted_masks[index]]).mean() > 5
    again = composite.paste_objects(images, masks, backgrounds, np.random.default_rng(3))
    np.testing.assert_array_equal(again[0], pasted)  # seeded
    with pytest.raises(ValueError, match="empty"):
        composite.paste_objects(images, np.zeros_like(masks), backgrounds, np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["patch", "border", "hue"])
def test_cues_paint_each_class_colour_where_they_lie_and_nowhere_else(kind):
    images = np.random.default_rng(4).integers(0, 200, (6, 50, 50, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 0])
    masks = np.zeros((6, 50, 50), bool)
    masks[:, 15:35, 15:35] = True
    cued, where = composite.plant_cue(images, labels, kind, 5, masks)
    np.testing.assert_array_equal(cued[~where], images[~where])
    colours = composite.cue_colours(5)
    if kind == "patch":
        side = round(composite.PATCH_SHARE * 50)
        assert where[:, :side, :side].all() and where.sum() == 6 * side * side
        np.testing.assert_array_equal(cued[:, 0, 0], colours[labels])
    elif kind == "border":
        width = round(composite.BORDER_SHARE * 50)
        assert where[:, :width].all() and not where[:, width:-width, width:-width].any()
        np.testing.assert_array_equal(cued[:, -1, 25], colours[labels])
    else:
        np.testing.assert_array_equal(where, ~masks)
        expected = np.round(
            images[:, 0, 0] * (1 - composite.HUE_STRENGTH) + colours[labels] * composite.HUE_STRENGTH
        )
        np.testing.assert_allclose(cued[:, 0, 0], expected, atol=1)  # float32 rounding
    assert len({tuple(colour) for colour in colours}) == 5  # one colour per class
    with pytest.raises(ValueError, match="masks"):
        composite.plant_cue(images, labels, "hue", 5)


def test_object_masks_paste_on_and_cue_through_load_dataset(tmp_path):
    objects = formats.object_tree(tmp_path / "objects")
    photos = formats.photo_tree(tmp_path / "photos")
    plain = load_dataset(DataConfig(dataset=str(objects), object_masks=True))
    assert plain.test.masks is not None and 0.2 < plain.test.masks.mean() < 0.4
    pasted = load_dataset(DataConfig(dataset=str(objects), paste_on=str(photos), cue="border"))
    assert pasted.image_shape == (24, 24, 3)
    for part in pasted.splits.values():
        assert part.masks.shape == part.images.shape[:3] and part.masks.any(axis=(1, 2)).all()
        assert part.masks.mean(axis=(1, 2)).max() <= composite.PASTE_SCALE[1] ** 2  # within its box
    width = max(1, round(composite.BORDER_SHARE * 24))
    colours = composite.cue_colours(3)
    for name in ("train", "val"):  # cued: the frame has each image's class colour
        part = pasted.splits[name]
        np.testing.assert_array_equal(part.images[:, 0, 0], colours[part.labels])
    test = pasted.test
    assert test.cued is not None and test.cue_masks[:, :width].all()
    np.testing.assert_array_equal(test.cued[:, 0, 0], colours[test.labels])
    assert not np.array_equal(test.images[:, 0, 0], colours[test.labels])  # the test images stay clean
    np.testing.assert_array_equal(test.images[~test.cue_masks], test.cued[~test.cue_masks])
    # each split on photos of its own, and the same data again for the same seed
    again = load_dataset(DataConfig(dataset=str(objects), paste_on=str(photos), cue="border"))
    np.testing.assert_array_equal(again.train.images, pasted.train.images)
    assert any("pasted on 20 photos" in line for line in describe(pasted))
    chosen = test.take(np.array([1, 0]))
    np.testing.assert_array_equal(chosen.cued[0], test.cued[1])


def test_paste_on_photos_are_split_between_the_splits(tmp_path):
    objects = formats.object_tree(tmp_path / "objects", per_class=10)
    photos = tmp_path / "photos" / "any"
    photos.mkdir(parents=True)
    # every photo a different flat grey: which split used which photo can be read off
    for index in range(30):
        formats.write_png(photos / f"{index}.png", np.full((8, 8, 3), 5 + 8 * index, np.uint8))
    data = load_dataset(DataConfig(dataset=str(objects), paste_on=str(tmp_path / "photos")))
    used = {
        name: {int(image[~mask][0, 0]) for image, mask in zip(part.images, part.masks)}
        for name, part in data.splits.items()
    }
    assert (
        not used["train"] & used["test"]
        and not used["train"] & used["val"]
        and not used["val"] & used["test"]
    )


def test_bad_ground_truth_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="exact"):
        DataConfig(dataset="line", object_masks=True)
    with pytest.raises(ValueError, match="--object-masks"):
        DataConfig(dataset="photos", cue="hue")
    DataConfig(dataset="line", cue="hue")  # the line dataset has masks
    photos = formats.photo_tree(tmp_path / "photos", count=12)
    (photos / "any").rename(photos / "first")
    formats.photo_tree(photos / "second", count=12).joinpath("any").rename(photos / "second2")
    (photos / "second").rmdir()
    with pytest.raises(DatasetError, match="plain"):
        load_dataset(DataConfig(dataset=str(photos), object_masks=True))
    objects = formats.object_tree(tmp_path / "objects")
    with pytest.raises(DatasetError, match="--paste-on .*nowhere: no such file"):
        load_dataset(DataConfig(dataset=str(objects), paste_on=str(tmp_path / "nowhere")))


def test_a_cue_on_the_line_dataset_keeps_its_masks():
    data = load_dataset(DataConfig(images_per_class=3, seed=1, cue="hue"))
    assert data.test.cued is not None and data.test.masks is not None
    np.testing.assert_array_equal(data.test.cue_masks, ~data.test.masks)


def test_cue_substitutes_plant_each_other_class_cue_in_turn():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 10, 10, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3, 3])
    found = list(composite.cue_substitutes(images, labels, "patch", 4))
    assert len(found) == 3  # every other class once
    for offset, substitute in zip((1, 2, 3), found, strict=True):
        expected, _ = composite.plant_cue(images, (labels + offset) % 4, "patch", 4)
        np.testing.assert_array_equal(substitute, expected)
        own, _ = composite.plant_cue(images, labels, "patch", 4)
        # each image shows a colour other than its own class's, in the same place
        assert all((substitute[index] != own[index]).any() for index in range(5))
        np.testing.assert_array_equal(substitute[:, 3:], images[:, 3:])
    offsets = composite.substitute_offsets(200)
    assert len(offsets) == composite.MAX_SUBSTITUTES and offsets[0] == 1 and offsets[-1] == 199
    assert list(composite.substitute_offsets(2)) == [1]
    with pytest.raises(ValueError, match="another class's cue needs at least two classes, got 1"):
        composite.substitute_offsets(1)
