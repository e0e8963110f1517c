"""What a run did, read back from MLMD: examples per split, metrics, the blessing and the push.

Used by `masktfx run` for its closing summary (and by the reports).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.io import fileio
from tfx.utils import path_utils

from masktfx import features, node_ids
from masktfx.attribution import ATTRIBUTION_FILE
from masktfx.components.evaluator import (
    ATTRIBUTION_GATE_PROPERTY,
    INTERVAL_GATE_PROPERTY,
    load_candidate_result,
    read_operating_point,
)
from masktfx.components.serving_check import REASON_PROPERTY
from masktfx.components.versioned_pusher import NEW_VERSION_PROPERTY
from masktfx.config import PipelineConfig
from masktfx.drift import DRIFT_PROPERTY, ESTIMATE_PROPERTY
from masktfx.pipeline.metadata_connection import open_store

_STATE_NAMES = {value: name for name, value in
                metadata_store_pb2.Execution.State.items()}


@dataclass
class RunSummary:
    run_id: str
    started_ms: int = 0  # when the run began, ms since the epoch (MLMD's clock)
    spans: list[int] = field(default_factory=list)  # data spans ImportExampleGen read
    trained_spans: list[int] = field(default_factory=list)  # spans Transform got (the window)
    components: dict[str, str] = field(default_factory=dict)  # node id -> COMPLETE/CACHED/...
    examples: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    blessed: bool | None = None
    blessing_reasons: list[str] = field(default_factory=list)
    pushed: bool = False
    pushed_path: str | None = None
    pushed_version: str | None = None
    pushed_new: bool = False  # False when that version already served this model
    operating_point: dict[str, Any] = field(default_factory=dict)  # the served threshold
    served_ok: bool | None = None  # the serving check's verdict (None: no check in this run)
    serving_check: str = ""  # what it checked, or why it failed
    drift: str = ""  # the region descriptors that moved against the served model's data
    estimate: str = ""  # the served model's estimated performance on the span (no labels)
    attribution: dict[str, Any] = field(default_factory=dict)  # the Evaluator's attribution file
    # what the Trainer did with the unlabeled regions (its training summary's `unlabeled`)
    unlabeled: dict[str, Any] = field(default_factory=dict)
    # the Trainer's contrastive pretraining (its training summary's `pretraining`; {}: none)
    pretraining: dict[str, Any] = field(default_factory=dict)
    report_path: str = ""  # the page the run's RunReport step wrote

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def latest_run_id(store: metadata_store.MetadataStore, pipeline_name: str) -> str | None:
    runs = list_run_ids(store, pipeline_name)
    return runs[-1] if runs else None


def node_id(store: metadata_store.MetadataStore, execution_id: int) -> str:
    for context in store.get_contexts_by_execution(execution_id):
        if context.type == "node" or store.get_context_types_by_id(
                [context.type_id])[0].name == "node":
            return context.name.split(".", 1)[-1]
    return str(execution_id)


def _artifacts_by_key(store: metadata_store.MetadataStore, execution_id: int,
                      kinds: tuple[int, ...]) -> dict[str, list[metadata_store_pb2.Artifact]]:
    events = [e for e in store.get_events_by_execution_ids([execution_id]) if e.type in kinds]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    by_key: dict[str, list[metadata_store_pb2.Artifact]] = {}
    for event in events:
        # TFX records an artifact bound to several keys of one execution as ONE event whose
        # path lists every key (the Evaluator's `model` and `baseline_model` when a cached
        # re-run resolves its own model as the baseline), so read every step, not the first.
        keys = [step.key for step in event.path.steps if step.WhichOneof("value") == "key"]
        for key in keys or [""]:
            by_key.setdefault(key, []).append(artifacts[event.artifact_id])
    return by_key


def execution_outputs(store: metadata_store.MetadataStore, execution_id: int
                      ) -> dict[str, list[metadata_store_pb2.Artifact]]:
    return _artifacts_by_key(store, execution_id, (metadata_store_pb2.Event.OUTPUT,
                                                   metadata_store_pb2.Event.DECLARED_OUTPUT))


def execution_inputs(store: metadata_store.MetadataStore, execution_id: int
                     ) -> dict[str, list[metadata_store_pb2.Artifact]]:
    return _artifacts_by_key(store, execution_id, (metadata_store_pb2.Event.INPUT,
                                                   metadata_store_pb2.Event.DECLARED_INPUT))


@dataclass(frozen=True)
class NodeExecution:
    """One component's execution in a run, with its artifacts by key."""

    node: str
    state: str  # COMPLETE, CACHED, FAILED, RUNNING, ...
    inputs: dict[str, list[metadata_store_pb2.Artifact]]
    outputs: dict[str, list[metadata_store_pb2.Artifact]]


