"""ImportExampleGen without the shuffle before writing, so its memory does not grow with the data.

TFX's ExampleGen reshuffles every record before writing a split. On the DirectRunner a shuffle is
held in memory, so ImportExampleGen's memory grew with the data set, several times its size
(docs/benchmarks.md). Our records need no shuffle here: `masktfx ingest`
already writes them in a random order (rows are shuffled per span before sharding), and the
Trainer shuffles again. Everything else is ImportExampleGen's: the span and version resolution of
its driver, the split by a hash of `group`, gzipped TFRecords, the output artifact's properties.

Two additions serve span windows (components/span_window.py): with `span_feature` set, every
record gains an int64 feature holding its span (so the evaluation can be sliced by span), and the
output artifact is stamped with a key naming how its records were read and split.
"""

from __future__ import annotations

import os
from typing import Any

import apache_beam as beam
from google.protobuf import struct_pb2, wrappers_pb2
from tfx import types
from tfx.components.example_gen import utils, write_split
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.components.example_gen.import_example_gen.component import ImportExampleGen
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from masktfx import features
from masktfx.components.span_window import SPLIT_KEY_PROPERTY, split_key


def example_gen_config(span_feature: str = "", unlabeled_split: bool = False
                       ) -> example_gen_pb2.CustomConfig | None:
    """The executor's custom config: the span feature's name alone (the form of the releases
    before unlabeled regions, so the split keys of the spans they read stay valid), or both
    settings; None when neither is set."""
    if not span_feature and not unlabeled_split:
        return None
    config = example_gen_pb2.CustomConfig()
    if unlabeled_split:
        settings = struct_pb2.Struct()
        settings.update({SPAN_FEATURE: span_feature, UNLABELED_SPLIT_SETTING: True})
        config.custom_config.Pack(settings)
    else:
        config.custom_config.Pack(wrappers_pb2.StringValue(value=span_feature))
    return config


SPAN_FEATURE = "span_feature"
UNLABELED_SPLIT_SETTING = "unlabeled_split"


def read_example_gen_config(custom_config: example_gen_pb2.CustomConfig | None
                            ) -> tuple[str, bool]:
    """(span feature, unlabeled split) of `example_gen_config`'s result."""
    if custom_config is None or not custom_config.HasField("custom_config"):
        return "", False
    if custom_config.custom_config.Is(struct_pb2.Struct.DESCRIPTOR):
        settings = struct_pb2.Struct()
        custom_config.custom_config.Unpack(settings)
        return (str(settings[SPAN_FEATURE]) if SPAN_FEATURE in settings else "",
                bool(settings[UNLABELED_SPLIT_SETTING]) if UNLABELED_SPLIT_SETTING in settings
                else False)
    value = wrappers_pb2.StringValue()
    custom_config.custom_config.Unpack(value)
    return value.value, False


def is_unlabeled(record: Any) -> bool:
    """Whether a record (serialized or parsed tf.Example) is an unlabeled region."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(record) if isinstance(record, bytes) else record
    label = example.features.feature.get(features.LABEL_KEY)
    return label is not None and list(label.int64_list.value) == [features.UNLABELED]


def span_suffix(name: str, span: int) -> bytes:
    """A serialized tf.Example holding only `name: span`. Appended to a serialized Example, it
    adds the feature: protobuf merges repeated occurrences of a message field, and every parser
    on the way (TensorFlow's, tfx-bsl's, protobuf's) reads the two as one Example."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    example.features.feature[name].int64_list.value.append(int(span))
    return example.SerializeToString()


def _with_suffix(record: Any, suffix: bytes) -> bytes:
    return (record if isinstance(record, bytes) else record.SerializeToString()) + suffix


class Executor(import_executor.Executor):
    """ImportExampleGen's executor, writing each split in the order it reads it."""

    def Do(self, input_dict: dict[str, list[types.Artifact]],  # noqa: N802  (TFX's name)
           output_dict: dict[str, list[types.Artifact]], exec_properties: dict[str, Any]
           ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        input_config = proto_utils.json_to_proto(
            exec_properties[standard_component_specs.INPUT_CONFIG_KEY], example_gen_pb2.Input())
        output_config = proto_utils.json_to_proto(
            exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
            example_gen_pb2.Output())
        custom_config = None
        if exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY):
            custom_config = proto_utils.json_to_proto(
                exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY],
                example_gen_pb2.CustomConfig())
        span_feature, unlabeled_split = read_example_gen_config(custom_config)
        examples = output_dict[standard_component_specs.EXAMPLES_KEY]
        artifact = artifact_utils.get_single_instance(examples)
        artifact.split_names = artifact_utils.encode_split_names(
            utils.generate_output_split_names(input_config, output_config)
            + ([features.UNLABELED_SPLIT] if unlabeled_split else []))
        artifact.set_string_custom_property(
            SPLIT_KEY_PROPERTY, split_key(output_config, custom_config))
        with self._make_beam_pipeline() as pipeline:
            splits = self.GenerateExamplesByBeam(pipeline, exec_properties)
            if unlabeled_split:
                splits = route_unlabeled(splits)
            for split, records in splits.items():
                if span_feature:
                    suffix = span_suffix(span_feature, exec_properties[utils.SPAN_PROPERTY_NAME])
                    records = records | f"AddSpan[{split}]" >> beam.Map(_with_suffix, suffix)
                _ = (records
                     | f"Serialize[{split}]" >> beam.ParDo(write_split.MaybeSerialize())
                     | f"WriteSplit[{split}]" >> beam.io.WriteToTFRecord(
                         os.path.join(artifact_utils.get_split_uri(examples, split),
                                      write_split.DEFAULT_TF_RECORD_FILE_NAME),
                         file_name_suffix=".gz"))
        payload_format = exec_properties.get(standard_component_specs.OUTPUT_DATA_FORMAT_KEY)
        file_format = exec_properties.get(standard_component_specs.OUTPUT_FILE_FORMAT_KEY)
        for output in examples:
            if payload_format:
                examples_utils.set_payload_format(output, payload_format)
            if file_format:
                examples_utils.set_file_format(output, write_split.to_file_format_str(file_format))


def route_unlabeled(splits: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
    """The unlabeled regions of every split moved into a split of their own, whatever their
    group's hash: a labelled split (and so the Evaluator's test split) holds none."""
    routed, unlabeled = {}, []
    for split, records in splits.items():
        routed[split], found = records | f"RouteUnlabeled[{split}]" >> beam.Partition(
            lambda record, _: int(is_unlabeled(record)), 2)
        unlabeled.append(found)
    routed[features.UNLABELED_SPLIT] = tuple(unlabeled) | "JoinUnlabeled" >> beam.Flatten()
    return routed


class StreamingImportExampleGen(ImportExampleGen):
    """ImportExampleGen (driver, spec, outputs) with the executor above; `span_feature` names the
    feature each record's span is written into (empty: none); with `unlabeled_split` the
    unlabeled regions go to a split of their own (`features.UNLABELED_SPLIT`)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base: Any = None, input_config: Any = None,
                 output_config: Any = None, range_config: Any = None, span_feature: str = "",
                 unlabeled_split: bool = False):
        # ImportExampleGen's own __init__ takes no custom_config; its base class does.
        FileBasedExampleGen.__init__(
            self, input_base=input_base, input_config=input_config,
            output_config=output_config, range_config=range_config,
            custom_config=example_gen_config(span_feature, unlabeled_split),
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE)
