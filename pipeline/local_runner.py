"""Runs `create_pipeline` with TFX's LocalDagRunner and an SQLite MLMD store in the workdir."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.compiler import constants as compiler_constants
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.portable import runtime_parameter_utils
from tfx.proto.orchestration import pipeline_pb2

from masktfx.beam_runner import beam_args_in_environment
from masktfx.components.span_window import SPLIT_KEY_PROPERTY
from masktfx.config import RUN_CONFIG, PipelineConfig
from masktfx.fork_server import (
    PIPELINE_PRELOAD,
    fork_server_for,
)
from masktfx.ingest import IngestResult, run_ingest
from masktfx.modules.schema import write_schema
from masktfx.pipeline.data import (
    DataLayoutError,
    describe_data,
    labels_by_partition,
    list_spans,
    resolve_config,
    shards_to_read,
    unlabeled_regions,
    verify_shards,
)
from masktfx.pipeline.metadata_connection import connection_config, store_exists
from masktfx.pipeline.pipeline import (
    create_pipeline,
    create_span_pipeline,
    example_split_key,
    schema_path,
)
from masktfx.pipeline.run_lock import database_lock, workdir_lock
from masktfx.pipeline.run_output import new_run_id
from masktfx.pipeline.split_plan import (
    SplitPlanError,
    check_split,
    few_groups_warning,
    partition_feature_name,
)
from masktfx.pipeline.summary import RunSummary, artifact_span, open_store, summarize_run

VERIFIED_SHARDS = "verified-shards.json"  # in the workdir: shards already read through once


@dataclass(frozen=True)
class PreparedRun:
    config: PipelineConfig
    ingested: IngestResult | None  # the span a manifest was ingested into, if one was written
    warnings: tuple[str, ...] = ()  # what the user should know before the run starts


def manifest_fingerprint(manifest_path: str) -> str:
    """A new or edited manifest means new data; the same manifest means none."""
    digest = hashlib.sha256()
    with open(manifest_path, "rb") as handle:
        digest.update(handle.read())
    return digest.hexdigest()


def ingest_manifest_into_workdir(manifest_path: str, config: PipelineConfig,
                                 progress_stream: TextIO | None = None
                                 ) -> tuple[str, IngestResult | None]:
    """Ingest into WORKDIR/data/span-N, a new span only when the manifest changed.

    Returns the data root and the ingest's result (None when the latest span already holds
    this manifest, so a re-run with no new data is served from the cache).
    """
    data_root = os.path.join(config.workdir, "data")
    fingerprint = manifest_fingerprint(manifest_path)
    spans = list_spans(data_root)
    if spans:
        marker = os.path.join(data_root, f"span-{spans[-1]}", "manifest.sha256")
        if os.path.exists(marker) and open(marker, encoding="ascii").read().strip() == fingerprint:
            return data_root, None
    span = (spans[-1] + 1) if spans else 1
    result = run_ingest(manifest_path, data_root, span=span, max_pixels=config.max_pixels,
                        beam_args=config.beam_pipeline_args, fork_server=config.beam_fork_server,
                        progress_stream=progress_stream)
    if not result.published:
        raise RuntimeError(f"ingest of {manifest_path} wrote no example; see "
                           f"{os.path.join(result.output_dir, 'rejected.csv')}")
    with open(os.path.join(result.output_dir, "manifest.sha256"), "w", encoding="ascii") as out:
        out.write(fingerprint)
    return data_root, result


def prepare(config: PipelineConfig, data: str, progress_stream: TextIO | None = None
            ) -> PreparedRun:
    """Resolve the data (ingesting a manifest first), fill config fields left to the data and
    write the contract schema. Raises before any component runs if something is wrong."""
    config = config.replace(workdir=os.path.abspath(config.workdir)).validate()
    ingested = None
    if data.lower().endswith(".csv"):
        data_root, ingested = ingest_manifest_into_workdir(data, config, progress_stream)
    else:
        data_root = data
    config = resolve_config(config.replace(data_root=os.path.abspath(data_root)),
                            describe_data(data_root))
    verified = verify_shards(shards_to_read(data_root, config),
                             os.path.join(config.workdir, VERIFIED_SHARDS))
    # unlabeled regions get a split of their own (ExampleGen), read by Transform and Trainer
    unlabeled = unlabeled_regions(verified)
    config = config.replace(unlabeled_split=unlabeled > 0).validate()
    labels = labels_by_partition(verified, partition_feature_name(config))
    if unlabeled and not labels:
        raise DataLayoutError(f"{data_root}: all {unlabeled} regions are unlabeled (an empty "
                              "label); training and the test split need labelled ones")
    try:
        plan = check_split(labels, config)
    except SplitPlanError as exc:
        raise DataLayoutError(f"{data_root}: {exc}") from None
    warnings = []
    if config.split_by == "id":
        warnings.append("split_by: id: examples are split one by one, so neighbouring regions "
                        "of one group (patient, scene, site) can fall in train, validation and "
                        "test; the test figures may then be optimistic")
    elif config.confidence_intervals:
        few = few_groups_warning(plan)
        if few:
            warnings.append(few)
    write_schema(config, schema_path(config))
    config.save_yaml(os.path.join(config.workdir, RUN_CONFIG))
    return PreparedRun(config, ingested, tuple(warnings))


def spans_read(config: PipelineConfig) -> set[int]:
    """Spans ImportExampleGen has read, split as this config splits them (from MLMD)."""
    if not store_exists(config):
        return set()
    key = example_split_key(config)
    found = set()
    for artifact in open_store(config).get_artifacts_by_type("Examples"):
        stamp = artifact.custom_properties.get(SPLIT_KEY_PROPERTY)
        if stamp is not None and stamp.string_value == key and \
                artifact.state == metadata_store_pb2.Artifact.LIVE:
            found.add(artifact_span(artifact))
    return found


def window_spans_to_read(config: PipelineConfig) -> list[int]:
    """The window's earlier spans that no run has read yet (the pipeline reads the latest)."""
    if not config.windowed:
        return []
    earlier = list_spans(config.data_root)[-config.span_window:-1]
    done = spans_read(config) if earlier else set()
    return [span for span in earlier if span not in done]


