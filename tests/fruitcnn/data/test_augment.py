"""Augmentation: exact geometry against numpy oracles, per-image randomness, seeding."""

import numpy as np
import pytest
import tensorflow as tf

from fruitcnn.config import AugmentConfig
from fruitcnn.data.augment import augment_batch


def batch(count=16, size=9, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size, size, channels)).astype(np.float32)


def run(images, seed=(1, 2), **settings):
    return augment_batch(tf.constant(images), AugmentConfig(**settings), tf.constant(seed, tf.int64)).numpy()


def test_inactive_config_returns_the_images():
    images = batch()
    assert np.array_equal(run(images), images)


def test_flip_mirrors_about_half_the_images_exactly():
    images = batch(count=64)
    out = run(images, flip="horizontal")
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    same = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(m or s for m, s in zip(mirrored, same))
    assert 16 < sum(mirrored) < 48
    vertical = run(images, flip="vertical")
    assert all(np.array_equal(o, i[::-1]) or np.array_equal(o, i) for o, i in zip(vertical, images))


def reflect_crop(image, dx, dy, pad):
    """Oracle: pad by reflection (d c b a | a b c d | d c b a) and crop at the shift."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    height, width = image.shape[:2]
    return padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def test_translate_is_an_exact_random_crop_of_the_reflected_image_per_image():
    images = batch(count=32)
    out = run(images, translate=3)
    shifts = []
    for o, image in zip(out, images):
        matches = [
            (dx, dy)
            for dx in range(-3, 4)
            for dy in range(-3, 4)
            if np.array_equal(o, reflect_crop(image, dx, dy, 3))
        ]
        assert matches, "every output is one crop of the padded image"
        shifts.append(matches[0])
    assert len(set(shifts)) > 8  # a different offset per image, not one per batch


def test_same_seed_same_result_other_seed_other_result():
    images = batch()
    settings = {"flip": "both", "translate": 2, "rotate": 10.0, "color_jitter": 0.2}
    first, again = run(images, **settings), run(images, **settings)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, run(images, seed=(1, 3), **settings))


def test_rotation_keeps_the_centre_and_range():
    images = np.zeros((8, 9, 9, 1), np.float32)
    images[:, 4, 4] = 200.0
    out = run(images, rotate=20.0)
    assert np.allclose(out[:, 4, 4, 0], 200.0, atol=1e-3)
    assert out.min() >= 0 and out.max() <= 255


def test_color_jitter_scales_within_bounds():
    images = np.full((64, 4, 4, 3), 100.0, np.float32)
    out = run(images, color_jitter=0.2)
    factors = out[:, 0, 0, 0] / 100.0
    assert factors.min() >= 0.8 - 1e-4 and factors.max() <= 1.2 + 1e-4
    assert factors.std() > 0.05  # drawn per image
    greys = run(batch(channels=1), color_jitter=0.5)
    assert greys.shape == (16, 9, 9, 1) and greys.min() >= 0 and greys.max() <= 255


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"flip": "diagonal"}, "flip must be one of"),
        ({"translate": -1}, "translate"),
        ({"color_jitter": 1.5}, "color_jitter"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**settings)
