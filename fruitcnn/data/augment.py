"""Training-time augmentation of a batch, drawn independently for every image.

Flip, translation and rotation are one projective transform per image (a single
``ImageProjectiveTransformV3`` call for the whole batch, borders filled by reflection);
without rotation the shifts are whole pixels sampled with nearest-neighbour, so the
result is an exact random crop of the reflection-padded image. Colour jitter scales
brightness, contrast and saturation. Random numbers are stateless and come from a
seed per batch, so a resumed run sees exactly the augmentation of an uninterrupted one,
and the part of a batch that one replica of a distributed run augments (``within``) gets
the numbers that image gets in the whole batch.
"""

from __future__ import annotations

import math

import tensorflow as tf

from fruitcnn.config import AugmentConfig


def augment_batch(
    images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor, within: tuple | None = None
) -> tf.Tensor:
    """Augmented copy of a float32 batch of 0..255 images (B, H, W, C).

    Args:
        images: float32 (B, H, W, C), pixel values 0..255.
        config: what to change.
        seed: int64 (2,) stateless seed of this batch.
        within: ``(start, total)``: ``images`` are images ``start .. start + B`` of a
            batch of ``total`` (one replica's part); the random numbers are drawn for
            the whole batch and this part's are used. Default: the whole batch.

    Returns:
        float32 (B, H, W, C) in 0..255.
    """
    if not config.active:
        return images
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=7)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    total = batch if within is None else tf.cast(within[1], tf.int32)

    def part(values):  # this part's rows of numbers drawn for the whole batch
        if within is None:
            return values
        start = tf.cast(within[0], tf.int32)
        return values[start : start + batch]

    geometric = config.flip != "none" or config.translate > 0 or config.rotate > 0
    if geometric:
        images = _transform(images, config, seeds, total, height, width, part)
    if config.color_jitter > 0:
        images = _jitter(images, config.color_jitter, seeds[4:7], total, part)
    return images


def _flip_signs(flip: bool, seed: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    if not flip:
        return tf.ones([batch])
    coin = tf.random.stateless_uniform([batch], seed) < 0.5
    return tf.where(coin, -1.0, 1.0)


def _transform(images, config, seeds, batch, height, width, part):
    sign_x = _flip_signs(config.flip in ("horizontal", "both"), seeds[0], batch)
    sign_y = _flip_signs(config.flip in ("vertical", "both"), seeds[1], batch)
    if config.translate > 0:
        shifts = tf.random.stateless_uniform(
            [batch, 2], seeds[2], minval=-config.translate, maxval=config.translate + 1, dtype=tf.int32
        )
        shifts = tf.cast(shifts, tf.float32)
        shift_x, shift_y = shifts[:, 0], shifts[:, 1]
    else:
        shift_x = shift_y = tf.zeros([batch])
    if config.rotate > 0:
        limit = config.rotate * math.pi / 180.0
        angle = tf.random.stateless_uniform([batch], seeds[3], minval=-limit, maxval=limit)
    else:
        angle = tf.zeros([batch])
    cos, sin = tf.cos(angle), tf.sin(angle)
    centre_x = (tf.cast(width, tf.float32) - 1.0) / 2.0
    centre_y = (tf.cast(height, tf.float32) - 1.0) / 2.0
    # Output pixel (x, y) samples the input at R(angle) @ diag(sign) @ ((x, y) - centre)
    # + centre + shift.
    a0, a1 = sign_x * cos, -sign_y * sin
    b0, b1 = sign_x * sin, sign_y * cos
    a2 = centre_x + shift_x - (a0 * centre_x + a1 * centre_y)
    b2 = centre_y + shift_y - (b0 * centre_x + b1 * centre_y)
    zeros = tf.zeros([batch])
    transforms = part(tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1))
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.stack([height, width]),
        fill_value=0.0,
        interpolation="BILINEAR" if config.rotate > 0 else "NEAREST",
        fill_mode="REFLECT",
    )


def _jitter(images, amount, seeds, batch, part):
    def factor(seed):
        return part(
            tf.random.stateless_uniform([batch, 1, 1, 1], seed, minval=1.0 - amount, maxval=1.0 + amount)
        )

    images = images * factor(seeds[0])  # brightness
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * factor(seeds[1]) + mean  # contrast
    if images.shape[-1] == 3:
        grey = tf.reduce_mean(images, axis=3, keepdims=True)
        images = (images - grey) * factor(seeds[2]) + grey  # saturation
    return tf.clip_by_value(images, 0.0, 255.0)
