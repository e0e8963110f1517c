"""TFX's Evaluator, which evaluates a model once when it comes back as its own baseline.

After a blessed run, a re-run with no new data serves Trainer and everything before it from the
cache, and the Resolver returns that same model as the latest blessed one: TFX's Evaluator would
then run TFMA over the eval split twice, once as `candidate` and once as `baseline`, to find a
difference of zero. Here that case is evaluated once, without a baseline. The verdict is the same:
a model never drops against itself, so only the value thresholds (the accuracy floor) can fail,
and those are checked as before. The blessing still records the baseline it was resolved against.

A single-model evaluation is a function of the model, the examples, the splits and the eval
config, so each one records those in `EVALUATION_RECORD` beside TFMA's files. When the own-baseline
case finds an earlier evaluation with the same record (typically the run that blessed the model,
when it had no baseline yet), it copies that evaluation instead of running TFMA again and blesses
from its validation result. Every other case is TFX's Evaluator unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.proto import config_pb2 as tfma_config
from tfx import types
from tfx.components.evaluator import constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.evaluator.component import Evaluator
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import io_utils, json_utils, path_utils

from masktfx import attribution, features, intervals
from masktfx.components.earlier_outputs import find_earlier

MODEL_KEY = standard_component_specs.MODEL_KEY
BASELINE_KEY = standard_component_specs.BASELINE_MODEL_KEY
EVALUATION_RECORD = "masktfx-evaluation.json"


def is_own_baseline(input_dict: dict[str, list[types.Artifact]]) -> bool:
    """True when the baseline model is the very artifact being evaluated."""
    models, baselines = input_dict.get(MODEL_KEY) or [], input_dict.get(BASELINE_KEY) or []
    if len(models) != 1 or len(baselines) != 1:
        return False
    model, baseline = models[0], baselines[0]
    if model.id and baseline.id:
        return model.id == baseline.id
    return model.uri == baseline.uri


def evaluation_record(input_dict: dict[str, list[types.Artifact]],
                      exec_properties: dict[str, Any]) -> dict[str, Any]:
    """What a single-model evaluation depends on: model, examples, splits, eval config, and the
    settings of the intervals and the attribution check written beside it."""
    return {"model": [artifact.uri for artifact in input_dict[MODEL_KEY]],
            "examples": sorted(artifact.uri for artifact in
                               input_dict[standard_component_specs.EXAMPLES_KEY]),
            "example_splits": exec_properties.get(standard_component_specs.EXAMPLE_SPLITS_KEY),
            "eval_config": exec_properties.get(standard_component_specs.EVAL_CONFIG_KEY),
            "intervals": exec_properties.get(INTERVALS_KEY),
            "attribution": exec_properties.get(ATTRIBUTION_KEY)}


def find_evaluation(output_uri: str, record: dict[str, Any]) -> str | None:
    """An earlier evaluation, beside `output_uri`, made with exactly `record`.

    Any match will do: the same model on the same examples with the same config gives the
    same evaluation.
    """
    return find_earlier(output_uri, EVALUATION_RECORD, record)


# Metrics that count labels, and the key of their config that holds the threshold.
CANDIDATE = "candidate"  # TFX's Evaluator's name for the model under test beside a baseline


def evaluated_models(uri: str) -> dict[str, str]:
    """Model name -> location, from the eval_config.json TFMA writes beside its results."""
    with fileio.open(os.path.join(uri, "eval_config.json")) as handle:
        return json.loads(handle.read()).get("modelLocations", {})


def load_candidate_result(uri: str) -> tfma.EvalResult:
    """TFMA's metrics and plots of the model under test, from an Evaluator's output: against
    a different baseline TFX names the two models `candidate` and `baseline`; a model that is
    its own baseline (or has none) is evaluated once, under no name. Every reader of an
    evaluation reads it through here, so all of them show the same model's figures."""
    compared = CANDIDATE in evaluated_models(uri)
    return tfma.load_eval_result(uri, model_name=CANDIDATE if compared else None)


_THRESHOLD_KEYS = {"BinaryAccuracy": "threshold", "Precision": "thresholds",
                   "Recall": "thresholds", "ConfusionMatrixAtThresholds": "thresholds"}


def read_operating_point(saved_model_dir: str) -> dict[str, Any]:
    """The threshold a SavedModel's `label` output uses and how it was chosen ({} for a model
    without the file)."""
    path = os.path.join(saved_model_dir, features.OPERATING_POINT_FILE)
    if not fileio.exists(path):
        return {}
    return json.loads(io_utils.read_string_file(path))


