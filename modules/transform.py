"""Transform module file: decode the views and masks, apply the mask, crop, normalize.

TFX runs `preprocessing_fn` in Beam over the training data, and the same graph is saved with the
model and run inside `serving_default` and `predict_raw`, so training and serving see identical
pixels.

Mask modes (`config.mask_mode`):
- `crop` (default): crop all views to the region's bounding box, made square and widened by
  `crop_margin` on each side, then resize to `image_size`; the context around the region is kept.
- `zero`: resize the whole image and set every pixel outside the region to 0.
- `channel`: resize the whole image; the mask is only given as an extra channel.
- `none`: the mask is ignored (whole image, no mask channel); an ablation, to measure what the
  mask is worth.
With `keep_mask_channel` (default on) `crop` and `zero` also append the mask as a channel.

Normalization (`config.normalization`):
- `region` (default): per image, subtract the mean and divide by the standard deviation of the
  pixels inside the region (robust to site brightness and contrast).
- `dataset`: z-score each band with the mean and variance of its training pixels (tft
  analyzers).

Views are PNG, JPEG or raster records (masktfx/images.py; any number of bands, integer or float
samples; DICOM and NIfTI planes in their modality's units); `config.bands` picks and orders a
raster's bands, `config.window` (center, width) windows the intensities first.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from masktfx import features, images
from masktfx.config import PipelineConfig

_EPSILON = 1e-6


def _message(template: str, **values: Any) -> tf.Tensor:
    """A str.format template of masktfx.images filled in inside the graph, so the served graph's
    checks say what `masktfx serve` says."""
    parts: list[Any] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        if literal:
            parts.append(literal)
        if name is not None:
            value = values[name]
            parts.append(value if isinstance(value, str) else tf.strings.as_string(value))
    return tf.strings.join(parts)


def _check(condition: tf.Tensor, row: tf.Tensor, part: str, index: int, template: str,
           **values: Any) -> tf.Operation:
    """An assertion whose message is the dev server's for the same bad input."""
    where = _message(images.REGION_AT, row=row, part=part, index=str(index))
    return tf.debugging.Assert(condition, [tf.strings.join([where, _message(template,
                                                                            **values)])])


# The record's sample types (masktfx.images.RASTER_DTYPES) as TensorFlow parses them: integer
# samples scaled by their type's maximum, as decode_image scales PNG and JPEG; float samples
# taken as they are.
_RASTER_TYPES = {code: (tf.as_dtype(dtype), float(np.iinfo(dtype).max)
                        if np.issubdtype(dtype, np.integer) else 1.0)
                 for code, dtype in images.RASTER_DTYPES.items()}


def decode_raster(encoded: tf.Tensor) -> tf.Tensor:
    """A raster record (masktfx.images.encode_raster) -> [H, W, bands] float32."""
    start = len(images.RASTER_MAGIC)
    code = tf.strings.substr(encoded, start, 3)
    proto = tf.strings.substr(encoded, images.RASTER_HEADER_BYTES,
                              tf.strings.length(encoded) - images.RASTER_HEADER_BYTES)

    def parse(dtype: tf.DType, scale: float):
        return lambda: tf.cast(tf.io.parse_tensor(proto, dtype), tf.float32) / scale

    samples = tf.case([(tf.equal(code, name), parse(dtype, scale))
                       for name, (dtype, scale) in _RASTER_TYPES.items()],
                      default=parse(tf.float32, 1.0))
    return tf.ensure_shape(samples, [None, None, None])


def _raster_view(encoded: tf.Tensor, channels: int, bands: list[int], row: tf.Tensor,
                 index: int) -> tf.Tensor:
    """A raster view's bands (all, or `bands` in their order), checked against `channels`."""
    is_raster = tf.equal(tf.strings.substr(encoded, 0, len(images.RASTER_MAGIC)),
                         images.RASTER_MAGIC)
    with tf.control_dependencies([_check(is_raster, row, "images", index, images.NOT_A_RASTER,
                                         channels=str(channels))]):
        samples = decode_raster(encoded)
    count = tf.shape(samples)[-1]
    if bands:
        with tf.control_dependencies([_check(count >= max(bands), row, "images", index,
                                             images.RASTER_LACKS_BAND, bands=count,
                                             band=str(max(bands)))]):
            samples = tf.gather(samples, [band - 1 for band in bands], axis=-1)
        count = tf.shape(samples)[-1]
    with tf.control_dependencies([_check(tf.equal(count, channels), row, "images", index,
                                         images.RASTER_BANDS_DIFFER, bands=count,
                                         channels=str(channels))]):
        return tf.ensure_shape(tf.identity(samples), [None, None, channels])