@dataclass(frozen=True)
class RunRecord:
    """A run as MLMD recorded it; the one walk over its executions that the summary, `runs`
    and the report read from."""

    run_id: str
    started_ms: int
    nodes: dict[str, NodeExecution]

    def outputs(self, node: str, key: str) -> list[metadata_store_pb2.Artifact]:
        found = self.nodes.get(node)
        return found.outputs.get(key, []) if found else []

    def inputs(self, node: str, key: str) -> list[metadata_store_pb2.Artifact]:
        found = self.nodes.get(node)
        return found.inputs.get(key, []) if found else []


def read_run(config: PipelineConfig, run_id: str | None = None,
             store: metadata_store.MetadataStore | None = None) -> RunRecord:
    """One run (the latest by default) from the workdir's MLMD store."""
    store = store or open_store(config)
    run_id = run_id or latest_run_id(store, config.pipeline_name)
    if run_id is None:
        raise LookupError(f"{config.metadata_location.describe()}: no pipeline run recorded")
    context = store.get_context_by_type_and_name("pipeline_run", run_id)
    if context is None:
        raise LookupError(f"{config.metadata_location.describe()}: no pipeline run {run_id!r}")
    nodes = {}
    for execution in store.get_executions_by_context(context.id):
        node = node_id(store, execution.id)
        nodes[node] = NodeExecution(
            node, _STATE_NAMES.get(execution.last_known_state, "UNKNOWN"),
            execution_inputs(store, execution.id), execution_outputs(store, execution.id))
    return RunRecord(run_id, context.create_time_since_epoch, nodes)


def latest_node_state(config: PipelineConfig, node: str) -> str:
    """The state of `node`'s execution in the newest run (the one running now)."""
    try:
        found = read_run(config).nodes.get(node)
    except LookupError:
        return "UNKNOWN"
    return found.state if found else "UNKNOWN"


def summarize_record(record: RunRecord) -> RunSummary:
    summary = RunSummary(run_id=record.run_id, started_ms=record.started_ms,
                         components={node: e.state for node, e in record.nodes.items()})
    summary.spans = sorted({artifact_span(a)
                            for a in record.outputs(node_ids.EXAMPLE_GEN, "examples")})
    summary.trained_spans = sorted({artifact_span(a)
                                    for a in record.inputs(node_ids.TRANSFORM, "examples")})
    outputs = {node: e.outputs for node, e in record.nodes.items()}
    _read_statistics(outputs.get(node_ids.STATISTICS_GEN, {}), summary)
    _read_evaluation(outputs.get(node_ids.EVALUATOR, {}), summary)
    for model in outputs.get(node_ids.TRAINER, {}).get("model", []):
        summary.operating_point = operating_point_of(path_utils.serving_model_path(model.uri))
    for model_run in outputs.get(node_ids.TRAINER, {}).get("model_run", []):
        found = read_json_file(os.path.join(model_run.uri, features.TRAINING_SUMMARY))
        summary.unlabeled = (found or {}).get("unlabeled") or {}
        summary.pretraining = (found or {}).get("pretraining") or {}
    _read_serving_check(outputs.get(node_ids.SERVING_CHECK, {}), summary)
    for report in outputs.get(node_ids.DRIFT_CHECK, {}).get("drift_report", []):
        if DRIFT_PROPERTY in report.custom_properties:
            summary.drift = report.custom_properties[DRIFT_PROPERTY].string_value
        if ESTIMATE_PROPERTY in report.custom_properties:
            summary.estimate = report.custom_properties[ESTIMATE_PROPERTY].string_value
    _read_push(outputs.get(node_ids.PUSHER, {}), summary)
    for page in outputs.get(node_ids.REPORT, {}).get("report", []):
        summary.report_path = page.uri
    return summary


