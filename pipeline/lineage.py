"""Where a served model version came from, read back from MLMD.

Follows the recorded events backwards: the pushed version -> the Pusher's run -> the model and
its blessing -> the Trainer and the Evaluator -> the transform graph, the schema and the data
spans, with the number of examples each was trained and evaluated on. With caching, a run can
reuse a model trained in an earlier run; the lineage names both runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from masktfx import features, node_ids
from masktfx.components.versioned_pusher import NEW_VERSION_PROPERTY
from masktfx.config import PipelineConfig, uri_scheme
from masktfx.pipeline.summary import (
    artifact_span,
    execution_inputs,
    execution_outputs,
    format_operating_point,
    node_id,
    open_store,
    operating_point_of,
    split_statistics,
)
from masktfx.scoring.component import (
    DATA_PROPERTY,
    REJECTED_PROPERTY,
    SCORED_PROPERTY,
)

Store = metadata_store.MetadataStore
Artifact = metadata_store_pb2.Artifact


@dataclass
class Lineage:
    version: str
    path: str
    pushed_ms: int
    pushed_by_run: str  # the run whose Pusher wrote this version
    model_uri: str = ""
    trained_in_run: str = ""  # the run whose Trainer actually trained it (cache: an earlier one)
    spans: list[int] = field(default_factory=list)
    examples_uri: str = ""
    train_examples: int | None = None
    validation_examples: int | None = None  # the Trainer's validation split
    test_examples: int | None = None  # the Evaluator's test split
    evaluated_spans: list[int] = field(default_factory=list)
    schema_uri: str = ""
    transform_graph_uri: str = ""
    evaluation_uri: str = ""
    baseline_model_uri: str = ""
    labels: list[str] = field(default_factory=list)  # TF Serving labels (models.config) on it
    operating_point: dict[str, Any] = field(default_factory=dict)  # its label's threshold
    # the scoring steps that scored data with it: run, data, regions scored and rejected, uri
    scored: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _producer(store: Store, artifact: Artifact) -> metadata_store_pb2.Execution | None:
    """The execution that first wrote the artifact (a cached execution re-emits it later)."""
    events = [e for e in store.get_events_by_artifact_ids([artifact.id])
              if e.type in (metadata_store_pb2.Event.OUTPUT,
                            metadata_store_pb2.Event.DECLARED_OUTPUT)]
    if not events:
        return None
    executions = store.get_executions_by_id([e.execution_id for e in events])
    complete = [e for e in executions
                if e.last_known_state == metadata_store_pb2.Execution.COMPLETE] or executions
    return min(complete, key=lambda e: (e.create_time_since_epoch, e.id))


def _run_of(store: Store, execution_id: int) -> str:
    for context in store.get_contexts_by_execution(execution_id):
        kind = store.get_context_types_by_id([context.type_id])[0].name
        if kind == "pipeline_run":
            return context.name
    return ""


def _first(artifacts: dict[str, list[Artifact]], key: str) -> Artifact | None:
    found = artifacts.get(key) or []
    return found[0] if found else None


def split_counts(store: Store, examples: Artifact) -> dict[str, int]:
    """Examples per split, from the statistics StatisticsGen computed over this artifact."""
    events = [e for e in store.get_events_by_artifact_ids([examples.id])
              if e.type == metadata_store_pb2.Event.INPUT]
    for execution_id in sorted({e.execution_id for e in events}):
        for statistics in execution_outputs(store, execution_id).get("statistics", []):
            counts = {split: int(stats.num_examples)
                      for split, stats in split_statistics(statistics.uri).items()}
            if counts:
                return counts
    return {}


def pushed_versions(store: Store) -> list[Artifact]:
    """PushedModel artifacts that did push, oldest version first."""
    pushed = [a for a in store.get_artifacts_by_type("PushedModel")
              if a.custom_properties.get("pushed") and a.custom_properties["pushed"].int_value]
    return sorted(pushed, key=lambda a: int(a.custom_properties["pushed_version"].string_value))


def lineage(config: PipelineConfig, version: str | None = None) -> Lineage:
    """The lineage of one pushed version (the newest when `version` is None)."""
    store = open_store(config)
    pushed = pushed_versions(store)
    if version is not None:
        pushed = [a for a in pushed
                  if a.custom_properties["pushed_version"].string_value == str(version)]
    if not pushed:
        known = ", ".join(a.custom_properties["pushed_version"].string_value
                          for a in pushed_versions(store)) or "none"
        raise LookupError(f"no pushed version {version or ''} recorded in "
                          f"{config.metadata_location.describe()} (pushed versions: {known})")
    newest = pushed[-1].custom_properties["pushed_version"].string_value
    same = [a for a in pushed if a.custom_properties["pushed_version"].string_value == newest]
    # re-runs that found the model already served record the version again: follow the push
    # that wrote it
    writers = [a for a in same if a.custom_properties.get(NEW_VERSION_PROPERTY) is None
               or a.custom_properties[NEW_VERSION_PROPERTY].int_value]
    artifact = min(writers or same, key=lambda a: a.id)
    pusher = _producer(store, artifact)
    result = Lineage(version=artifact.custom_properties["pushed_version"].string_value,
                     path=artifact.custom_properties["pushed_destination"].string_value,
                     pushed_ms=artifact.create_time_since_epoch,
                     pushed_by_run=_run_of(store, pusher.id) if pusher else "")
    result.labels = _labels_of(config, int(result.version))
    result.operating_point = operating_point_of(result.path)
    result.scored = _scored_with(store, same)
    if pusher is None:
        return result
    pusher_inputs = execution_inputs(store, pusher.id)
    model = _first(pusher_inputs, "model")
    if model is not None:
        result.model_uri = model.uri
        trainer = _producer(store, model)
        if trainer is not None:
            result.trained_in_run = _run_of(store, trainer.id)
            _follow_trainer(store, execution_inputs(store, trainer.id), result)
    blessing = _first(pusher_inputs, "model_blessing")
    evaluator = _producer(store, blessing) if blessing is not None else None
    if evaluator is not None:
        evaluator_inputs = execution_inputs(store, evaluator.id)
        evaluation = _first(execution_outputs(store, evaluator.id), "evaluation")
        result.evaluation_uri = evaluation.uri if evaluation is not None else ""
        baseline = _first(evaluator_inputs, "baseline_model")
        result.baseline_model_uri = baseline.uri if baseline is not None else ""
        examples = evaluator_inputs.get("examples", [])
        result.evaluated_spans = sorted({artifact_span(a) for a in examples})
        counts = [split_counts(store, a).get(features.TEST_SPLIT) for a in examples]
        if counts and None not in counts:
            result.test_examples = sum(counts)
    return result


def _scored_with(store: Store, pushed: list[Artifact]) -> list[dict[str, Any]]:
    """What the scoring steps that read these PushedModel artifacts scored, oldest first."""
    inputs = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
    events = [e for e in store.get_events_by_artifact_ids([a.id for a in pushed])
              if e.type in inputs]
    found = []
    for execution in store.get_executions_by_id(sorted({e.execution_id for e in events})):
        if node_id(store, execution.id) != node_ids.SCORER or \
                execution.last_known_state != metadata_store_pb2.Execution.COMPLETE:
            continue
        for scores in execution_outputs(store, execution.id).get("scores", []):
            properties = scores.custom_properties
            found.append({
                "run": _run_of(store, execution.id), "uri": scores.uri,
                "data": properties[DATA_PROPERTY].string_value,
                "scored": properties[SCORED_PROPERTY].int_value,
                "rejected": properties[REJECTED_PROPERTY].int_value
                if REJECTED_PROPERTY in properties else 0})
    return found


def _follow_trainer(store: Store, trainer_inputs: dict[str, list[Artifact]],
                    result: Lineage) -> None:
    """Trainer <- Transform <- ImportExampleGen: graph, schema, spans and train counts."""
    transform_graph = _first(trainer_inputs, "transform_graph")
    schema = _first(trainer_inputs, "schema")
    result.transform_graph_uri = transform_graph.uri if transform_graph is not None else ""
    result.schema_uri = schema.uri if schema is not None else ""
    transformed = _first(trainer_inputs, "examples")
    transform = _producer(store, transformed) if transformed is not None else None
    if transform is None or node_id(store, transform.id) != node_ids.TRANSFORM:
        return
    raw = execution_inputs(store, transform.id).get("examples", [])
    result.spans = sorted({artifact_span(a) for a in raw})
    result.examples_uri = ", ".join(a.uri for a in raw)
    for split, name in ((features.TRAIN_SPLIT, "train_examples"),
                        (features.VALIDATION_SPLIT, "validation_examples")):
        counts = [split_counts(store, a).get(split) for a in raw]
        if counts and None not in counts:
            setattr(result, name, sum(counts))


def _labels_of(config: PipelineConfig, version: int) -> list[str]:
    """The labels the serving dir's models.config gives the version ([] without the file, or
    when the serving dir is an object store, where `masktfx promote` does not write)."""
    from masktfx.model_config import CONFIG_FILE, read_config

    if uri_scheme(config.resolved_serving_dir):
        return []
    try:
        served = read_config(os.path.join(config.resolved_serving_dir, CONFIG_FILE))
    except ValueError:  # a damaged file: the lineage is still worth showing
        return []
    model = served.get(config.model_name)
    return model.label_of(version) if model else []


def format_lineage(item: Lineage) -> str:
    import datetime

    pushed = datetime.datetime.fromtimestamp(item.pushed_ms / 1000, datetime.timezone.utc)
    labelled = f" (labels: {', '.join(item.labels)})" if item.labels else ""
    lines = [f"version {item.version} at {item.path}{labelled}",
             f"  pushed {pushed:%Y-%m-%d %H:%M:%S} UTC by run {item.pushed_by_run}"]
    if item.trained_in_run:
        cached = "" if item.trained_in_run == item.pushed_by_run else " (reused from cache)"
        lines.append(f"  trained in run {item.trained_in_run}{cached}: model {item.model_uri}")
    spans = ", ".join(str(s) for s in item.spans) or "?"
    lines.append(f"  trained on span(s) {spans}: {_count(item.train_examples)} train and "
                 f"{_count(item.validation_examples)} validation examples ({item.examples_uri})")
    evaluated = ", ".join(str(s) for s in item.evaluated_spans) or "?"
    lines.append(f"  evaluated on span(s) {evaluated}: {_count(item.test_examples)} test "
                 f"examples ({item.evaluation_uri})")
    lines.append(f"  baseline: {item.baseline_model_uri or 'none (first blessed model)'}")
    if item.operating_point:
        lines.append(f"  serves label = probability >= {item.operating_point['threshold']:.4f}"
                     + (f" ({format_operating_point(item.operating_point)})"
                        if item.operating_point.get("policy", "fixed") != "fixed" else ""))
    for scored in item.scored:
        lines.append(f"  scored {scored['data']} in run {scored['run']}: {scored['scored']} "
                     f"regions, {scored['rejected']} rejected ({scored['uri']})")
    lines.append(f"  transform graph {item.transform_graph_uri}")
    lines.append(f"  schema {item.schema_uri}")
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)
