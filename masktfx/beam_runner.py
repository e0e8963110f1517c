"""Beam runners of the local pipeline.

`EnvironmentArgsRunner`: the runner `masktfx run` names in every Beam component's args. It takes
the run's real Beam args from the environment (MASKTFX_BEAM_ARGS), parses them with Beam's own
PipelineOptions and runs on the runner they name. TFX keys each component's cache on its
executor spec, which holds the Beam args; naming this runner only keeps worker counts, running
modes and runners out of the cache keys, so changing one never re-runs Transform or the Trainer.

`ForkServerDirectRunner`: DirectRunner for batch pipelines whose multi_processing workers come
from the fork server.

Beam's DirectRunner runs batch pipelines on its FnApiRunner and, in multi_processing mode,
starts each worker with `python -m apache_beam.runners.worker.sdk_worker_main`; that command is
not an option. This runner is the same FnApiRunner, given the pipeline options the way
DirectRunner gives them, with that one command replaced by masktfx.fork_server's. Beam accepts a
runner's class path: masktfx.fork_server.fork_server_for adds
`--runner=masktfx.beam_runner.ForkServerDirectRunner` to Beam args that run DirectRunner in
multi_processing mode, for `masktfx run` and `masktfx ingest`.

`PortableRunner`, `FlinkRunner`, `SparkRunner`: Beam's, except that a job may run longer than
`--job_server_timeout`, which Beam also gives the job's state stream as its deadline.
masktfx.beam_args.with_long_job_runners names them for Beam's in ingest's and the pipeline's
args, and EnvironmentArgsRunner runs them for Beam's.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability import python_urns
from apache_beam.portability.api import beam_provision_api_pb2, beam_runner_api_pb2
from apache_beam.runners.portability import flink_runner, portable_runner, spark_runner
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineRunner, create_runner

from masktfx.beam_args import long_job_runner, runs_on_this_machine
from masktfx.fork_server import BEAM_WORKER_MODULE, worker_command


def _beams_worker_command() -> bytes:
    """The command FnApiRunner puts into the pipeline for a multi_processing worker."""
    return f"{sys.executable} -m {BEAM_WORKER_MODULE}".encode()


class ForkServerDirectRunner(fn_runner.FnApiRunner):
    """FnApiRunner whose subprocess workers start through masktfx.fork_server."""

    def run_pipeline(self, pipeline, options: PipelineOptions):
        # DirectRunner hands the options to its workers through the provision info; so do we.
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        self._provision_info = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return super().run_pipeline(pipeline, options)

    def run_via_runner_api(self, pipeline_proto: beam_runner_api_pb2.Pipeline,
                           options: PipelineOptions):
        replace_worker_command(pipeline_proto)
        return super().run_via_runner_api(pipeline_proto, options)


def replace_worker_command(pipeline_proto: beam_runner_api_pb2.Pipeline) -> int:
    """Point Beam's own subprocess worker environments at the fork server; returns how many."""
    replaced = 0
    for environment in pipeline_proto.components.environments.values():
        if (environment.urn == python_urns.SUBPROCESS_SDK
                and environment.payload == _beams_worker_command()):
            environment.payload = worker_command().encode()
            replaced += 1
    return replaced


BEAM_ARGS_ENV = "MASKTFX_BEAM_ARGS"  # JSON list of the run's Beam args
ENVIRONMENT_ARGS_RUNNER_FLAG = "--runner=masktfx.beam_runner.EnvironmentArgsRunner"


@contextlib.contextmanager
def beam_args_in_environment(beam_args: Sequence[str]) -> Iterator[list[str]]:
    """For the block, Beam components whose args name EnvironmentArgsRunner run with
    `beam_args`; yields the args to give them instead."""
    previous = os.environ.get(BEAM_ARGS_ENV)
    os.environ[BEAM_ARGS_ENV] = json.dumps(list(beam_args))
    try:
        with no_tfx_package_for_local_workers(beam_args):
            yield [ENVIRONMENT_ARGS_RUNNER_FLAG]
    finally:
        if previous is None:
            os.environ.pop(BEAM_ARGS_ENV, None)
        else:
            os.environ[BEAM_ARGS_ENV] = previous