class NamedRunLocalDagRunner(LocalDagRunner):
    """LocalDagRunner whose pipeline run id is given, not taken from the clock when it starts,
    so the run's log file can carry its name from the first line on."""

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id

    def run_with_ir(self, pipeline: pipeline_pb2.Pipeline,
                    run_options: pipeline_pb2.RunOptions | None = None, **kwargs: Any) -> Any:
        # Substituted here first, the parameter is gone when LocalDagRunner substitutes its own.
        runtime_parameter_utils.substitute_runtime_parameter(
            pipeline, {compiler_constants.PIPELINE_RUN_ID_PARAMETER_NAME: self.run_id})
        return super().run_with_ir(pipeline, run_options=run_options, **kwargs)


def run_pipeline(config: PipelineConfig, run_id: str | None = None,
                 announce: Callable[[str], None] | None = None) -> None:
    """Run the whole pipeline; raises if a component fails. With a span window, each earlier
    span of the window no run has read yet is read (and checked) first, once.

    In DirectRunner's multi_processing mode the Beam components' workers are forked from a
    process that has imported TensorFlow and the TFX libraries once (masktfx/fork_server.py).
    """
    os.makedirs(config.workdir, exist_ok=True)
    connection = connection_config(config)
    with fork_server_for(config.beam_pipeline_args, PIPELINE_PRELOAD,
                         config.beam_fork_server) as beam_args, \
            beam_args_in_environment(beam_args) as component_beam_args:
        run_id = run_id or new_run_id()
        pipelines = [(f"{run_id}-span-{span}",
                      f"span {span} of the window, not read yet as this run splits it: read and "
                      "check it",
                      create_span_pipeline(config, span, beam_pipeline_args=component_beam_args))
                     for span in window_spans_to_read(config)]
        pipelines.append((run_id, "", create_pipeline(config,
                                                      beam_pipeline_args=component_beam_args)))
        for pipeline_run_id, what, pipeline in pipelines:
            if what and announce:
                announce(what)
            pipeline.metadata_connection_config = connection
            NamedRunLocalDagRunner(pipeline_run_id).run(pipeline)


@dataclass(frozen=True)
class LocalRunOutcome:
    config: PipelineConfig  # as resolved from the data
    ingested: IngestResult | None
    summary: RunSummary | None  # from MLMD; None when no run was recorded
    failure: Exception | None  # the exception of a failed component, if one failed

    @property
    def not_completed(self) -> list[str]:
        if self.summary is None:
            return []
        return [node for node, state in self.summary.components.items()
                if state not in ("COMPLETE", "CACHED")]


def run_local(config: PipelineConfig, data: str,
              on_prepared: Callable[[PreparedRun], None] | None = None,
              run_id: str | None = None, progress_stream: TextIO | None = None,
              announce: Callable[[str], None] | None = None) -> LocalRunOutcome:
    """`masktfx run`: prepare (an error here means no component ran, and is raised), run the
    pipeline, read its summary back. A failed component is returned as the outcome's failure.
    `progress_stream`: where a manifest's ingest shows its progress bar (on a terminal)."""
    run_id = run_id or new_run_id()
    with workdir_lock(os.path.abspath(config.workdir), run_id), database_lock(config, run_id):
        # Started first, so that its imports overlap this process's own; run_pipeline and a
        # manifest's ingest take their Beam workers from it.
        with fork_server_for(config.beam_pipeline_args, PIPELINE_PRELOAD,
                             config.beam_fork_server):
            prepared = prepare(config, data, progress_stream)
            if on_prepared:
                on_prepared(prepared)
            failure = None
            try:
                run_pipeline(prepared.config, run_id, announce)
            except Exception as exc:  # a component failed: the caller says which and why
                failure = exc
        try:
            summary = summarize_run(prepared.config)
        except LookupError:
            summary = None
    return LocalRunOutcome(prepared.config, prepared.ingested, summary, failure)