def decode_view(encoded: tf.Tensor, channels: int, bands: list[int], row: tf.Tensor,
                index: int, rasters: bool) -> tf.Tensor:
    """One encoded view -> [H, W, channels] float32: a raster record's bands, or a PNG or
    JPEG scaled to [0, 1] and converted to gray or RGB. Which one is fixed when the graph is
    built (`config.reads_rasters`, from the data), so a picture model decodes as it always has."""
    if rasters:
        return _raster_view(encoded, channels, bands, row, index)
    return tf.ensure_shape(tf.io.decode_image(encoded, channels=channels, dtype=tf.float32,
                                              expand_animations=False), [None, None, channels])


def decode_views(encoded: tf.Tensor, channels: int, num_views: int, row: tf.Tensor,
                 bands: list[int] | None = None, rasters: bool = False) -> tf.Tensor:
    """[K] encoded images -> [K, H, W, channels] float32 (PNG and JPEG in [0, 1], whatever the
    bit depth); views of different sizes stop the graph with the region check's message."""
    views = [decode_view(encoded[k], channels, list(bands or []), row, k, rasters)
             for k in range(num_views)]
    first = tf.shape(views[0])
    checks = []
    for k in range(1, num_views):
        shape = tf.shape(views[k])
        checks.append(_check(tf.reduce_all(shape[:2] == first[:2]), row, "images", k,
                             images.VIEWS_DISAGREE, view=str(k + 1), width=shape[1],
                             height=shape[0], first_width=first[1], first_height=first[0]))
    with tf.control_dependencies(checks):
        return tf.stack(views)


def decode_masks(encoded: tf.Tensor, height: tf.Tensor, width: tf.Tensor, num_views: int,
                 num_masks: int, row: tf.Tensor) -> tf.Tensor:
    """[1 or K] masks -> [K, H, W, 1] float32 of 0/1. A mask of another size than the image, or
    an empty one, stops the graph with the region check's message (as `masktfx serve` and
    ingest refuse it): TF Serving answers 400 rather than scoring a resized or empty region."""
    masks, checks = [], []
    for k in range(num_masks):
        # uint16: a 16-bit mask whose inside is a small value (1, say) stays nonzero
        mask = tf.io.decode_image(encoded[k], channels=1, dtype=tf.uint16,
                                  expand_animations=False)
        shape = tf.shape(mask)
        same_size = tf.reduce_all(shape[:2] == tf.stack([height, width]))
        checks.append(_check(same_size, row, "masks", k, images.MASK_SIZE_DIFFERS,
                             width=shape[1], height=shape[0], image_width=width,
                             image_height=height))
        with tf.control_dependencies(checks[-1:]):
            checks.append(_check(tf.reduce_any(mask > 0), row, "masks", k, images.MASK_EMPTY))
        masks.append(tf.cast(mask > 0, tf.float32))
    with tf.control_dependencies(checks):
        stacked = tf.stack(masks)
    return tf.broadcast_to(stacked, tf.stack([num_views, height, width, 1]))


def apply_window(views: tf.Tensor, center: float, width: float) -> tf.Tensor:
    """An intensity window, as a radiologist sets one: [center - width/2, center + width/2]
    mapped to [0, 1], values outside clipped."""
    return tf.clip_by_value((views - (center - width / 2.0)) / width, 0.0, 1.0)


