"""The data contract as a TFDV schema, so ExampleValidator flags data that breaks it.

An inferred schema would simply follow a broken span (missing masks, a changed type); a schema
built from the contract does not.
"""

from __future__ import annotations

from tensorflow_metadata.proto.v0 import schema_pb2

from masktfx import features
from masktfx.config import PipelineConfig


def contract_schema(config: PipelineConfig) -> schema_pb2.Schema:
    """Every feature required in every example, with the shapes Transform expects."""
    if config.num_views < 1 or config.num_masks < 1:
        raise ValueError("num_views and num_masks must be resolved from the data first")
    schema = schema_pb2.Schema()

    def add(name: str, kind: int, size: int) -> schema_pb2.Feature:
        feature = schema.feature.add(name=name, type=kind)
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.shape.dim.add(size=size)
        return feature

    # image_domain: TFDV then keeps byte-size statistics of the encoded images instead of
    # counting every distinct image as a category, which shuffled all image bytes through
    # StatisticsGen and made its memory grow with the data.
    add(features.IMAGES_KEY, schema_pb2.BYTES, config.num_views).image_domain.SetInParent()
    add(features.MASKS_KEY, schema_pb2.BYTES, config.num_masks).image_domain.SetInParent()
    label = add(features.LABEL_KEY, schema_pb2.INT, 1)
    # -1 (features.UNLABELED) only where the data holds unlabeled regions, which ExampleGen
    # keeps apart in their own split
    label.int_domain.min = features.UNLABELED if config.unlabeled_split else 0
    label.int_domain.max = 1
    add(features.ID_KEY, schema_pb2.BYTES, 1)
    add(features.GROUP_KEY, schema_pb2.BYTES, 1)
    for column in config.metadata_columns:
        add(column, schema_pb2.BYTES, 1)
    if config.windowed:  # ImportExampleGen writes each record's span (components/span_window)
        add(features.SPAN_KEY, schema_pb2.INT, 1)
    return schema


def schema_digest(config: PipelineConfig) -> str:
    """A short name for the schema's content."""
    import hashlib

    text = contract_schema(config).SerializeToString(deterministic=True)
    return hashlib.sha256(text).hexdigest()[:12]


def write_schema(config: PipelineConfig, path: str) -> str:
    """Write the contract schema as text proto (what ImportSchemaGen reads)."""
    import tensorflow as tf
    from google.protobuf import text_format

    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(text_format.MessageToString(contract_schema(config)))
    return path
