"""The RunReport step: every run writes its own report page (pipeline/report.py) as the pipeline's
last output, blessed or not, so a Kubeflow run leaves one where the KFP UI shows it.

The page is rendered from the artifacts the step is given, not from MLMD: a component on Kubeflow
has no connection to the metadata store. Its output is an HTML file at the artifact's URI, of the
type KFP's UI renders as a page (`system.HTML`), recorded in MLMD like every other artifact.
`masktfx report` still renders any past run from MLMD.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.types.value_artifact import ValueArtifact

from masktfx import node_ids
from masktfx.config import PipelineConfig
from masktfx.pipeline.lineage import Lineage
from masktfx.pipeline.report import collect_record, render
from masktfx.pipeline.summary import NodeExecution, RunRecord, RunSummary

# What the page reads from the config (the step's cache key holds these and nothing else).
REPORT_FIELDS = ("pipeline_name", "model_name", "workdir", "max_pixels", "decision_threshold",
                 "min_accuracy", "max_auc_drop", "min_attribution_inside")
CONFIG_KEY = "config"
FINGERPRINT_KEY = "code_fingerprint"
REPORT_KEY = "report"

@dataclass(frozen=True)
class Source:
    """One input of the step: its artifact type, and where the same artifact sits in a run MLMD
    recorded (node, key, and whether the node wrote or read it), so the page is built by the
    code that renders past runs."""

    type: type[types.Artifact]
    node: str
    key: str
    side: str  # "outputs" or "inputs"
    optional: bool = False


SOURCES = {
    "examples": Source(standard_artifacts.Examples, node_ids.EXAMPLE_GEN, "examples", "outputs"),
    "trained_examples": Source(standard_artifacts.Examples, node_ids.TRANSFORM, "examples",
                               "inputs"),
    "statistics": Source(standard_artifacts.ExampleStatistics, node_ids.STATISTICS_GEN,
                         "statistics", "outputs"),
    "schema": Source(standard_artifacts.Schema, node_ids.TRANSFORM, "schema", "inputs"),
    "transform_graph": Source(standard_artifacts.TransformGraph, node_ids.TRANSFORM,
                              "transform_graph", "outputs"),
    "model": Source(standard_artifacts.Model, node_ids.TRAINER, "model", "outputs"),
    "model_run": Source(standard_artifacts.ModelRun, node_ids.TRAINER, "model_run", "outputs"),
    "evaluation": Source(standard_artifacts.ModelEvaluation, node_ids.EVALUATOR, "evaluation",
                         "outputs"),
    "blessing": Source(standard_artifacts.ModelBlessing, node_ids.EVALUATOR, "blessing",
                       "outputs"),
    "baseline_model": Source(standard_artifacts.Model, node_ids.EVALUATOR, "baseline_model",
                             "inputs", optional=True),
    "drift_report": Source(standard_artifacts.ExampleAnomalies, node_ids.DRIFT_CHECK,
                           "drift_report", "outputs", optional=True),
    "infra_blessing": Source(standard_artifacts.InfraBlessing, node_ids.SERVING_CHECK,
                             "blessing", "outputs", optional=True),
    "pushed_model": Source(standard_artifacts.PushedModel, node_ids.PUSHER, "pushed_model",
                           "outputs"),
}


class ReportPage(ValueArtifact):
    """One self-contained HTML page; the artifact's URI is the file itself (what KFP's UI
    fetches and shows for its `system.HTML` type)."""

    TYPE_NAME = "system.HTML"

    def encode(self, value: str) -> bytes:
        return value.encode("utf-8")

    def decode(self, serialized_value: bytes) -> str:
        return serialized_value.decode("utf-8")


class RunReportSpec(ComponentSpec):
    PARAMETERS = {CONFIG_KEY: ExecutionParameter(type=str),
                  FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True)}
    INPUTS = {key: ChannelParameter(type=source.type, optional=source.optional)
              for key, source in SOURCES.items()}
    OUTPUTS = {REPORT_KEY: ChannelParameter(type=ReportPage)}


def run_record(input_dict: dict[str, list[types.Artifact]], run_id: str, started_ms: int
               ) -> RunRecord:
    """The step's inputs arranged as MLMD records a run: by node, then by key."""
    nodes: dict[str, NodeExecution] = {}
    for key, artifacts in input_dict.items():
        if not artifacts or key not in SOURCES:
            continue
        source = SOURCES[key]
        found = nodes.setdefault(source.node, NodeExecution(source.node, "COMPLETE", {}, {}))
        getattr(found, source.side)[source.key] = [artifact.mlmd_artifact
                                                   for artifact in artifacts]
    return RunRecord(run_id, started_ms, nodes)


def run_lineage(record: RunRecord, summary: RunSummary, written_ms: int) -> Lineage | None:
    """The pushed version's lineage as this run knows it (`masktfx lineage` adds what only
    MLMD knows: which earlier run trained a cached model, labels, later scoring)."""
    if not (summary.pushed and summary.pushed_version):
        return None

    def uri(node: str, key: str, side: str = "outputs") -> str:
        found = record.outputs(node, key) if side == "outputs" else record.inputs(node, key)
        return found[0].uri if found else ""

    return Lineage(
        version=summary.pushed_version, path=summary.pushed_path or "", pushed_ms=written_ms,
        pushed_by_run=record.run_id, model_uri=uri(node_ids.TRAINER, "model"),
        spans=summary.trained_spans, evaluated_spans=summary.trained_spans,
        examples_uri=uri(node_ids.TRANSFORM, "examples", "inputs"),
        train_examples=summary.examples.get("train"),
        validation_examples=summary.examples.get("validation"),
        test_examples=summary.examples.get("test"),
        schema_uri=uri(node_ids.TRANSFORM, "schema", "inputs"),
        transform_graph_uri=uri(node_ids.TRANSFORM, "transform_graph"),
        evaluation_uri=uri(node_ids.EVALUATOR, "evaluation"),
        baseline_model_uri=uri(node_ids.EVALUATOR, "baseline_model", "inputs"),
        operating_point=summary.operating_point)


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: dict[str, list[types.Artifact]],
           output_dict: dict[str, list[types.Artifact]], exec_properties: dict[str, Any]) -> None:
        config = PipelineConfig.from_component_config(json.loads(exec_properties[CONFIG_KEY]))
        written_ms = int(time.time() * 1000)
        # Kubeflow's launcher passes no run id: the page is then named by its artifact
        run_id = (self._context.pipeline_run_id if self._context else None) or ""
        record = run_record(input_dict, run_id, written_ms)
        data = collect_record(config, record)
        data.lineage = run_lineage(record, data.summary, written_ms)
        data.in_run = True
        page = output_dict[REPORT_KEY][0]
        fileio.makedirs(os.path.dirname(page.uri))
        with fileio.open(page.uri, "w") as handle:
            handle.write(render(data))
        page.set_int_custom_property("blessed", int(bool(data.summary.blessed)))
        if data.summary.pushed_version and data.summary.pushed:
            page.set_string_custom_property("pushed_version", data.summary.pushed_version)


class RunReport(base_component.BaseComponent):
    """The run's report page, from every artifact the page shows."""

    SPEC_CLASS = RunReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, config: dict[str, Any], code_fingerprint: str = "",
                 **channels: types.BaseChannel | None):
        spec = RunReportSpec(
            config=json.dumps(config, sort_keys=True), code_fingerprint=code_fingerprint,
            report=types.Channel(type=ReportPage),
            **{key: channel for key, channel in channels.items() if channel is not None})
        super().__init__(spec=spec)

