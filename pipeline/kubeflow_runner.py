"""Compiles `create_pipeline` for Kubeflow Pipelines (KFP v2 pipeline spec, YAML).

The data root and the training steps are runtime parameters, so a scheduled run can point at new
data without recompiling. Everything the pipeline needs to know about the data's shape (views,
masks, metadata columns) is fixed at compile time, from the config or from a sample of the data.
"""

from __future__ import annotations

import json
import os
import posixpath

import yaml
from tfx import v1 as tfx

from masktfx import node_ids
from masktfx.config import ConfigError, PipelineConfig, uri_scheme
from masktfx.modules.schema import write_schema
from masktfx.pipeline.data import (
    describe_data,
    resolve_config,
    shard_labels,
    shards_to_read,
    unlabeled_regions,
)
from masktfx.pipeline.pipeline import create_pipeline, schema_path, training_splits

DATA_ROOT_PARAMETER = "data-root"
# TFX 1.16 takes Trainer's train_args as a runtime parameter holding TrainArgs as JSON.
TRAIN_ARGS_PARAMETER = "train-args"


def compile_pipeline(config: PipelineConfig, output: str, image: str,
                     data_sample: str | None = None) -> str:
    """Write the pipeline spec to `output` (.yaml: the form kfp.Client accepts)."""
    if not output.endswith((".yaml", ".yml")):
        raise ConfigError(f"--output {output!r} must end in .yaml: KFP takes the bare pipeline "
                          "spec in YAML (other names give a JSON job wrapper)")
    if data_sample:
        config = resolve_config(config, describe_data(data_sample))
        config = config.replace(unlabeled_split=unlabeled_regions(
            shard_labels(shards_to_read(data_sample, config))) > 0)
    if config.num_views < 1 or config.num_masks < 1 or config.channels < 1:
        raise ConfigError("num_views, num_masks and channels must be known to compile: set "
                          "them (and metadata_columns) in --config, or pass --data-sample with a "
                          "local copy of ingested data")
    config = serving_dir_in_cluster(config).validate()
    if config.windowed:
        raise ConfigError(
            f"config field 'span_window' is {config.span_window}: a window of spans cannot be "
            "compiled for Kubeflow. TFX 1.16's ExampleGen reads one span, so a window is a "
            "Resolver over its past outputs, and TFX 1.16's KubeflowV2DagRunner compiles only "
            "the LatestArtifact and LatestBlessedModel resolvers. Compile with span_window: 1, "
            "or retrain on a window with the CronJob in kubernetes/ (the local runner)")
    # ImportSchemaGen reads the contract schema from the pipeline root when the run starts.
    write_schema(config, schema_path(config))
    data_root = tfx.dsl.experimental.RuntimeParameter(
        name=DATA_ROOT_PARAMETER, ptype=str, default=config.data_root)
    train_args = tfx.dsl.experimental.RuntimeParameter(
        name=TRAIN_ARGS_PARAMETER, ptype=str,
        default=json.dumps({"num_steps": config.train_steps, **(
            {"splits": training_splits(config)} if training_splits(config) else {})}))
    pipeline = create_pipeline(config, data_root=data_root, train_args=train_args)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True),
        output_dir=os.path.dirname(os.path.abspath(output)),
        output_filename=os.path.basename(output))
    runner.run(pipeline, write_out=True)
    if not uri_scheme(config.serving_dir):
        add_pusher_volume(output, config.serving_claim, config.serving_claim_mount)
    return output


def serving_dir_in_cluster(config: PipelineConfig) -> PipelineConfig:
    """The serving dir the Pusher's pod writes to: an object store, or a folder on the claim
    TF Serving reads (by default its mount point, as in kubernetes/)."""
    if uri_scheme(config.serving_dir):
        return config
    mount = posixpath.normpath(config.serving_claim_mount)
    if not posixpath.isabs(mount) or mount == "/":
        raise ConfigError(f"config field 'serving_claim_mount' must be an absolute path below "
                          f"/, got {config.serving_claim_mount!r}")
    serving_dir = posixpath.normpath(config.serving_dir or mount)
    if not (posixpath.isabs(serving_dir)
            and posixpath.commonpath([serving_dir, mount]) == mount):
        raise ConfigError(
            f"config field 'serving_dir' {config.serving_dir!r} is not on the serving volume: "
            f"on Kubeflow the Pusher writes to claim {config.serving_claim!r} mounted at "
            f"{mount!r}, so serving_dir must be {mount!r} or a folder under it (or a gs:// or "
            "s3:// URI)")
    if not config.serving_claim.strip():
        raise ConfigError("config field 'serving_claim' must name the PersistentVolumeClaim "
                          "TF Serving reads (kubernetes/ calls it masktfx-models)")
    return config.replace(serving_dir=serving_dir)


# The DriftCheck reads the newest pushed version's descriptors from the same serving dir, and
# the scoring step the version just pushed.
SERVING_DIR_TASKS = (node_ids.PUSHER, node_ids.DRIFT_CHECK, node_ids.SCORER)


def add_pusher_volume(spec_path: str, claim: str, mount_path: str) -> None:
    """Append KFP's Kubernetes platform spec (a second YAML document, read by kfp.Client and the
    KFP backend) that mounts `claim` at `mount_path` in the pods of the Pusher, and of the
    DriftCheck and the scoring step (when the pipeline has them)."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    from kfp.pipeline_spec import pipeline_spec_pb2

    with open(spec_path, encoding="utf-8") as handle:
        documents = list(yaml.safe_load_all(handle))
    pipeline_spec = documents[0]
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    volume = k8s.KubernetesExecutorConfig(
        pvc_mount=[k8s.PvcMount(constant=claim, mount_path=mount_path)])
    platform = pipeline_spec_pb2.PlatformSpec()
    for task in SERVING_DIR_TASKS:
        if task not in tasks:
            continue
        component = tasks[task]["componentRef"]["name"]
        executor = pipeline_spec["components"][component]["executorLabel"]
        platform.platforms["kubernetes"].deployment_spec.executors[executor].update(
            json_format.MessageToDict(volume))
    with open(spec_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump_all([pipeline_spec, json_format.MessageToDict(platform)], handle,
                           sort_keys=False)