def summarize_run(config: PipelineConfig, run_id: str | None = None) -> RunSummary:
    """Read one run (the latest by default) from the workdir's MLMD store."""
    return summarize_record(read_run(config, run_id))


def artifact_span(artifact: metadata_store_pb2.Artifact) -> int:
    for properties in (artifact.custom_properties, artifact.properties):
        if "span" in properties:
            return int(properties["span"].int_value)
    return 0


def list_run_ids(store: metadata_store.MetadataStore, pipeline_name: str) -> list[str]:
    """Every recorded run of the pipeline, oldest first."""
    runs = store.get_contexts_by_type("pipeline_run")
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline is not None:
        children = {c.id for c in store.get_children_contexts_by_context(pipeline.id)}
        runs = [c for c in runs if c.id in children] or runs
    return [c.name for c in sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id))]


def list_runs(config: PipelineConfig) -> list[RunSummary]:
    store = open_store(config)
    return [summarize_record(read_run(config, run_id, store))
            for run_id in list_run_ids(store, config.pipeline_name)]


def format_runs(runs: list[RunSummary]) -> str:
    """A fixed-width table, one run per line, oldest first."""
    import datetime

    header = ("run", "started (UTC)", "span", *features.SPLITS, "test auc", "test accuracy",
              "blessed", "pushed")
    rows = [header]
    for run in runs:
        started = datetime.datetime.fromtimestamp(run.started_ms / 1000, datetime.timezone.utc)
        rows.append((
            run.run_id, started.strftime("%Y-%m-%d %H:%M:%S"),
            ",".join(str(s) for s in run.spans) or "-",
            *(str(run.examples.get(split, "-")) for split in features.SPLITS),
            f"{run.metrics['auc']:.4f}" if "auc" in run.metrics else "-",
            f"{run.metrics['binary_accuracy']:.4f}" if "binary_accuracy" in run.metrics else "-",
            {None: "-", True: "yes", False: "no"}[run.blessed],
            run.pushed_version if run.pushed else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def read_json_file(path: str) -> Any:
    """A JSON file an artifact holds (None when it has none), wherever the pipeline root is:
    a run on Kubeflow may keep its artifacts on an object store."""
    if not fileio.exists(path):
        return None
    with fileio.open(path, "r") as handle:
        return json.loads(handle.read())


def split_statistics(statistics_uri: str) -> dict[str, Any]:
    """TFDV statistics per split of one ExampleStatistics artifact (Split-NAME/FeatureStats.pb)."""
    import tensorflow_data_validation as tfdv

    found = {}
    for path in sorted(fileio.glob(os.path.join(statistics_uri, "Split-*", "FeatureStats.pb"))):
        split = os.path.basename(os.path.dirname(path))[len("Split-"):]
        found[split] = tfdv.load_stats_binary(path).datasets[0]
    return found


def _read_statistics(outputs: dict[str, list], summary: RunSummary) -> None:
    for artifact in outputs.get("statistics", []):
        for split, stats in split_statistics(artifact.uri).items():
            summary.examples[split] = int(stats.num_examples)


def _read_evaluation(outputs: dict[str, list], summary: RunSummary) -> None:
    import tensorflow_model_analysis as tfma

    for artifact in outputs.get("evaluation", []):
        summary.attribution = read_json_file(
            os.path.join(artifact.uri, ATTRIBUTION_FILE)) or summary.attribution
        result = load_candidate_result(artifact.uri)
        for slice_key, metrics in result.slicing_metrics:
            if slice_key:
                continue
            for name, value in metrics.get("", {}).get("", {}).items():
                if "doubleValue" in value:
                    summary.metrics[name] = float(value["doubleValue"])
        validation = tfma.load_validation_result(artifact.uri)
        summary.blessed = bool(validation.validation_ok)
        for per_slice in validation.metric_validations_per_slice:
            where = _slice_name(per_slice.slice_key)
            for failure in per_slice.failures:
                summary.blessing_reasons.append(_describe_failure(failure, where))
        if not validation.validation_ok and not summary.blessing_reasons:
            summary.blessing_reasons.append("TFMA validation failed (see the evaluation)")
    for artifact in outputs.get("blessing", []):
        blessed = artifact.custom_properties.get("blessed")
        if blessed is not None:
            summary.blessed = bool(blessed.int_value)
        for gate_property in (INTERVAL_GATE_PROPERTY, ATTRIBUTION_GATE_PROPERTY):
            gate = artifact.custom_properties.get(gate_property)
            if gate is not None and gate.string_value:
                summary.blessing_reasons.extend(gate.string_value.split("; "))


def _slice_name(slice_key) -> str:
    parts = [f"{c.column}={c.bytes_value.decode() if c.HasField('bytes_value') else c.int64_value}"
             for c in slice_key.single_slice_keys]
    return ", ".join(parts) or "overall"


def _describe_failure(failure, where: str) -> str:
    """e.g. 'binary_accuracy 0.571 (overall) is below the required 0.7'."""
    from google.protobuf import text_format

    name = failure.metric_key.name
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    if failure.metric_key.is_diff:
        bound = threshold.change_threshold.absolute.value
        return (f"{name} changed by {value:+.4f} against the baseline ({where}); "
                f"the largest drop allowed is {-bound:.4f}")
    if threshold.HasField("value_threshold"):
        bounds = threshold.value_threshold
        if bounds.HasField("lower_bound"):
            return (f"{name} {value:.4f} ({where}) is below the required "
                    f"{bounds.lower_bound.value:.4f}")
    rule = text_format.MessageToString(threshold, as_one_line=True)
    return f"{name} {value:.4f} ({where}) fails {rule}"


def operating_point_of(saved_model_dir: str) -> dict[str, Any]:
    """The SavedModel's operating point for a report ({} when missing or unreadable: the rest
    of the report is still worth showing)."""
    try:
        return read_operating_point(saved_model_dir)
    except ValueError:
        return {}


def format_operating_point(point: dict[str, Any]) -> str:
    low, high = point.get("interval", [point["threshold"]] * 2)
    rates = ", ".join(f"{name} {point[name]:.3f}" for name in
                      ("sensitivity", "specificity", "precision") if point.get(name) is not None)
    missed = ("" if point.get("met", True)
              else " (target not reached on the validation split)")
    return (f"{point['policy']} -> threshold {point['threshold']:.4f} (95% interval "
            f"{low:.4f}-{high:.4f}){missed}; on the validation split: {rates}")


def _read_serving_check(outputs: dict[str, list], summary: RunSummary) -> None:
    for artifact in outputs.get("blessing", []):
        props = artifact.custom_properties
        if "blessed" in props:
            summary.served_ok = bool(props["blessed"].int_value)
        if REASON_PROPERTY in props:
            summary.serving_check = props[REASON_PROPERTY].string_value


def _read_push(outputs: dict[str, list], summary: RunSummary) -> None:
    for artifact in outputs.get("pushed_model", []):
        props = artifact.custom_properties
        summary.pushed = bool(props["pushed"].int_value) if "pushed" in props else False
        if summary.pushed:
            summary.pushed_path = props["pushed_destination"].string_value
            summary.pushed_version = props["pushed_version"].string_value
            new = props.get(NEW_VERSION_PROPERTY)
            summary.pushed_new = bool(new.int_value) if new is not None else True


def format_attribution(found: dict[str, Any]) -> str:
    """One line: the median share of the attribution inside the mask, overall and per class."""
    by_class = found["by_class"]
    return (f"attribution inside the mask: median {found['overall']['median']:.3f} over "
            f"{found['regions']} test regions (label 0: {by_class['0']['median']:.3f}, "
            f"label 1: {by_class['1']['median']:.3f})")


# What a run whose data holds no unlabeled region misses (issue #31: a default that learns
# from unlabeled data says why it is worse without it).
NO_UNLABELED_REGIONS = (
    "unlabeled regions: none, so the Trainer learnt from labelled regions alone; on a site it "
    "never saw, a model does better when that site's regions come along as rows with an empty "
    "label, which it pseudo-labels (unlabeled_training; docs/benchmarks.md, quality across sites)")


def format_unlabeled(regions: int, found: dict[str, Any], pretrained: bool = False) -> str:
    """What the Trainer did with the span's `regions` unlabeled regions (`found`: its training
    summary's account; `pretrained`: the tower's pretraining read them), in a line; no metric
    counts them."""
    if not found.get("unlabeled_regions") or found.get("unlabeled_training") == "none":
        return (f"unlabeled regions: {regions}, "
                f"{'not pseudo-labelled' if pretrained else 'not used for training'} "
                "(unlabeled_training: none)")
    used = found.get("pseudo_labelled_0", 0) + found.get("pseudo_labelled_1", 0)
    return (f"unlabeled regions: the Trainer used {used} of {found['unlabeled_regions']} as "
            "pseudo-labels "
            f"({found.get('pseudo_labelled_0', 0)} absent, {found.get('pseudo_labelled_1', 0)}"
            " present); no metric counts them")


def format_summary(summary: RunSummary) -> str:
    lines = [f"run {summary.run_id}"]
    cached = [node for node, state in summary.components.items() if state == "CACHED"]
    if cached:
        lines.append(f"  served from cache: {', '.join(sorted(cached))}")
    window = len(summary.trained_spans) > 1
    if window:
        read = ", ".join(str(s) for s in summary.spans) or "none"
        lines.append(f"  trained and evaluated on spans "
                     f"{', '.join(str(s) for s in summary.trained_spans)} (read in this run: "
                     f"{read}; the others from earlier runs)")
    if summary.examples:
        where = f" (span {', '.join(str(s) for s in summary.spans)})" if window else ""
        lines.append(f"  examples{where}: " + ", ".join(
            f"{split} {summary.examples[split]}"
            for split in (*features.SPLITS, features.UNLABELED_SPLIT)
            if split in summary.examples))
    if summary.examples.get(features.UNLABELED_SPLIT):
        lines.append("  " + format_unlabeled(summary.examples[features.UNLABELED_SPLIT],
                                             summary.unlabeled, bool(summary.pretraining)))
    elif summary.unlabeled.get("unlabeled_training", "none") != "none":
        lines.append("  " + NO_UNLABELED_REGIONS)
    if summary.pretraining:
        lines.append(f"  pretraining: the tower learnt from {summary.pretraining['regions']} "
                     f"training regions, labelled or not, for {summary.pretraining['epochs']} "
                     "epochs before the labels (pretraining_epochs)")
    if summary.drift:
        lines.append(f"  DRIFT: {summary.drift}")
    if summary.estimate:
        lines.append(f"  served version: {summary.estimate}")
    wanted = ("auc", "binary_accuracy", "precision", "recall", "auc_pr", "calibration",
              "example_count")
    shown = [f"{name} {summary.metrics[name]:.4f}" for name in wanted if name in summary.metrics]
    if shown:
        lines.append("  test split: " + ", ".join(shown))
    if summary.attribution.get("regions"):
        lines.append("  " + format_attribution(summary.attribution))
    if summary.blessed is None:
        lines.append("  blessed: unknown (no evaluation)")
    elif summary.blessed:
        lines.append("  blessed: yes")
    else:
        lines.append("  blessed: NO - " + ("; ".join(summary.blessing_reasons) or "see evaluation"))
    point = summary.operating_point
    if point and point.get("policy", "fixed") != "fixed":
        lines.append(f"  operating point: {format_operating_point(point)}")
    if summary.served_ok is not None and summary.blessed:
        verdict = "passed" if summary.served_ok else "FAILED"
        lines.append(f"  serving check: {verdict} - {summary.serving_check}")
    if summary.pushed and not summary.pushed_new:
        lines.append(f"  pushed: nothing new; version {summary.pushed_version} at "
                     f"{summary.pushed_path} already serves this model")
    elif summary.pushed:
        lines.append(f"  pushed: version {summary.pushed_version} at {summary.pushed_path}")
    elif summary.blessed and summary.served_ok is False:
        lines.append("  pushed: nothing (the serving check failed)")
    else:
        lines.append("  pushed: nothing (the model was not blessed)")
    if summary.report_path:
        lines.append(f"  report: {summary.report_path}")
    return "\n".join(lines)
