"""Reading executions back from MLMD the way TFX's orchestrator wrote them."""

from __future__ import annotations

from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata
from tfx.orchestration.portable.mlmd import execution_lib
from tfx.types import standard_artifacts

from masktfx.config import PipelineConfig
from masktfx.pipeline.summary import execution_inputs, execution_outputs, open_store


def test_an_artifact_bound_to_two_keys_is_read_under_both(tmp_path):
    # A cached re-run resolves its own model as the baseline: the Evaluator gets one artifact as
    # both `model` and `baseline_model`, which TFX records as one event with two keys.
    config = PipelineConfig(workdir=str(tmp_path))
    with metadata.Metadata(metadata.sqlite_metadata_connection_config(
            config.metadata_path)) as handle:
        model = standard_artifacts.Model()
        model.uri = str(tmp_path / "model")
        examples = standard_artifacts.Examples()
        examples.uri = str(tmp_path / "examples")
        evaluation = standard_artifacts.ModelEvaluation()
        evaluation.uri = str(tmp_path / "evaluation")
        trainer = execution_lib.prepare_execution(
            handle, metadata_store_pb2.ExecutionType(name="Trainer"),
            metadata_store_pb2.Execution.COMPLETE)
        execution_lib.put_execution(handle, trainer, contexts=[],
                                    output_artifacts={"model": [model]})
        assert model.id  # registered, so the Evaluator's two keys share one event
        evaluator = execution_lib.prepare_execution(
            handle, metadata_store_pb2.ExecutionType(name="Evaluator"),
            metadata_store_pb2.Execution.COMPLETE)
        execution = execution_lib.put_execution(
            handle, evaluator, contexts=[],
            input_artifacts={"examples": [examples], "model": [model],
                             "baseline_model": [model]},
            output_artifacts={"evaluation": [evaluation]})

    store = open_store(config)
    inputs = execution_inputs(store, execution.id)
    assert sorted(inputs) == ["baseline_model", "examples", "model"]
    assert [a.uri for a in inputs["model"]] == [a.uri for a in inputs["baseline_model"]] \
        == [model.uri]
    assert [a.uri for a in execution_outputs(store, execution.id)["evaluation"]] \
        == [evaluation.uri]
