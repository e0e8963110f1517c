"""The MaskTFX pipeline definition, shared by the local and the Kubeflow runners.

`create_pipeline` builds components only; which runner runs them, and where, is the runners' job.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from google.protobuf import wrappers_pb2

# TFMA's config messages from their proto module: TFMA 0.52 no longer exports them at its top level
from tensorflow_model_analysis.constants import TF_GENERIC
from tensorflow_model_analysis.proto import config_pb2 as tfma_config

# TFX's modules, not its `tfx.v1` facade: importing `tfx.v1` also loads the Google Cloud AI
# Platform extension and its client libraries, seconds of every `masktfx run` for nothing used.
from tfx.components import ExampleValidator, StatisticsGen, Trainer, Transform
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy,
)
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import example_gen_pb2, pusher_pb2, range_config_pb2, trainer_pb2, transform_pb2
from tfx.types import Channel, standard_artifacts

from masktfx import features, node_ids
from masktfx.beam_args import with_long_job_runners
from masktfx.components.anomaly_gate import AnomalyGate
from masktfx.components.drift_check import DriftCheck
from masktfx.components.evaluator import SingleBaselineEvaluator
from masktfx.components.serving_check import ServingCheck
from masktfx.components.span_window import SpanWindowStrategy, split_key
from masktfx.components.streaming_example_gen import (
    StreamingImportExampleGen,
    example_gen_config,
)
from masktfx.components.versioned_pusher import VersionedPusher
from masktfx.config import TRAINER_FIELDS, TRANSFORM_FIELDS, PipelineConfig
from masktfx.modules.schema import schema_digest
from masktfx.pipeline.code_fingerprint import code_fingerprint
from masktfx.pipeline.report import TEMPLATE_FILE
from masktfx.pipeline.report_step import REPORT_FIELDS, RunReport
from masktfx.pipeline.split_plan import partition_feature_name, split_buckets
from masktfx.scoring.component import BatchScorer

TRANSFORM_MODULE = "masktfx.modules.transform"
TRAINER_MODULE = "masktfx.modules.trainer"
REPORT_STEP_MODULE = "masktfx.pipeline.report_step"
# The entry points by their installed module path, not module_file: TFX stages a module file
# only for remote runs, so the SDK workers of a portable runner (Flink, Spark, Dataflow) sent a
# local run's Transform could not import it; masktfx is installed wherever the pipeline runs
# (the image, the workers' environment). code_fingerprint keys the cache on the code instead.
PREPROCESSING_FN = f"{TRANSFORM_MODULE}.preprocessing_fn"
RUN_FN = f"{TRAINER_MODULE}.run_fn"


def schema_path(config: PipelineConfig) -> str:
    """Where the runner writes the contract schema (`modules.schema`) for ImportSchemaGen.

    Named by its content: ImportSchemaGen's cache key is the path, so a schema that changes (a
    new metadata column, a window that adds `span`) must get a new one."""
    return f"{config.pipeline_root}/schema/{schema_digest(config)}/schema.pbtxt"


def example_gen_configs(config: PipelineConfig, span: int | None = None) -> dict[str, Any]:
    """Input pattern, group-hash split and span range for ImportExampleGen: the latest span, or
    `span` (a window's earlier span, read once, by `create_span_pipeline`)."""
    if config.use_spans:
        pattern = f"{features.SPAN_DIR_PATTERN}/{features.SHARD_GLOB}"
        range_config = range_config_pb2.RangeConfig(
            rolling_range=range_config_pb2.RollingRange(num_spans=1)) if span is None else \
            range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
                start_span_number=span, end_span_number=span))
    else:
        pattern, range_config = features.SHARD_GLOB, None
    return {
        "input_config": example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern=pattern)]),
        "output_config": example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
            splits=[example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
                    for name, buckets in split_buckets(config).items()],
            # Hash of the group, so a patient, subject or site never straddles the splits
            # (`split_by: id`: of the example; pipeline/split_plan.py checks the plan first).
            partition_feature_name=partition_feature_name(config))),
        "range_config": range_config,
        "span_feature": features.SPAN_KEY if config.windowed else "",
        "unlabeled_split": config.unlabeled_split,
    }


def example_split_key(config: PipelineConfig) -> str:
    """The key our ExampleGen stamps on what it writes with this config (components/span_window)."""
    configs = example_gen_configs(config)
    return split_key(configs["output_config"], example_gen_config(
        configs["span_feature"], configs["unlabeled_split"]))


