"""tf.Example records in the shape `modules/features.py` defines."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from modules import features  # noqa: E402


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def make_example(images: Sequence[bytes], masks: Sequence[bytes], label: int | None = None,
                 example_id: str = "", group: str = "",
                 metadata: Iterable[tuple[str, str]] = ()) -> "tf.train.Example":  # noqa: F821
    """One region; `label` None gives the inference form (what `serving_default` reads)."""
    import tensorflow as tf

    def bytes_feature(values: Sequence[str | bytes]) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[_to_bytes(v) for v in values]))

    feature_map = {
        features.IMAGES_KEY: bytes_feature(list(images)),
        features.MASKS_KEY: bytes_feature(list(masks)),
    }
    if label is not None:
        feature_map[features.LABEL_KEY] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(label)]))
    if example_id:
        feature_map[features.ID_KEY] = bytes_feature([example_id])
    if group:
        feature_map[features.GROUP_KEY] = bytes_feature([group])
    for name, value in metadata:
        feature_map[name] = bytes_feature([value])
    return tf.train.Example(features=tf.train.Features(feature=feature_map))


def read_examples(pattern: str) -> list["tf.train.Example"]:  # noqa: F821
    """Every record of the gzipped shards matching `pattern`, parsed (for tests and tools)."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern}")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in dataset]
