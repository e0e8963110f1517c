"""What the pipeline needs to know about the ingested data before it is built: layout, number
of views and masks, metadata columns. Read from the shards themselves, so data from any writer
that follows the contract works."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from masktfx import features
from masktfx.config import PipelineConfig, model_channels
from masktfx.images import RegionInputError, decode_raster, sniff_format

_SPAN = re.compile(r"^span-(\d+)$")


class DataLayoutError(ValueError):
    """The data root does not hold ingested shards; the message says what was looked for."""


@dataclass(frozen=True)
class DataDescription:
    use_spans: bool
    spans: tuple[int, ...]
    num_views: int
    num_masks: int
    metadata_columns: tuple[str, ...]
    channels: int  # what `channels: 0` resolves to: 1 for gray images, 3 for colour ones
    raster_bands: int = 0  # the bands of the first image, when it is a raster record


def list_spans(data_root: str) -> list[int]:
    if not tf.io.gfile.isdir(data_root):
        return []
    spans = []
    for name in tf.io.gfile.listdir(data_root):
        match = _SPAN.match(name.rstrip("/"))
        if match and tf.io.gfile.glob(os.path.join(data_root, name.rstrip("/"),
                                                   features.SHARD_GLOB)):
            spans.append(int(match.group(1)))
    return sorted(spans)


def describe_data(data_root: str) -> DataDescription:
    """Inspect the latest span (or the flat shards) of `data_root` from its first record."""
    spans = list_spans(data_root)
    if spans:
        pattern = os.path.join(data_root, features.SPAN_DIR_TEMPLATE.format(span=spans[-1]),
                               features.SHARD_GLOB)
    else:
        pattern = os.path.join(data_root, features.SHARD_GLOB)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise DataLayoutError(
            f"{data_root}: no ingested data; expected {features.SHARD_GLOB} shards in it or in "
            f"span-N/ folders (run `masktfx ingest` first, or pass a manifest CSV)")
    first = None
    for name in files:
        try:
            for record in tf.data.TFRecordDataset(name, compression_type="GZIP").take(1):
                first = tf.train.Example.FromString(record.numpy())
        except tf.errors.OpError as exc:
            raise damaged_shard(name, exc) from None
        if first is not None:
            break
    if first is None:
        raise DataLayoutError(f"{pattern}: the shards hold no record")
    feature = first.features.feature
    for key in (features.IMAGES_KEY, features.MASKS_KEY, features.LABEL_KEY):
        if key not in feature:
            raise DataLayoutError(f"{files[0]}: records have no {key!r} feature; they were not "
                                  "written by `masktfx ingest`")
    metadata = tuple(sorted(name for name in feature if name not in features.RESERVED_KEYS))
    first_image = feature[features.IMAGES_KEY].bytes_list.value[0]
    raster_bands = 0
    try:
        if sniff_format(first_image) == "raster":
            raster_bands = decode_raster(first_image).shape[-1]
            channels = raster_bands
        else:
            channels = model_channels(int(tf.io.decode_image(
                first_image, expand_animations=False).shape[-1]))
    except (tf.errors.OpError, RegionInputError) as exc:
        raise DataLayoutError(f"{files[0]}: the first record's image cannot be decoded "
                              f"({getattr(exc, 'message', exc)})") from None
    return DataDescription(
        use_spans=bool(spans), spans=tuple(spans),
        num_views=len(feature[features.IMAGES_KEY].bytes_list.value),
        num_masks=len(feature[features.MASKS_KEY].bytes_list.value),
        metadata_columns=metadata,
        channels=channels, raster_bands=raster_bands)


def shards_to_read(data_root: str, config: PipelineConfig) -> list[str]:
    """The shards ImportExampleGen will read: the last `span_window` spans, or the flat ones."""
    spans = list_spans(data_root)
    if spans:
        patterns = [os.path.join(data_root, features.SPAN_DIR_TEMPLATE.format(span=span),
                                 features.SHARD_GLOB) for span in spans[-config.span_window:]]
    else:
        patterns = [os.path.join(data_root, features.SHARD_GLOB)]
    return sorted(name for pattern in patterns for name in tf.io.gfile.glob(pattern))


def damaged_shard(name: str, exc: Exception) -> DataLayoutError:
    detail = getattr(exc, "message", str(exc)).split("\n")[0].split("[Op:")[0].strip()
    if "}}" in detail:  # drop TensorFlow's function-node prefix
        detail = detail.split("}}", 1)[1].strip()
    return DataLayoutError(f"{name}: damaged shard, cannot be read to the end ({detail}); "
                           "re-run `masktfx ingest` for this span or remove the shard")


def verify_shards(files: list[str], record_path: str) -> dict[str, dict]:
    """Read every shard through once; a damaged one stops the run before any component starts.

    While reading, each shard's labels per partition value (`group` and `id`) are recorded
    beside it, for the split check (pipeline/split_plan.py). Shards already verified (same size
    and modification time) are not read again, so a re-run with no new data stays quick.
    Returns what is recorded of each of `files`.
    """
    verified = _read_verified(record_path)
    for name in files:
        stat = tf.io.gfile.stat(name)
        key = [int(stat.length), int(stat.mtime_nsec)]
        if verified.get(name, {}).get("stat") == key and UNLABELED_ENTRY in verified[name]:
            continue
        try:
            verified[name] = {"stat": key, **_partition_labels(name)}
        except tf.errors.OpError as exc:
            raise damaged_shard(name, exc) from None
    os.makedirs(os.path.dirname(record_path), exist_ok=True)
    partial = f"{record_path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(verified, handle, sort_keys=True)
    os.replace(partial, record_path)
    return {name: verified[name] for name in files}


def _read_verified(record_path: str) -> dict[str, dict]:
    if not os.path.exists(record_path):
        return {}
    try:
        with open(record_path, encoding="utf-8") as handle:
            recorded = json.load(handle)
    except (OSError, ValueError):
        return {}  # unreadable: every shard is read again
    # an entry of an older layout (a bare [size, mtime]) is read again
    return {name: entry for name, entry in recorded.items() if isinstance(entry, dict)}


UNLABELED_ENTRY = "unlabeled"  # a verified shard's count of unlabeled regions


def _partition_labels(shard: str) -> dict[str, Any]:
    """{"group": {value: [negatives, positives]}, "id": {...}, "unlabeled": count} for one
    shard (values as text: the bytes decoded with surrogateescape, so any value round-trips
    through JSON)."""
    spec = {features.GROUP_KEY: tf.io.FixedLenFeature([], tf.string, default_value=b""),
            features.ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=b""),
            # missing: -2, apart from an unlabeled region's -1
            features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-2)}
    counts: dict[str, dict[str, list[int]]] = {features.GROUP_KEY: {}, features.ID_KEY: {}}
    unlabeled = 0
    dataset = tf.data.TFRecordDataset(shard, compression_type="GZIP").batch(512).map(
        lambda records: tf.io.parse_example(records, spec))
    for batch in dataset.as_numpy_iterator():
        for index, label in enumerate(batch[features.LABEL_KEY]):
            if label == features.UNLABELED:
                unlabeled += 1
            if label not in (0, 1):
                continue  # ExampleValidator reports records that break the contract
            for column in counts:
                value = batch[column][index].decode("utf-8", "surrogateescape")
                counts[column].setdefault(value, [0, 0])[int(label)] += 1
    return {**counts, UNLABELED_ENTRY: unlabeled}


def shard_labels(files: list[str]) -> dict[str, dict]:
    """What `verify_shards` records of each shard, read now (a data sample's, say)."""
    try:
        return {name: _partition_labels(name) for name in files}
    except tf.errors.OpError as exc:
        raise DataLayoutError(f"{files}: cannot be read ({getattr(exc, 'message', exc)})"
                              ) from None


def unlabeled_regions(verified: dict[str, dict]) -> int:
    """The unlabeled regions of the shards, from what `verify_shards` returned."""
    return sum(entry[UNLABELED_ENTRY] for entry in verified.values())


def labels_by_partition(verified: dict[str, dict], column: str) -> dict[bytes, list[int]]:
    """[negatives, positives] per value of `column` (group or id) over the shards, from what
    `verify_shards` returned."""
    merged: dict[bytes, list[int]] = {}
    for entry in verified.values():
        for value, (negatives, positives) in entry[column].items():
            counts = merged.setdefault(value.encode("utf-8", "surrogateescape"), [0, 0])
            counts[0] += negatives
            counts[1] += positives
    return merged


def resolve_config(config: PipelineConfig, description: DataDescription) -> PipelineConfig:
    """Fill the fields left to the data (0 or empty) and check the rest agrees with it."""
    views = config.num_views or description.num_views
    if views != description.num_views:
        raise DataLayoutError(f"config num_views is {config.num_views} but the data has "
                              f"{description.num_views} view(s) per example")
    masks = config.num_masks or description.num_masks
    if masks != description.num_masks:
        raise DataLayoutError(f"config num_masks is {config.num_masks} but the data has "
                              f"{description.num_masks} mask(s) per example")
    unknown = sorted(set(config.slice_columns) - set(description.metadata_columns))
    if unknown:
        raise DataLayoutError(f"config slice_columns {', '.join(unknown)} are not metadata "
                              f"columns of the data ({', '.join(description.metadata_columns)})")
    return config.replace(
        num_views=views, num_masks=masks, use_spans=description.use_spans,
        channels=_channels(config, description),
        image_format="rasters" if description.raster_bands else "pictures",
        metadata_columns=list(description.metadata_columns),
        slice_columns=list(config.slice_columns or description.metadata_columns)).validate()


def _channels(config: PipelineConfig, description: DataDescription) -> int:
    """The channels the model takes: what `channels` says, or (0) what the data holds; a raster's
    bands (all, or those `bands` selects) must match it."""
    bands = description.raster_bands
    if not bands:
        if config.bands:
            raise DataLayoutError(f"config bands {config.bands} selects bands of rasters, but "
                                  "the data's images are pictures (PNG, JPEG); leave bands "
                                  "empty")
        channels = config.channels or description.channels
        if channels not in (1, 3):
            raise DataLayoutError(f"config channels is {channels} but the data's images are "
                                  "pictures (PNG, JPEG), read as 1 (gray) or 3 (RGB) channels")
        return channels
    missing = [band for band in config.bands if band > bands]
    if missing:
        raise DataLayoutError(f"config bands {config.bands} asks for band {max(missing)}, but "
                              f"the data's rasters have {bands} band(s)")
    selected = len(config.bands) or bands
    channels = config.channels or selected
    if channels != selected:
        what = f"bands {config.bands} selects" if config.bands else "every band is"
        raise DataLayoutError(f"the data's images are rasters of {bands} band(s) and {what} "
                              f"{selected}, but config channels is {config.channels}; set "
                              "channels to 0 (what the rasters give), or pick "
                              f"{config.channels} band(s) with `bands`")
    return channels