def trained_unlabeled_splits(config: PipelineConfig) -> list[str]:
    """The unlabeled split where the data holds one and the Trainer learns from it
    (pseudo-labels, or the contrastive pretraining)."""
    return [features.UNLABELED_SPLIT] if config.unlabeled_split and (
        config.unlabeled_training != "none" or config.pretraining_epochs) else []


def training_splits(config: PipelineConfig) -> list[str]:
    """What the Trainer reads as its training data (its TrainArgs' splits); empty: TFX's
    default, `train` alone (left unset, so such runs keep their cache keys)."""
    unlabeled = trained_unlabeled_splits(config)
    return [features.TRAIN_SPLIT, *unlabeled] if unlabeled else []


def interval_settings(config: PipelineConfig) -> dict[str, Any] | None:
    """What the Evaluator's bootstrap intervals and their gates need (None: no intervals)."""
    if not config.confidence_intervals:
        return None
    return {"slice_columns": list(config.slice_columns)
            + ([features.SPAN_KEY] if config.windowed else []),
            "threshold": config.decision_threshold, "seed": config.seed,
            "min_slice_auc": config.min_slice_auc,
            "min_slice_examples": config.min_slice_examples,
            "min_auc_lower_bound": config.min_auc_lower_bound}


def attribution_settings(config: PipelineConfig) -> dict[str, Any] | None:
    """What the Evaluator's attribution check and its gate need (None: no check)."""
    if not config.attribution_regions:
        return None
    return {"regions": config.attribution_regions, "min_inside": config.min_attribution_inside}


def eval_config(config: PipelineConfig) -> tfma_config.EvalConfig:
    """Metrics overall and per metadata column; the gate: accuracy floor and bounded AUC drop."""
    # The gate looks at the whole test split; per-slice figures are reported, not gated (a slice
    # of a dozen examples would make the decision a coin toss).
    overall = [tfma_config.SlicingSpec()]
    accuracy = tfma_config.MetricConfig(
        class_name="BinaryAccuracy",
        config=json.dumps({"threshold": config.decision_threshold}),
        per_slice_thresholds=[tfma_config.PerSliceMetricThreshold(
            slicing_specs=overall, threshold=tfma_config.MetricThreshold(
                value_threshold=tfma_config.GenericValueThreshold(
                    lower_bound={"value": config.min_accuracy})))])
    auc = tfma_config.MetricConfig(
        class_name="AUC",
        per_slice_thresholds=[tfma_config.PerSliceMetricThreshold(
            slicing_specs=overall, threshold=tfma_config.MetricThreshold(
                change_threshold=tfma_config.GenericChangeThreshold(
                    direction=tfma_config.MetricDirection.HIGHER_IS_BETTER,
                    absolute={"value": -config.max_auc_drop})))])
    thresholded = json.dumps({"thresholds": [config.decision_threshold]})
    metrics = [
        tfma_config.MetricConfig(class_name="ExampleCount"),
        accuracy,
        auc,
        tfma_config.MetricConfig(class_name="AUC", config=json.dumps(
            {"name": "auc_pr", "curve": "PR"})),
        tfma_config.MetricConfig(class_name="Precision", config=thresholded),
        tfma_config.MetricConfig(class_name="Recall", config=thresholded),
        tfma_config.MetricConfig(class_name="Calibration"),
        tfma_config.MetricConfig(class_name="MeanLabel"),
        tfma_config.MetricConfig(class_name="MeanPrediction"),
        tfma_config.MetricConfig(class_name="CalibrationPlot"),
        tfma_config.MetricConfig(class_name="ConfusionMatrixPlot"),
        # the confusion matrix the report shows: at the threshold serving uses
        tfma_config.MetricConfig(class_name="ConfusionMatrixAtThresholds", config=thresholded),
    ]
    return tfma_config.EvalConfig(
        # Only the metrics above. The model's own compiled Keras metrics (TFMA's "default
        # metrics") would add a second `auc` beside the gated one and cost more than all the
        # others together: TFMA re-traces their update_state for every batch.
        options=tfma_config.Options(include_default_metrics=wrappers_pb2.BoolValue(value=False)),
        # No `preprocessing_function_names`: the slices are raw metadata columns, and running
        # `transform_features` beside the serving signature decoded every region twice.
        # A generic SavedModel, named rather than sniffed: without a type TFMA loads each model
        # as a Keras model once just to learn that it is one, then again on every worker, and a
        # Keras load restores every layer's functions that the serving signature never calls.
        model_specs=[tfma_config.ModelSpec(signature_name=features.SERVING_SIGNATURE,
                                    model_type=TF_GENERIC,
                                    label_key=features.LABEL_KEY,
                                    prediction_key=features.PROBABILITY_OUTPUT)],
        slicing_specs=[tfma_config.SlicingSpec()] + [
            tfma_config.SlicingSpec(feature_keys=[column]) for column in config.slice_columns] + (
            [tfma_config.SlicingSpec(feature_keys=[features.SPAN_KEY])] if config.windowed else []),
        metrics_specs=[tfma_config.MetricsSpec(metrics=metrics)])


