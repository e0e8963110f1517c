"""The scoring step after the push: the regions of `score_data` scored with the version the
Pusher just pushed, as `masktfx score` scores them, into an artifact MLMD records (so `masktfx
lineage` shows which version scored which data)."""


import json
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact, standard_artifacts

from masktfx.scoring.job import SUMMARY_FILE, score_version

SCORED_PROPERTY = "scored"  # regions scored (-1: nothing was pushed, nothing scored)
REJECTED_PROPERTY = "rejected"
VERSION_PROPERTY = "model_version"
DATA_PROPERTY = "score_data"


class RegionScores(artifact.Artifact):
    """One row per scored region (id, group, metadata, the model's outputs, the version) in
    the files of `masktfx score`, with its summary and rejected.csv."""

    TYPE_NAME = "masktfx.RegionScores"  # KFP v2 takes custom types as namespace.Name


@component
def BatchScorer(pushed_model: InputArtifact[standard_artifacts.PushedModel],
                scores: OutputArtifact[RegionScores],
                score_data: Parameter[str],
                model_name: Parameter[str],
                output_format: Parameter[str] = "csv",
                data_fingerprint: Parameter[str] = "") -> None:
    """Scores `score_data` with the pushed version (nothing when the model was not pushed).
    `data_fingerprint` only keys the cache: new data under the same path is scored again."""
    del data_fingerprint
    scores.set_string_custom_property(DATA_PROPERTY, score_data)
    if not pushed_model.get_int_custom_property("pushed"):
        scores.set_int_custom_property(SCORED_PROPERTY, -1)
        with open(os.path.join(scores.uri, SUMMARY_FILE), "w", encoding="utf-8") as handle:
            json.dump({"data": score_data, "scored": 0, "reason": "the model was not pushed"},
                      handle)
        return
    version = int(pushed_model.get_string_custom_property("pushed_version"))
    result = score_version(score_data, pushed_model.get_string_custom_property(
        "pushed_destination"), model_name, version, scores.uri, output_format, progress=False)
    scores.set_int_custom_property(SCORED_PROPERTY, int(result.summary["scored"]))
    scores.set_int_custom_property(REJECTED_PROPERTY, int(result.summary["rejected"]))
    scores.set_int_custom_property(VERSION_PROPERTY, version)
