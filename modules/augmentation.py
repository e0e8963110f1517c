"""The training augmentations (`augmentations`): flips and rotations, zoom, colour, intensity,
blur, noise and random convolutions, each one batched op, applied by the Trainer's input
pipeline (modules/trainer.py `training_pairs`). `mixstyle` is not applied here but inside the
network (modules/model.py `MixStyle`)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _square_symmetries(size: int) -> np.ndarray:
    """[8, size * size]: the pixel order of each of the square's 8 flips and rotations."""
    grid = np.arange(size * size, dtype=np.int32).reshape(size, size)
    return np.stack([np.rot90(base, turns) for base in (grid, grid[::-1])
                     for turns in range(4)]).reshape(8, size * size)


def _zoom(regions: tf.Tensor, channels: int) -> tf.Tensor:
    """Zoom each example in or out by up to 25% around the crop's centre (views and mask alike;
    the mask channels stay binary). Zooming out pads with 0, the region's mean after the
    region normalization."""
    size = regions.shape[2]
    shape = tf.shape(regions)
    batch, views, depth = shape[0], shape[1], shape[4]
    half = 0.5 / tf.random.uniform([batch, 1], 0.8, 1.25)
    boxes = tf.repeat(tf.concat([0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half], axis=1),
                      views, axis=0)
    flat = tf.reshape(regions, [batch * views, size, size, depth])
    zoomed = tf.image.crop_and_resize(flat, boxes, tf.range(batch * views), [size, size])
    is_image = tf.range(depth) < channels
    zoomed = tf.where(is_image, zoomed, tf.cast(zoomed > 0.5, zoomed.dtype))
    return tf.reshape(zoomed, shape)


def _blur(regions: tf.Tensor) -> tf.Tensor:
    """Each example blended with its 3x3 box blur by a random amount (focus, resolution)."""
    size = regions.shape[2]
    shape = tf.shape(regions)
    flat = tf.reshape(regions, [shape[0] * shape[1], size, size, shape[4]])
    blurred = tf.reshape(tf.nn.avg_pool2d(flat, 3, 1, "SAME"), shape)
    amount = tf.random.uniform([shape[0], 1, 1, 1, 1], 0.0, 1.0)
    return regions + amount * (blurred - regions)


# The random convolutions' kernel sizes (Xu et al. use 1 to 7; a 1 x 1 kernel on one channel
# is a gain the intensity augmentation already draws).
RANDOM_KERNEL_SIZES = (3, 5, 7)


def _random_convolution(regions: tf.Tensor, channels: int) -> tf.Tensor:
    """Random convolutions (Xu et al., ICLR 2021): the image channels filtered by one random
    kernel per batch, of a random size, with Gaussian weights, which changes local texture and
    contrast (what another sensor, resolution or stain changes) and not shapes; each view's
    result is scaled back to the view's own per-channel mean and spread (the region
    normalization's scale) and blended with the original by a random amount."""
    size = regions.shape[2]
    shape = tf.shape(regions)
    flat = tf.reshape(regions, [shape[0] * shape[1], size, size, shape[4]])
    image = flat[..., :channels]
    width = max(RANDOM_KERNEL_SIZES)
    kernel_size = tf.gather(tf.constant(RANDOM_KERNEL_SIZES),
                            tf.random.uniform([], 0, len(RANDOM_KERNEL_SIZES), tf.int32))
    # a width x width kernel, zero outside a centred kernel_size x kernel_size square
    inside = tf.abs(tf.range(width) - width // 2) <= kernel_size // 2
    support = tf.cast(inside[:, None] & inside[None, :], regions.dtype)[:, :, None, None]
    weights = tf.random.normal([width, width, channels, channels]) / tf.sqrt(
        tf.cast(kernel_size * kernel_size * channels, regions.dtype))
    filtered = tf.nn.conv2d(image, weights * support, 1, "SAME")
    mean, variance = tf.nn.moments(image, axes=[1, 2], keepdims=True)
    found_mean, found_variance = tf.nn.moments(filtered, axes=[1, 2], keepdims=True)
    filtered = ((filtered - found_mean) * tf.sqrt((variance + 1e-6) / (found_variance + 1e-6))
                + mean)
    amount = tf.random.uniform([shape[0] * shape[1], 1, 1, 1], 0.0, 1.0)
    image = image + amount * (filtered - image)
    return tf.reshape(tf.concat([image, flat[..., channels:]], axis=-1), shape)


def augment(regions: tf.Tensor, channels: int,
            names: tuple[str, ...] | list[str] = ("flip", "intensity")) -> tf.Tensor:
    """The `augmentations` named, each drawn per example (a random convolution's kernel per
    batch).

    `regions` is [B, K, S, S, C']; views and the mask channel move together (flip, scale), and
    only the first `channels` (image) channels get intensity, colour, blur, random convolutions
    and noise. Each step
    is one batched op: the input pipeline shares the cores with training, so it must stay cheap.
    """
    size = regions.shape[2]  # static: the transformed feature spec fixes it
    shape = tf.shape(regions)
    batch, views, depth = shape[0], shape[1], shape[4]
    is_image = tf.range(depth) < channels
    image_only = tf.cast(is_image, regions.dtype)
    if "scale" in names:
        regions = _zoom(regions, channels)
    if "flip" in names:
        order = tf.gather(tf.constant(_square_symmetries(size)),
                          tf.random.uniform([batch], 0, 8, dtype=tf.int32))  # [B, S*S]
        pixels = tf.reshape(regions, [batch, views, size * size, depth])
        regions = tf.reshape(tf.gather(pixels, order, axis=2, batch_dims=1), shape)
    if "color" in names and channels > 1:
        # Saturation around the pixel's grey level, then a gain and an offset per channel: the
        # colour balance of another camera, season or stain.
        image = regions[..., :channels]
        grey = tf.reduce_mean(image, axis=-1, keepdims=True)
        saturation = tf.random.uniform([batch, 1, 1, 1, 1], 0.6, 1.4)
        gain = tf.random.uniform([batch, 1, 1, 1, channels], 0.85, 1.15)
        offset = tf.random.uniform([batch, 1, 1, 1, channels], -0.15, 0.15)
        image = (grey + saturation * (image - grey)) * gain + offset
        regions = tf.concat([image, regions[..., channels:]], axis=-1)
    if "intensity" in names:
        contrast = tf.random.uniform([batch, 1, 1, 1, 1], 0.8, 1.2)
        brightness = tf.random.uniform([batch, 1, 1, 1, 1], -0.2, 0.2)
        regions = regions * tf.where(is_image, contrast, 1.0) + tf.where(is_image, brightness,
                                                                          0.0)
    if "blur" in names:
        regions = tf.where(is_image, _blur(regions), regions)
    if "random_convolution" in names:
        regions = _random_convolution(regions, channels)
    if "noise" in names:
        sigma = tf.random.uniform([batch, 1, 1, 1, 1], 0.0, 0.15)
        regions = regions + sigma * tf.random.normal(shape) * image_only
    return regions