def create_pipeline(config: PipelineConfig, data_root: Any = None,
                    train_args: Any = None, beam_pipeline_args: list[str] | None = None
                    ) -> Pipeline:
    """The whole chain, ingest shards to pushed model.

    `data_root` and `train_args` default to the config; the Kubeflow runner passes runtime
    parameters there so a scheduled run can change them. `beam_pipeline_args` default to the
    config's; the local runner passes a runner that reads them from the environment instead
    (masktfx/beam_runner.py), which keeps them out of TFX's cache keys.
    """
    config.validate()
    if config.backbone:  # checked now rather than when the Trainer starts, after Transform
        from masktfx.modules.model import check_backbone

        check_backbone(config)
    example_gen, schema_gen, statistics_gen, example_validator, anomaly_gate = data_components(
        config, data_root)
    examples = example_gen.outputs["examples"]
    span_window = None
    if config.windowed:
        # ExampleGen reads the latest span; the window's earlier ones come from MLMD (each was
        # read once, by an earlier run or by create_span_pipeline).
        span_window = Resolver(
            strategy_class=SpanWindowStrategy,
            config={"num_spans": config.span_window, "split_key": example_split_key(config)},
            examples=Channel(type=standard_artifacts.Examples,
                             producer_component_id=node_ids.EXAMPLE_GEN, output_key="examples"),
        ).with_id(node_ids.SPAN_WINDOW)
        span_window.add_upstream_node(example_gen)
        examples = span_window.outputs["examples"]
    transform = Transform(
        examples=examples, schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        # The test split is never transformed: the Trainer cannot read what does not exist, and
        # the Evaluator and the ServingCheck read raw examples through the serving signature.
        splits_config=transform_pb2.SplitsConfig(
            analyze=[features.TRAIN_SPLIT],
            transform=[features.TRAIN_SPLIT, features.VALIDATION_SPLIT,
                       *trained_unlabeled_splits(config)]),
        custom_config=config.component_config(TRANSFORM_FIELDS,
                                              code_fingerprint([TRANSFORM_MODULE])),
        # StatisticsGen already describes the raw data, and nothing reads statistics of the
        # transformed tensors; computing both would double Transform's time at scale.
        disable_statistics=True).with_id(node_ids.TRANSFORM)
    # Transform must not run on data the validator flagged.
    transform.add_upstream_node(anomaly_gate)
    model_base_dir = os.path.join(config.resolved_serving_dir, config.model_name)
    # the span against the data the newest pushed version was trained on
    drift_check = DriftCheck(
        examples=example_gen.outputs["examples"], model_base_dir=model_base_dir,
        threshold=config.drift_threshold, action=config.drift_action,
        min_estimated_auc=config.min_estimated_auc,
    ).with_id(node_ids.DRIFT_CHECK) if config.drift_threshold else None
    if drift_check:
        # data that breaks the contract is reported as such, not described
        drift_check.add_upstream_node(anomaly_gate)
        if config.drift_action == "stop":
            transform.add_upstream_node(drift_check)
    trainer = Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(num_steps=config.train_steps,
                                         splits=training_splits(config))
        if train_args is None else train_args,
        # `validation` for early stopping, the operating point, calibration and the OOD threshold
        eval_args=trainer_pb2.EvalArgs(num_steps=0, splits=[features.VALIDATION_SPLIT]),
        custom_config=config.component_config(TRAINER_FIELDS, code_fingerprint([TRAINER_MODULE]))
    ).with_id(node_ids.TRAINER)
    model_resolver = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id(node_ids.MODEL_RESOLVER)
    # TFX's Evaluator; evaluates once when a re-run resolves the model as its own baseline.
    evaluator = SingleBaselineEvaluator(
        examples=examples,
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config(config),
        intervals=interval_settings(config),
        attribution=attribution_settings(config)).with_id(node_ids.EVALUATOR)
    # the candidate served in a fresh server process, through REST and gRPC, before the push
    serving_check = ServingCheck(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        examples=examples, model_name=config.model_name,
        latency_budget_ms=config.serving_check_latency_ms,
    ).with_id(node_ids.SERVING_CHECK) if config.serving_check else None
    pusher = VersionedPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=serving_check.outputs["blessing"] if serving_check else None,
        examples=examples,  # the warmup requests are built from its eval regions
        region_descriptors=bool(config.drift_threshold),  # what later drift checks compare with
        evaluation=evaluator.outputs["evaluation"],  # the test figures later estimates sit beside
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=model_base_dir)),
    ).with_id(node_ids.PUSHER)
    # the regions of `score_data` scored with the version just pushed
    scorer = BatchScorer(pushed_model=pusher.outputs["pushed_model"],
                         score_data=config.score_data, model_name=config.model_name,
                         output_format=config.score_format,
                         data_fingerprint=data_fingerprint(config.score_data),
                         ).with_id(node_ids.SCORER) if config.score_data else None
    # the run's report page, blessed or not, from the artifacts it shows
    report = RunReport(
        config=config.component_config(REPORT_FIELDS),
        code_fingerprint=code_fingerprint([REPORT_STEP_MODULE], [TEMPLATE_FILE]),
        examples=example_gen.outputs["examples"], trained_examples=examples,
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"],
        transform_graph=transform.outputs["transform_graph"], model=trainer.outputs["model"],
        model_run=trainer.outputs["model_run"], evaluation=evaluator.outputs["evaluation"],
        blessing=evaluator.outputs["blessing"], baseline_model=model_resolver.outputs["model"],
        drift_report=drift_check.outputs["drift_report"] if drift_check else None,
        infra_blessing=serving_check.outputs["blessing"] if serving_check else None,
        pushed_model=pusher.outputs["pushed_model"]).with_id(node_ids.REPORT)
    return Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[example_gen, schema_gen, statistics_gen, example_validator, anomaly_gate,
                    *([drift_check] if drift_check else []),
                    *([span_window] if span_window else []), transform,
                    trainer, model_resolver, evaluator,
                    *([serving_check] if serving_check else []), pusher,
                    *([scorer] if scorer else []), report],
        enable_cache=True,
        metadata_connection_config=None,
        beam_pipeline_args=pipeline_beam_args(config, beam_pipeline_args))


