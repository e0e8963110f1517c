"""EnvironmentArgsRunner: the local run's Beam args come from the environment, so TFX's cache
keys (which hash each component's Beam args) never see them. Real Beam pipelines."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor

from masktfx.beam_runner import (
    BEAM_ARGS_ENV,
    ENVIRONMENT_ARGS_RUNNER_FLAG,
    beam_args_in_environment,
    merged_options,
)


def _run_squares(component_args: list[str]) -> None:
    with beam.Pipeline(argv=component_args) as pipeline:
        squares = pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * x)
        assert_that(squares, equal_to([1, 4, 9]))


def test_components_run_with_the_args_of_the_environment(monkeypatch):
    monkeypatch.delenv(BEAM_ARGS_ENV, raising=False)
    for args in (["--direct_running_mode=in_memory"],
                 ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                 ["--runner=DirectRunner", "--direct_running_mode=multi_threading"]):
        with beam_args_in_environment(args) as component_args:
            assert component_args == [ENVIRONMENT_ARGS_RUNNER_FLAG]  # the same for every run
            _run_squares([*component_args, "--extra_package=/nonexistent.whl"])
        assert BEAM_ARGS_ENV not in os.environ


def test_a_failing_transform_fails_the_pipeline(monkeypatch):
    def explode(value):
        raise ValueError(f"bad value {value}")

    with beam_args_in_environment(["--direct_running_mode=in_memory"]) as component_args:
        with pytest.raises(Exception, match="bad value"):
            with beam.Pipeline(argv=component_args) as pipeline:
                _ = pipeline | beam.Create([1]) | beam.Map(explode)


def test_the_component_args_are_kept_and_the_environment_wins():
    component = PipelineOptions(["--runner=masktfx.beam_runner.EnvironmentArgsRunner",
                                 "--direct_num_workers=4", "--experiments=a",
                                 "--extra_package=/x.whl"])
    merged = merged_options(component, ["--direct_num_workers=1", "--experiments=b",
                                        "--direct_running_mode=multi_processing"])
    direct = merged.view_as(DirectOptions)
    assert direct.direct_num_workers == 1 and direct.direct_running_mode == "multi_processing"
    values = merged.get_all_options(retain_unknown_options=True)
    assert values["experiments"] == ["a", "b"] and values["extra_packages"] == ["/x.whl"]
    assert values["runner"] is None  # the environment names the runner, or DirectRunner


def test_without_the_environment_the_runner_says_what_is_missing(monkeypatch):
    monkeypatch.delenv(BEAM_ARGS_ENV, raising=False)
    with pytest.raises(RuntimeError, match=BEAM_ARGS_ENV):
        _run_squares([ENVIRONMENT_ARGS_RUNNER_FLAG])


class NothingExecutor(BaseBeamExecutor):
    """A TFX Beam executor that does nothing: its base class makes the Beam args."""

    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 (TFX's name)
        pass


def test_tfx_builds_no_package_of_itself_for_workers_that_run_here(tmp_path, monkeypatch):
    """TFX's Beam executors would build an sdist of TFX for remote workers (and leave it in the
    temp folder); DirectRunner's workers run here, so none is built. A remote runner's are."""
    import tempfile

    from tfx.utils import dependency_utils

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    original = dependency_utils.make_beam_dependency_flags
    for args in (["--direct_running_mode=multi_processing"],
                 ["--runner=masktfx.beam_runner.ForkServerDirectRunner"], ["--runner=direct"],
                 []):
        with beam_args_in_environment(args) as component_args:
            executor = NothingExecutor(BaseBeamExecutor.Context(
                beam_pipeline_args=component_args))
            assert not [arg for arg in executor._beam_pipeline_args
                        if arg.startswith("--extra_package")], executor._beam_pipeline_args
        assert dependency_utils.make_beam_dependency_flags is original
    assert not os.listdir(tmp_path)  # nothing built, nothing left behind
    with beam_args_in_environment(["--runner=DataflowRunner", "--project=p"]):
        assert dependency_utils.make_beam_dependency_flags is original


def test_portable_runners_are_named_by_ours_in_either_flag_form():
    from masktfx.beam_args import ingest_beam_args, with_long_job_runners

    assert with_long_job_runners(["--runner=PortableRunner", "--job_endpoint=x:1"]) == [
        "--runner=masktfx.beam_runner.PortableRunner", "--job_endpoint=x:1"]
    assert with_long_job_runners(["--runner", "FlinkRunner"]) == [
        "--runner", "masktfx.beam_runner.FlinkRunner"]
    assert with_long_job_runners(
        ["--runner=apache_beam.runners.portability.spark_runner.SparkRunner"]) == [
        "--runner=masktfx.beam_runner.SparkRunner"]
    for others in (["--runner=DataflowRunner"], ["--runner=DirectRunner"], ["--job_endpoint",
                                                                            "PortableRunner"]):
        assert with_long_job_runners(others) == others
    assert "--runner=masktfx.beam_runner.PortableRunner" in ingest_beam_args(
        ["--runner=PortableRunner"])