@contextlib.contextmanager
def no_tfx_package_for_local_workers(beam_args: Sequence[str]) -> Iterator[None]:
    """Every Beam executor of TFX 1.16 builds an sdist of TFX itself for remote Beam workers to
    install (`tfx.utils.dependency_utils.make_beam_dependency_flags`) unless the args name a
    package, and leaves it in the temp folder: seconds and tens of MB per Beam component and
    run. DirectRunner's workers run in this environment, which holds TFX already; for them the
    block skips it. Remote runners (Dataflow, Flink) still get the package."""
    from tfx.utils import dependency_utils

    if not runs_on_this_machine(beam_args):
        yield
        return
    original = dependency_utils.make_beam_dependency_flags
    dependency_utils.make_beam_dependency_flags = list
    try:
        yield
    finally:
        dependency_utils.make_beam_dependency_flags = original


def merged_options(options: PipelineOptions, beam_args: Sequence[str]) -> PipelineOptions:
    """The component's own options (TFX adds `--extra_package` and labels) with `beam_args` on
    top; list options (experiments, extra packages) are joined."""
    values = {k: v for k, v in options.get_all_options(
        drop_default=True, retain_unknown_options=True).items() if k != "runner"}
    given = PipelineOptions(list(beam_args))
    every = given.get_all_options(retain_unknown_options=True)
    # a flag set to its default value (--direct_num_workers=1) still overrides the component's
    named = {arg[2:].split("=", 1)[0] for arg in beam_args if arg.startswith("--")}
    chosen = set(given.get_all_options(drop_default=True, retain_unknown_options=True))
    for key in sorted(chosen | (named & set(every))):
        value = every[key]
        if isinstance(value, list) and isinstance(values.get(key), list):
            value = [*values[key], *(item for item in value if item not in values[key])]
        values[key] = value
    return PipelineOptions.from_dictionary(values)


class EnvironmentArgsRunner(PipelineRunner):
    """Runs on the runner, and with the options, that MASKTFX_BEAM_ARGS names."""

    def run_pipeline(self, pipeline, options: PipelineOptions):
        raw = os.environ.get(BEAM_ARGS_ENV)
        if raw is None:
            raise RuntimeError(f"{ENVIRONMENT_ARGS_RUNNER_FLAG} needs {BEAM_ARGS_ENV} (the Beam "
                               "args as a JSON list); `masktfx run` sets it")
        options = merged_options(options, json.loads(raw))
        runner_name = options.view_as(StandardOptions).runner or "DirectRunner"
        if runner_name.endswith("EnvironmentArgsRunner"):
            raise RuntimeError(f"{BEAM_ARGS_ENV} names EnvironmentArgsRunner itself")
        return create_runner(long_job_runner(runner_name)).run_pipeline(pipeline, options)


class _StreamsWithoutDeadline:
    """A job service stub whose job state and message streams have no deadline. Beam opens them
    with `--job_server_timeout` (JobServiceHandle.run), so a job that runs longer fails with
    DEADLINE_EXCEEDED; the job's preparation and the connection keep the timeout."""

    def __init__(self, stub: object) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> object:
        return getattr(self._stub, name)

    def GetStateStream(self, request, timeout=None, **kwargs):  # noqa: N802 - gRPC's name
        return self._stub.GetStateStream(request, **kwargs)

    def GetMessageStream(self, request, timeout=None, **kwargs):  # noqa: N802 - gRPC's name
        return self._stub.GetMessageStream(request, **kwargs)


class _LongJobs:
    """Mixed into Beam's portable runners: jobs may run longer than `--job_server_timeout`
    (masktfx.beam_args.with_long_job_runners names these runners for Beam's)."""

    def create_job_service_handle(self, job_service, options) -> JobServiceHandle:
        return JobServiceHandle(_StreamsWithoutDeadline(job_service), options)


class PortableRunner(_LongJobs, portable_runner.PortableRunner):
    pass


class FlinkRunner(_LongJobs, flink_runner.FlinkRunner):
    pass


class SparkRunner(_LongJobs, spark_runner.SparkRunner):
    pass