def region_box(mask: tf.Tensor, margin: float) -> tf.Tensor:
    """Normalized [y1, x1, y2, x2] of the square box around the region, widened by `margin`.

    `mask` is [H, W] of 0/1; an empty one (which decode_masks stops on) would give the whole
    image.
    """
    shape = tf.shape(mask)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    rows = tf.reduce_any(mask > 0, axis=1)
    cols = tf.reduce_any(mask > 0, axis=0)

    def extent(hits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        length = tf.shape(hits)[0]
        first = tf.argmax(tf.cast(hits, tf.int32), output_type=tf.int32)
        last = length - 1 - tf.argmax(tf.cast(tf.reverse(hits, [0]), tf.int32),
                                      output_type=tf.int32)
        return tf.cast(first, tf.float32), tf.cast(last, tf.float32)

    y0, y1 = extent(rows)
    x0, x1 = extent(cols)
    side = tf.maximum(y1 - y0 + 1.0, x1 - x0 + 1.0) * (1.0 + 2.0 * margin)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    half = (side - 1.0) / 2.0
    # crop_and_resize maps a normalized coordinate c to pixel c * (size - 1).
    box = tf.stack([(cy - half) / tf.maximum(height - 1.0, 1.0),
                    (cx - half) / tf.maximum(width - 1.0, 1.0),
                    (cy + half) / tf.maximum(height - 1.0, 1.0),
                    (cx + half) / tf.maximum(width - 1.0, 1.0)])
    whole = tf.constant([0.0, 0.0, 1.0, 1.0])
    return tf.where(tf.reduce_any(rows), box, whole)


def crop_to_region(views: tf.Tensor, masks: tf.Tensor, size: int, margin: float
                   ) -> tuple[tf.Tensor, tf.Tensor]:
    """Crop every view and mask to the box around the union of the masks; [K, S, S, C]."""
    union = tf.reduce_max(masks[..., 0], axis=0)
    box = region_box(union, margin)
    num = tf.shape(views)[0]
    boxes = tf.tile(box[tf.newaxis], [num, 1])
    indices = tf.range(num)
    cropped = tf.image.crop_and_resize(views, boxes, indices, [size, size], method="bilinear")
    cropped_masks = tf.image.crop_and_resize(masks, boxes, indices, [size, size],
                                             method="nearest")
    return cropped, cropped_masks


def to_input_grid(views: tf.Tensor, masks: tf.Tensor, config: PipelineConfig
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """Views and masks on the model's [S, S] grid: cropped to the region (`crop`) or resized."""
    size = config.image_size
    if config.mask_mode == "crop":
        return crop_to_region(views, masks, size, config.crop_margin)
    return (tf.image.resize(views, [size, size], method="bilinear"),
            tf.image.resize(masks, [size, size], method="nearest"))


def apply_mask(views: tf.Tensor, masks: tf.Tensor, config: PipelineConfig,
               with_statistics: bool = False) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
    """[K, H, W, C] views + [K, H, W, 1] masks -> [K, S, S, C'] model input for one example
    (with `with_statistics`, and its `region_statistics`)."""
    views, masks = to_input_grid(views, masks, config)
    statistics = region_statistics(views, masks) if with_statistics else None
    if config.mask_mode == "none":
        masks = tf.ones_like(masks)  # the region is the whole image: the mask is not used
    if config.normalization == "region":
        views = standardize_over_region(views, masks)
    if config.mask_mode == "zero":
        views = views * masks
    if config.input_channels > config.channels:
        views = tf.concat([views, masks], axis=-1)
    return (views, statistics) if with_statistics else views


def region_statistics(views: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """[K, S, S, C] views on the model's grid (before any normalization) and [K, S, S, 1] masks
    -> [4 C + 1]: per channel, the mean and standard deviation inside the region and in the
    rest of the crop around it (0 when there is none), averaged over the views, then the
    region's share of the crop. What the region normalization removes from the model's input
    (brightness, contrast, colour of a site), kept for the out-of-distribution score."""
    def moments(weights: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        count = tf.reduce_sum(weights, axis=[1, 2])  # [K, 1]
        safe = tf.maximum(count, 1.0)
        mean = tf.reduce_sum(views * weights, axis=[1, 2]) / safe  # [K, C]
        variance = tf.reduce_sum(tf.square(views - mean[:, None, None]) * weights,
                                 axis=[1, 2]) / safe
        present = tf.cast(count > 0, views.dtype)
        return (tf.reduce_mean(mean * present, axis=0),
                tf.reduce_mean(tf.sqrt(variance) * present, axis=0))

    inside_mean, inside_std = moments(masks)
    around_mean, around_std = moments(1.0 - masks)
    share = tf.reshape(tf.reduce_mean(masks), [1])
    return tf.concat([inside_mean, inside_std, around_mean, around_std, share], axis=0)


def standardize_over_region(views: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Per view: (x - mean) / std over the region's pixels (the whole view if it is empty)."""
    weights = masks
    empty = tf.reduce_sum(weights, axis=[1, 2, 3], keepdims=True) < 1.0
    weights = tf.where(empty, tf.ones_like(weights), weights)
    count = tf.reduce_sum(weights, axis=[1, 2, 3], keepdims=True) * tf.cast(
        tf.shape(views)[-1], tf.float32)
    mean = tf.reduce_sum(views * weights, axis=[1, 2, 3], keepdims=True) / count
    variance = tf.reduce_sum(tf.square(views - mean) * weights, axis=[1, 2, 3],
                             keepdims=True) / count
    return (views - mean) / tf.maximum(tf.sqrt(variance), 1e-3)


def transform_regions(encoded_images: tf.Tensor, encoded_masks: tf.Tensor,
                      config: PipelineConfig, masks_only: bool = False,
                      with_statistics: bool = False) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
    """[B, K] encoded images and [B, 1 or K] masks -> [B, K, S, S, C'] float32. With
    `masks_only`, each view's region mask on the model's grid instead, [B, K, S, S] in {0, 1}
    (whatever the mask mode: `none` ignores the mask, but the region is still there). With
    `with_statistics`, also each region's `region_statistics`, [B, 4 C + 1]."""
    num_views = config.num_views
    channels = config.channels
    size = config.image_size

    num_masks = config.num_masks

    def one_example(item: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tf.Tensor:
        row, encoded_views, encoded_masks = item
        counted = [tf.debugging.assert_equal(tf.shape(encoded_views)[0], num_views,
                                             message=f"expected {num_views} view(s) per example"),
                   tf.debugging.assert_equal(tf.shape(encoded_masks)[0], num_masks,
                                             message=f"expected {num_masks} mask(s) per example")]
        with tf.control_dependencies(counted):
            views = decode_views(encoded_views, channels, num_views, row, config.bands,
                                 config.reads_rasters)
        if config.window:
            views = apply_window(views, *config.window)
        shape = tf.shape(views)
        decoded_masks = decode_masks(encoded_masks, shape[1], shape[2], num_views, num_masks, row)
        if masks_only:
            return to_input_grid(views, decoded_masks, config)[1][..., 0]
        return apply_mask(views, decoded_masks, config, with_statistics)

    shape = [num_views, size, size] + ([] if masks_only else [config.input_channels])
    signature = tf.TensorSpec(shape, tf.float32)
    if with_statistics:
        signature = (signature, tf.TensorSpec([statistics_size(config)], tf.float32))
    found = tf.map_fn(
        one_example, (tf.range(tf.shape(encoded_images)[0]), encoded_images, encoded_masks),
        fn_output_signature=signature)
    regions = found[0] if with_statistics else found
    regions.set_shape([None, *shape])
    return (regions, found[1]) if with_statistics else regions


def statistics_size(config: PipelineConfig) -> int:
    """The length of `region_statistics` for this config's channels."""
    return 4 * config.channels + 1


def preprocessing_fn(inputs: dict[str, tf.Tensor], custom_config: dict[str, Any]
                     ) -> dict[str, tf.Tensor]:
    """TFX entry point; `custom_config` is `PipelineConfig.component_config(TRANSFORM_FIELDS)`."""
    config = PipelineConfig.from_component_config(custom_config)
    if config.num_views < 1 or config.num_masks < 1 or config.channels < 1:
        raise ValueError("config num_views, num_masks and channels must be resolved from the "
                         "data before Transform runs")
    images = _dense(inputs[features.IMAGES_KEY])
    masks = _dense(inputs[features.MASKS_KEY])
    regions, statistics = transform_regions(images, masks, config, with_statistics=True)
    if config.normalization == "dataset":
        # per band: a raster's bands (near-infrared beside red, say) have ranges of their own
        scaled = [tft.scale_to_z_score(regions[..., band:band + 1])
                  for band in range(config.channels)]
        regions = tf.concat([*scaled, regions[..., config.channels:]], axis=-1)
    outputs = {features.REGION_KEY: regions, features.REGION_STATISTICS_KEY: statistics}
    if features.LABEL_KEY in inputs:
        label = _dense(inputs[features.LABEL_KEY])
        outputs[features.TRANSFORMED_LABEL_KEY] = tf.cast(tf.reshape(label, [-1]), tf.int64)
    return outputs


def _dense(tensor: tf.Tensor | tf.SparseTensor) -> tf.Tensor:
    if isinstance(tensor, tf.SparseTensor):
        return tf.sparse.to_dense(tensor, default_value="" if tensor.dtype == tf.string else 0)
    return tensor
