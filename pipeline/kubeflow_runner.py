"""Compiles `create_pipeline` for Kubeflow Pipelines (KFP v2 pipeline spec, YAML).

The data root and the training steps are runtime parameters, so a scheduled run can point at new
data without recompiling. Everything the pipeline needs to know about the data's shape (views,
masks, metadata columns) is fixed at compile time, from the config or from a sample of the data.
"""

from __future__ import annotations

import json
import os

from tfx import v1 as tfx

from masktfx.config import ConfigError, PipelineConfig
from masktfx.modules.schema import write_schema
from masktfx.pipeline.data import describe_data, resolve_config
from masktfx.pipeline.pipeline import create_pipeline, schema_path

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
    if config.num_views < 1 or config.num_masks < 1 or config.channels < 1:
        raise ConfigError("num_views, num_masks and channels must be known to compile: set "
                          "them (and metadata_columns) in --config, or pass --data-sample with a "
                          "local copy of ingested data")
    config = config.validate()
    # ImportSchemaGen reads the contract schema from the pipeline root when the run starts.
    write_schema(config, schema_path(config))
    data_root = tfx.dsl.experimental.RuntimeParameter(
        name=DATA_ROOT_PARAMETER, ptype=str, default=config.data_root)
    train_args = tfx.dsl.experimental.RuntimeParameter(
        name=TRAIN_ARGS_PARAMETER, ptype=str,
        default=json.dumps({"num_steps": config.train_steps}))
    pipeline = create_pipeline(config, data_root=data_root, train_args=train_args)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True),
        output_dir=os.path.dirname(os.path.abspath(output)),
        output_filename=os.path.basename(output))
    runner.run(pipeline, write_out=True)
    return output
