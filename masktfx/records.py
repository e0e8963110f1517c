"""tf.Example records in the shape `masktfx/features.py` defines."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence

import google_crc32c

from masktfx import features
from masktfx.example_proto import Example


def _masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecord(handle, record: bytes) -> None:
    """One record in TFRecord framing (length, masked CRC-32C of it, data, masked CRC-32C),
    without TensorFlow (ingest's workers do not load it)."""
    length = struct.pack("<Q", len(record))
    handle.write(length + struct.pack("<I", _masked_crc32c(length)) + record
                 + struct.pack("<I", _masked_crc32c(record)))


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def make_example(images: Sequence[bytes], masks: Sequence[bytes], label: int | None = None,
                 example_id: str = "", group: str = "",
                 metadata: Iterable[tuple[str, str]] = ()) -> Example:
    """One region; `label` None gives the inference form (what `serving_default` reads).

    Returns a message with tf.train.Example's wire format, built without loading TensorFlow.
    """
    example = Example()
    feature = example.features.feature

    def put_bytes(name: str, values: Sequence[str | bytes]) -> None:
        feature[name].bytes_list.value.extend(_to_bytes(v) for v in values)

    put_bytes(features.IMAGES_KEY, list(images))
    put_bytes(features.MASKS_KEY, list(masks))
    if label is not None:
        feature[features.LABEL_KEY].int64_list.value.append(int(label))
    if example_id:
        put_bytes(features.ID_KEY, [example_id])
    if group:
        put_bytes(features.GROUP_KEY, [group])
    for name, value in metadata:
        put_bytes(name, [value])
    return example


def read_examples(pattern: str) -> list["tf.train.Example"]:  # noqa: F821
    """Every record of the gzipped shards matching `pattern`, parsed (for tests and tools)."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern}")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in dataset]


def split_records(examples_uris: Sequence[str], splits: Sequence[str] | None = None
                  ) -> Iterator[bytes]:
    """The serialized records of TFX Examples artifacts (gzipped TFRecords under Split-*/), in
    file order, every split unless `splits` names some."""
    import tensorflow as tf

    for uri in examples_uris:
        patterns = ([os.path.join(uri, f"Split-{split}", "*") for split in splits] if splits
                    else [os.path.join(uri, "Split-*", "*")])
        files = sorted(path for pattern in patterns for path in tf.io.gfile.glob(pattern))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            yield bytes(record.numpy())