def served_threshold(model: types.Artifact) -> float | None:
    """The threshold the candidate's `label` output uses (its operating point file), if any."""
    point = read_operating_point(path_utils.serving_model_path(model.uri))
    return float(point["threshold"]) if point else None


def at_threshold(eval_config_json: str, threshold: float) -> str:
    """The eval config with every label-counting metric at `threshold`, the one serving uses."""
    from google.protobuf import json_format

    config = json_format.Parse(eval_config_json, tfma_config.EvalConfig())
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            key = _THRESHOLD_KEYS.get(metric.class_name)
            if key is None:
                continue
            settings = json.loads(metric.config or "{}")
            settings[key] = threshold if key == "threshold" else [threshold]
            metric.config = json.dumps(settings)
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


class Executor(evaluator_executor.Executor):
    """TFX's Evaluator executor; one TFMA pass, or none, when the model is its own baseline.
    Label-counting metrics (accuracy, precision, recall, the confusion matrix) are computed at
    the threshold the candidate serves with."""

    def Do(self, input_dict: dict[str, list[types.Artifact]],  # noqa: N802  (TFX's name)
           output_dict: dict[str, list[types.Artifact]], exec_properties: dict[str, Any]
           ) -> None:
        threshold = served_threshold(input_dict[MODEL_KEY][0])
        if threshold is not None:
            exec_properties = {**exec_properties, standard_component_specs.EVAL_CONFIG_KEY:
                               at_threshold(exec_properties[
                                   standard_component_specs.EVAL_CONFIG_KEY], threshold)}
        own_baseline = is_own_baseline(input_dict)
        if input_dict.get(BASELINE_KEY) and not own_baseline:
            super().Do(input_dict, output_dict, exec_properties)  # candidate against baseline
            self._maybe_intervals(input_dict, output_dict, exec_properties, threshold)
            self._maybe_attribution(input_dict, output_dict, exec_properties)
            return
        single = {key: value for key, value in input_dict.items() if key != BASELINE_KEY}
        output_uri = artifact_utils.get_single_uri(
            output_dict[standard_component_specs.EVALUATION_KEY])
        record = evaluation_record(single, exec_properties)
        earlier = find_evaluation(output_uri, record) if own_baseline else None
        if earlier and output_dict.get(standard_component_specs.BLESSING_KEY):
            logging.info("Model %s was evaluated on these examples with this config in %s; "
                         "reusing that evaluation.", record["model"], earlier)
            io_utils.copy_dir(earlier, output_uri,
                              deny_regex_patterns=[re.escape(EVALUATION_RECORD) + "$"])
            self._bless_from_validation(single, output_dict, exec_properties, output_uri)
            record["reused_from"] = earlier
        else:
            super().Do(single, output_dict, exec_properties)
        if own_baseline:
            baseline = input_dict[BASELINE_KEY][0]
            for blessing in output_dict.get(standard_component_specs.BLESSING_KEY, []):
                blessing.set_string_custom_property(
                    constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline.uri)
                blessing.set_int_custom_property(
                    constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline.id)
        self._maybe_intervals(single, output_dict, exec_properties, threshold)
        self._maybe_attribution(single, output_dict, exec_properties)
        io_utils.write_string_file(os.path.join(output_uri, EVALUATION_RECORD),
                                   json.dumps(record, indent=1))

    def _maybe_intervals(self, input_dict: dict[str, list[types.Artifact]],
                         output_dict: dict[str, list[types.Artifact]],
                         exec_properties: dict[str, Any], served: float | None) -> None:
        settings = exec_properties.get(INTERVALS_KEY)
        if settings:
            self._intervals(input_dict, output_dict, json.loads(settings), served,
                            artifact_utils.get_single_uri(
                                output_dict[standard_component_specs.EVALUATION_KEY]))

    @staticmethod
    def _intervals(input_dict: dict[str, list[types.Artifact]],
                   output_dict: dict[str, list[types.Artifact]], settings: dict[str, Any],
                   served: float | None, output_uri: str) -> None:
        """Cluster-bootstrap intervals of the candidate on the test split, beside TFMA's files
        (copied with a reused evaluation), then the gates on their lower bounds."""
        path = os.path.join(output_uri, intervals.INTERVALS_FILE)
        if fileio.exists(path):
            found = json.loads(io_utils.read_string_file(path))
        else:
            threshold = settings["threshold"] if served is None else served
            found_predictions = split_predictions(
                input_dict[MODEL_KEY][0],
                input_dict[standard_component_specs.EXAMPLES_KEY], settings["slice_columns"])
            found = intervals.intervals(
                found_predictions.labels, found_predictions.scores, found_predictions.slices,
                threshold, groups=found_predictions.groups, seed=int(settings["seed"]))
            found["risk_coverage"] = risk_coverage(
                found_predictions.labels, found_predictions.scores, found_predictions.ood_scores)
            io_utils.write_string_file(path, json.dumps(found, indent=1))
        failures = intervals.gate_failures(found, float(settings["min_slice_auc"]),
                                           int(settings["min_slice_examples"]),
                                           float(settings["min_auc_lower_bound"]))
        if failures:
            logging.info("Not blessed by the interval gates: %s", "; ".join(failures))
            refuse_blessing(output_dict, INTERVAL_GATE_PROPERTY, failures)

    def _maybe_attribution(self, input_dict: dict[str, list[types.Artifact]],
                           output_dict: dict[str, list[types.Artifact]],
                           exec_properties: dict[str, Any]) -> None:
        """Where the candidate looked on the eval regions (its `attribution` signature), beside
        TFMA's files (copied with a reused evaluation); then the gate on the median share."""
        settings = json.loads(exec_properties.get(ATTRIBUTION_KEY) or "{}")
        if not settings:
            return
        output_uri = artifact_utils.get_single_uri(
            output_dict[standard_component_specs.EVALUATION_KEY])
        path = os.path.join(output_uri, attribution.ATTRIBUTION_FILE)
        if fileio.exists(path):
            found = json.loads(io_utils.read_string_file(path))
        else:
            found = attribution.attribute_eval_regions(
                path_utils.serving_model_path(input_dict[MODEL_KEY][0].uri),
                [artifact.uri for artifact in input_dict[standard_component_specs.EXAMPLES_KEY]],
                int(settings["regions"]), output_uri)
        failure = attribution.gate_failure(found, float(settings["min_inside"]))
        if failure:
            logging.info("Not blessed by the attribution gate: %s", failure)
            refuse_blessing(output_dict, ATTRIBUTION_GATE_PROPERTY, [failure])

    @staticmethod
    def _bless_from_validation(input_dict: dict[str, list[types.Artifact]],
                               output_dict: dict[str, list[types.Artifact]],
                               exec_properties: dict[str, Any], output_uri: str) -> None:
        """The blessing TFX 1.16's Evaluator writes after TFMA, from the validation result.

        A copy of the tail of TFX's `Executor.Do`, which has no method of its own to call:
        re-check it against TFX's when TFX is upgraded.
        """
        blessing = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.BLESSING_KEY])
        model = input_dict[MODEL_KEY][0]
        blessing.set_string_custom_property(
            constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
        blessing.set_int_custom_property(
            constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
        if "current_component_id" in exec_properties:
            blessing.set_string_custom_property(
                "component_id", exec_properties["current_component_id"])
        blessed = tfma.load_validation_result(output_uri).validation_ok
        io_utils.write_string_file(os.path.join(blessing.uri, constants.BLESSED_FILE_NAME
                                                if blessed else constants.NOT_BLESSED_FILE_NAME),
                                   "")
        blessing.set_int_custom_property(
            constants.ARTIFACT_PROPERTY_BLESSED_KEY,
            constants.BLESSED_VALUE if blessed else constants.NOT_BLESSED_VALUE)


def refuse_blessing(output_dict: dict[str, list[types.Artifact]], reason_property: str,
                    reasons: list[str]) -> None:
    """Turn the blessing TFMA's validation gave into NOT_BLESSED, recording why under
    `reason_property` (the summary lists the reasons)."""
    for blessing in output_dict.get(standard_component_specs.BLESSING_KEY, []):
        blessing.set_string_custom_property(reason_property, "; ".join(reasons))
        blessed_file = os.path.join(blessing.uri, constants.BLESSED_FILE_NAME)
        if fileio.exists(blessed_file):
            fileio.remove(blessed_file)
        io_utils.write_string_file(
            os.path.join(blessing.uri, constants.NOT_BLESSED_FILE_NAME), "")
        blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                         constants.NOT_BLESSED_VALUE)


@dataclass
class SplitPredictions:
    labels: np.ndarray
    scores: np.ndarray  # the candidate's probability
    ood_scores: np.ndarray | None  # its out-of-distribution score (None: a model without one)
    groups: list[str]
    slices: dict[str, list[str]]


def split_predictions(model: types.Artifact, examples: list[types.Artifact],
                      slice_columns: list[str]) -> SplitPredictions:
    """Labels, groups, the candidate's answers (serving_default, as served) and each slice
    column's values, over the test split of every examples artifact."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path_utils.serving_model_path(model.uri))
    serve = loaded.signatures[features.SERVING_SIGNATURE]
    files = sorted(path for artifact in examples for path in fileio.glob(
        os.path.join(artifact.uri, f"Split-{features.TEST_SPLIT}", "*")))
    labels, scores, ood, groups = [], [], [], []
    slices: dict[str, list[str]] = {column: [] for column in slice_columns}
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256)
    for batch in records:
        answers = serve(examples=batch)
        scores.append(answers[features.PROBABILITY_OUTPUT].numpy().reshape(-1))
        if features.OOD_SCORE_OUTPUT in answers:
            ood.append(answers[features.OOD_SCORE_OUTPUT].numpy().reshape(-1))
        for serialized in batch.numpy():
            feature = tf.train.Example.FromString(serialized).features.feature
            labels.append(int(feature[features.LABEL_KEY].int64_list.value[0]))
            groups.append(_first_value(feature[features.GROUP_KEY]))
            for column in slice_columns:
                slices[column].append(_first_value(feature[column]))
    return SplitPredictions(np.array(labels), np.concatenate(scores) if scores else np.zeros(0),
                           np.concatenate(ood) if ood else None, groups, slices)


def _first_value(values: Any) -> str:
    found = values.bytes_list.value or values.int64_list.value or values.float_list.value or [""]
    value = found[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


RISK_COVERAGE_POINTS = 20


def risk_coverage(labels: np.ndarray, scores: np.ndarray, ood_scores: np.ndarray | None
                  ) -> list[dict[str, float]]:
    """The test split's AUC of the regions the OOD score accepts, against the share accepted:
    the regions most like the training data first ([] for a model without an OOD score)."""
    if ood_scores is None or not len(labels):
        return []
    order = np.argsort(ood_scores, kind="stable")
    curve = []
    for step in range(1, RISK_COVERAGE_POINTS + 1):
        kept = order[:max(1, int(round(len(order) * step / RISK_COVERAGE_POINTS)))]
        curve.append({"coverage": len(kept) / len(order),
                      "auc": intervals.auc(labels[kept], scores[kept]),
                      "ood_threshold": float(ood_scores[kept[-1]])})
    return curve


INTERVALS_KEY = "intervals"  # JSON: interval_settings() of pipeline/pipeline.py
INTERVAL_GATE_PROPERTY = "interval_gate"  # on the blessing: why the interval gates refused it
ATTRIBUTION_KEY = "attribution"  # JSON: attribution_settings() of pipeline/pipeline.py
ATTRIBUTION_GATE_PROPERTY = "attribution_gate"  # on the blessing: why the attribution gate refused


class SingleBaselineEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    """TFX's EvaluatorSpec, plus the settings of the bootstrap intervals, the attribution check
    and their gates."""

    PARAMETERS = {**standard_component_specs.EvaluatorSpec.PARAMETERS,
                  INTERVALS_KEY: ExecutionParameter(type=str, optional=True),
                  ATTRIBUTION_KEY: ExecutionParameter(type=str, optional=True)}


class SingleBaselineEvaluator(Evaluator):
    """Evaluator (spec, driver, outputs) with the executor above."""

    SPEC_CLASS = SingleBaselineEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel,
                 baseline_model: types.BaseChannel, eval_config: tfma_config.EvalConfig,
                 intervals: dict[str, Any] | None = None,
                 attribution: dict[str, Any] | None = None):
        spec = SingleBaselineEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model,
            # the Evaluator reads the test split only: nothing before it has seen that
            eval_config=eval_config, example_splits=json_utils.dumps([features.TEST_SPLIT]),
            fairness_indicator_thresholds=json_utils.dumps(None),
            intervals=json.dumps(intervals) if intervals else None,
            attribution=json.dumps(attribution) if attribution else None,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing))
        base_component.BaseComponent.__init__(self, spec=spec)