def pipeline_beam_args(config: PipelineConfig, given: list[str] | None) -> list[str]:
    """The Beam args of the pipeline's components: `given`, or the config's with a portable
    runner named by masktfx's subclass of it."""
    return with_long_job_runners(config.beam_pipeline_args) if given is None else given


def data_fingerprint(path: str) -> str:
    """The names, sizes and modification times of the file at `path` or the files under it:
    the scoring step's cache key, so new data under the same path is scored again. '' where
    the path is not on this machine (a Kubeflow pod's volume, say)."""
    if not os.path.exists(path):
        return ""
    digest = hashlib.sha256()
    found = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    for name in found:
        info = os.stat(name)
        digest.update(f"{os.path.relpath(name, path)}\0{info.st_size}\0{info.st_mtime_ns}\n"
                      .encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def data_components(config: PipelineConfig, data_root: Any = None, span: int | None = None
                    ) -> tuple[Any, ...]:
    """ImportExampleGen (the latest span, or `span`), the contract schema, and the check of the
    span against it: StatisticsGen, ExampleValidator and the gate that stops on anomalies."""
    # ImportExampleGen's node id, driver and outputs; its executor skips the in-memory shuffle.
    example_gen = StreamingImportExampleGen(
        input_base=data_root if data_root is not None else config.data_root,
        **example_gen_configs(config, span)).with_id(node_ids.EXAMPLE_GEN)
    schema_gen = ImportSchemaGen(schema_file=schema_path(config)).with_id(node_ids.SCHEMA_GEN)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"],
                                   schema=schema_gen.outputs["schema"]
                                   ).with_id(node_ids.STATISTICS_GEN)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    ).with_id(node_ids.EXAMPLE_VALIDATOR)
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"]
                               ).with_id(node_ids.ANOMALY_GATE)
    return example_gen, schema_gen, statistics_gen, example_validator, anomaly_gate


def create_span_pipeline(config: PipelineConfig, span: int,
                         beam_pipeline_args: list[str] | None = None) -> Pipeline:
    """Reads one earlier span of a window and checks it against the contract, under the same
    pipeline and node names, so the window's Resolver finds it in MLMD."""
    config.validate()
    return Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=list(data_components(config, span=span)),
        enable_cache=True,
        metadata_connection_config=None,
        beam_pipeline_args=pipeline_beam_args(config, beam_pipeline_args))
