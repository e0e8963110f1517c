"""What a run did, read back from MLMD: examples per split, metrics, the blessing and the push.

Used by `masktfx run` for its closing summary (and by the reports).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from masktfx.config import PipelineConfig

_STATE_NAMES = {value: name for name, value in
                metadata_store_pb2.Execution.State.items()}


@dataclass
class RunSummary:
    run_id: str
    components: dict[str, str] = field(default_factory=dict)  # node id -> COMPLETE/CACHED/...
    examples: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    blessed: bool | None = None
    blessing_reasons: list[str] = field(default_factory=list)
    pushed: bool = False
    pushed_path: str | None = None
    pushed_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _store(config: PipelineConfig) -> metadata_store.MetadataStore:
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(connection)


def latest_run_id(store: metadata_store.MetadataStore, pipeline_name: str) -> str | None:
    runs = [c for c in store.get_contexts_by_type("pipeline_run")]
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline is not None:
        runs = [c for c in runs if c.id in {p.id for p in store.get_children_contexts_by_context(
            pipeline.id)}] or runs
    if not runs:
        return None
    return max(runs, key=lambda c: (c.create_time_since_epoch, c.id)).name


def _node_id(store: metadata_store.MetadataStore, execution_id: int) -> str:
    for context in store.get_contexts_by_execution(execution_id):
        if context.type == "node" or store.get_context_types_by_id(
                [context.type_id])[0].name == "node":
            return context.name.split(".", 1)[-1]
    return str(execution_id)


def _outputs(store: metadata_store.MetadataStore, execution_id: int
             ) -> dict[str, list[metadata_store_pb2.Artifact]]:
    events = [e for e in store.get_events_by_execution_ids([execution_id])
              if e.type in (metadata_store_pb2.Event.OUTPUT,
                            metadata_store_pb2.Event.DECLARED_OUTPUT)]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    outputs: dict[str, list[metadata_store_pb2.Artifact]] = {}
    for event in events:
        key = event.path.steps[0].key if event.path.steps else ""
        outputs.setdefault(key, []).append(artifacts[event.artifact_id])
    return outputs


def summarize_run(config: PipelineConfig, run_id: str | None = None) -> RunSummary:
    """Read one run (the latest by default) from the workdir's MLMD store."""
    store = _store(config)
    run_id = run_id or latest_run_id(store, config.pipeline_name)
    if run_id is None:
        raise LookupError(f"{config.metadata_path}: no pipeline run recorded")
    context = store.get_context_by_type_and_name("pipeline_run", run_id)
    summary = RunSummary(run_id=run_id)
    outputs_by_node = {}
    for execution in store.get_executions_by_context(context.id):
        node = _node_id(store, execution.id)
        summary.components[node] = _STATE_NAMES.get(execution.last_known_state, "UNKNOWN")
        outputs_by_node[node] = _outputs(store, execution.id)
    _read_statistics(outputs_by_node.get("StatisticsGen", {}), summary)
    _read_evaluation(outputs_by_node.get("Evaluator", {}), summary)
    _read_push(outputs_by_node.get("VersionedPusher", {}), summary)
    return summary


def _read_statistics(outputs: dict[str, list], summary: RunSummary) -> None:
    import tensorflow_data_validation as tfdv

    for artifact in outputs.get("statistics", []):
        for split in ("train", "eval"):
            path = os.path.join(artifact.uri, f"Split-{split}", "FeatureStats.pb")
            if os.path.exists(path):
                stats = tfdv.load_stats_binary(path)
                summary.examples[split] = int(stats.datasets[0].num_examples)


def _read_evaluation(outputs: dict[str, list], summary: RunSummary) -> None:
    import tensorflow_model_analysis as tfma

    for artifact in outputs.get("evaluation", []):
        result = tfma.load_eval_result(artifact.uri)
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


def _read_push(outputs: dict[str, list], summary: RunSummary) -> None:
    for artifact in outputs.get("pushed_model", []):
        props = artifact.custom_properties
        summary.pushed = bool(props["pushed"].int_value) if "pushed" in props else False
        if summary.pushed:
            summary.pushed_path = props["pushed_destination"].string_value
            summary.pushed_version = props["pushed_version"].string_value


def format_summary(summary: RunSummary) -> str:
    lines = [f"run {summary.run_id}"]
    cached = [node for node, state in summary.components.items() if state == "CACHED"]
    if cached:
        lines.append(f"  served from cache: {', '.join(sorted(cached))}")
    if summary.examples:
        lines.append("  examples: " + ", ".join(f"{split} {count}" for split, count in
                                                sorted(summary.examples.items())))
    wanted = ("auc", "binary_accuracy", "precision", "recall", "auc_pr", "calibration",
              "example_count")
    shown = [f"{name} {summary.metrics[name]:.4f}" for name in wanted if name in summary.metrics]
    if shown:
        lines.append("  eval: " + ", ".join(shown))
    if summary.blessed is None:
        lines.append("  blessed: unknown (no evaluation)")
    elif summary.blessed:
        lines.append("  blessed: yes")
    else:
        lines.append("  blessed: NO - " + ("; ".join(summary.blessing_reasons) or "see evaluation"))
    if summary.pushed:
        lines.append(f"  pushed: version {summary.pushed_version} at {summary.pushed_path}")
    else:
        lines.append("  pushed: nothing (the model was not blessed)")
    return "\n".join(lines)
