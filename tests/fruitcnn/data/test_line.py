"""The line dataset: labels checked against the pixels and masks they describe."""

import numpy as np
import pytest

from fruitcnn.data import line


@pytest.fixture(scope="module")
def data():
    return line.generate_line_dataset(12, seed=5)


def test_shapes_types_and_class_order(data):
    assert data.images.shape == (96 * 12, 28, 28, 3) and data.images.dtype == np.uint8
    assert data.masks.shape == (96 * 12, 28, 28) and data.masks.dtype == bool
    np.testing.assert_array_equal(data.labels, np.repeat(np.arange(96), 12))
    assert len(set(data.class_names)) == 96
    assert data.class_names[0] == "len7_w1_ang000_red"
    assert data.class_names[95] == "len15_w3_ang165_blue"


def test_class_ids_and_attributes_are_inverse(data):
    ids = line.class_id(*data.attributes.T)
    np.testing.assert_array_equal(ids, data.labels)
    for label in (0, 17, 50, 95):
        length, width, angle, colour = line.class_attributes(label)
        name = data.class_names[label]
        parts = (line.LENGTHS[length], line.WIDTHS[width], line.ANGLES[angle], line.COLOURS[colour])
        assert name == "len{}_w{}_ang{:03d}_{}".format(*parts)


def test_mask_is_exactly_the_drawn_pixels(data):
    drawn = data.images.max(axis=-1) > 0
    np.testing.assert_array_equal(drawn, data.masks)


def test_colour_label_matches_pixels(data):
    for image, mask, attributes in zip(data.images, data.masks, data.attributes):
        rgb = line.COLOUR_RGB[line.COLOURS[attributes[3]]]
        assert (image[mask] == rgb).all()


def test_axis_aligned_lines_cover_length_times_width_pixels(data):
    counts = data.masks.reshape(len(data.masks), -1).sum(axis=1)
    for index, (length, width, angle, _) in enumerate(data.attributes):
        if line.ANGLES[angle] in (0, 90):
            assert counts[index] == line.LENGTHS[length] * line.WIDTHS[width]
            rows, cols = np.nonzero(data.masks[index])
            along = cols if line.ANGLES[angle] == 0 else rows
            across = rows if line.ANGLES[angle] == 0 else cols
            assert np.ptp(along) + 1 == line.LENGTHS[length]
            assert np.ptp(across) + 1 == line.WIDTHS[width]


def _principal_angle(mask):
    rows, cols = np.nonzero(mask)
    x, y = cols - cols.mean(), -(rows - rows.mean())  # y up, as the angle convention
    covariance = np.cov(np.stack([x, y]))
    values, vectors = np.linalg.eigh(covariance)
    vx, vy = vectors[:, np.argmax(values)]
    return np.degrees(np.arctan2(vy, vx)) % 180.0


def test_angle_label_matches_the_drawn_direction(data):
    long_lines = np.flatnonzero(data.attributes[:, 0] == 1)  # 15 px: direction well defined
    for index in long_lines:
        expected = line.ANGLES[data.attributes[index, 2]]
        got = _principal_angle(data.masks[index])
        difference = min(abs(got - expected), 180 - abs(got - expected))
        assert difference < 4.0, (index, expected, got)


def test_length_label_matches_the_extent_along_the_line(data):
    for index, (length, width, angle, _) in enumerate(data.attributes):
        rows, cols = np.nonzero(data.masks[index])
        radians = np.radians(line.ANGLES[angle])
        along = cols * np.cos(radians) - rows * np.sin(radians)
        spread = np.ptp(along)
        # Pixel centres inside a half-open rectangle of this length spread over less
        # than the length; a 1-pixel band at 45 degrees can miss up to ~2.6 pixels of
        # it at the ends, a 3-pixel band about one pixel diagonal.
        shortfall = 3.0 if line.WIDTHS[width] == 1 else 2.0
        assert line.LENGTHS[length] - shortfall <= spread < line.LENGTHS[length]


def test_width_label_separates_pixel_counts(data):
    counts = data.masks.reshape(len(data.masks), -1).sum(axis=1)
    for length in (0, 1):
        thin = counts[(data.attributes[:, 0] == length) & (data.attributes[:, 1] == 0)]
        thick = counts[(data.attributes[:, 0] == length) & (data.attributes[:, 1] == 1)]
        assert thin.max() < thick.min()


def test_lines_stay_inside_and_positions_vary(data):
    assert data.masks.any(axis=(1, 2)).all()
    first_class = data.masks[data.labels == 0]
    centres = {tuple(np.argwhere(mask).mean(axis=0).round(1)) for mask in first_class}
    assert len(centres) > 6


def test_seeded_and_deterministic():
    a = line.generate_line_dataset(3, seed=1)
    b = line.generate_line_dataset(3, seed=1)
    c = line.generate_line_dataset(3, seed=2)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_other_image_sizes():
    big = line.generate_line_dataset(2, image_size=40, seed=0)
    assert big.images.shape[1:] == (40, 40, 3)
    assert (big.masks.reshape(len(big.masks), -1).sum(axis=1) > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images_per_class": 0}, "positive integer"),
        ({"image_size": 10}, "too small"),
        ({"images_per_class": 2.5}, "positive integer"),
    ],
)
def test_bad_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        line.generate_line_dataset(**kwargs)


def test_png_folders(tmp_path):
    from PIL import Image

    data = line.generate_line_dataset(2, seed=0)
    written = line.write_png_folders(data, tmp_path)
    assert written == 192
    folders = sorted(path.name for path in tmp_path.iterdir())
    assert folders == sorted(data.class_names)
    first = sorted((tmp_path / data.class_names[0]).iterdir())[0]
    np.testing.assert_array_equal(np.asarray(Image.open(first)), data.images[0])


def test_backgrounds_keep_the_lines_and_their_masks():
    black = line.generate_line_dataset(2, seed=3)
    assert (black.images[~black.masks] == 0).all()
    smoothness = {}
    for background in ("noise", "texture"):
        data = line.generate_line_dataset(2, seed=3, background=background)
        np.testing.assert_array_equal(data.masks, black.masks)  # the same lines on every background
        np.testing.assert_array_equal(data.images[data.masks], black.images[black.masks])
        rest = data.images[~data.masks]
        assert rest.max() <= line.BACKGROUND_LEVEL and rest.max() >= line.BACKGROUND_LEVEL - 10
        assert rest.min() <= 10
        again = line.generate_line_dataset(2, seed=3, background=background)
        np.testing.assert_array_equal(again.images, data.images)
        other = line.generate_line_dataset(2, seed=4, background=background)
        assert not np.array_equal(other.images, data.images)
        pixels = data.images.astype(np.float32)
        smoothness[background] = np.abs(np.diff(pixels, axis=2)).mean()
    # texture: neighbouring pixels close (a quarter of a grid cell apart), noise: independent
    assert smoothness["texture"] < smoothness["noise"] / 3


def test_an_unknown_background_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="black, noise, texture"):
        line.generate_line_dataset(2, background="grass")


def test_the_background_flag_is_for_the_line_dataset_only():
    from fruitcnn.config import DataConfig
    from fruitcnn.data import line_dataset

    with pytest.raises(ValueError, match="--dataset line"):
        DataConfig(dataset="some/folder", background="noise")
    with pytest.raises(ValueError, match="black, noise, texture"):
        DataConfig(background="plaid")
    dataset = line_dataset(DataConfig(images_per_class=2, background="texture"))
    assert dataset.info["background"] == "texture"
    assert dataset.train.images[~dataset.train.masks].max() > 0
