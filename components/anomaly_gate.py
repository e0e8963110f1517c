"""Stops the run when ExampleValidator found anomalies, before Transform touches the data.

TFX's ExampleValidator records anomalies but lets the pipeline go on; for this product a span that
breaks the contract must not train a model.
"""


import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils


class DataAnomaliesError(RuntimeError):
    """The data does not match the schema; the message lists every anomaly."""


def describe_anomalies(anomalies_uri: str, split_names: list[str]) -> list[str]:
    found = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", "SchemaDiff.pb")
        if not fileio.exists(path):
            continue
        message = anomalies_pb2.Anomalies()
        message.ParseFromString(io_utils.read_bytes_file(path))
        for feature, info in sorted(message.anomaly_info.items()):
            reasons = "; ".join(r.description or r.short_description for r in info.reason)
            found.append(f"split {split}, feature {feature!r}: {reasons}")
        if message.HasField("dataset_anomaly_info"):
            reasons = "; ".join(r.description for r in message.dataset_anomaly_info.reason)
            found.append(f"split {split}, dataset: {reasons}")
    return found


@component
def AnomalyGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
    """Fails (listing the anomalies) when any split has one."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    found = describe_anomalies(anomalies.uri, splits)
    if found:
        raise DataAnomaliesError("ExampleValidator found anomalies; the run stops before "
                                 "Transform:\n  " + "\n  ".join(found))
