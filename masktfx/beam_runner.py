"""DirectRunner for batch pipelines whose multi_processing workers come from the fork server.

Beam's DirectRunner runs batch pipelines on its FnApiRunner and, in multi_processing mode,
starts each worker with `python -m apache_beam.runners.worker.sdk_worker_main`; that command is
not an option. This runner is the same FnApiRunner, given the pipeline options the way
DirectRunner gives them, with that one command replaced by masktfx.fork_server's. Beam accepts a
runner's class path: masktfx.fork_server.fork_server_for adds
`--runner=masktfx.beam_runner.ForkServerDirectRunner` to Beam args that run DirectRunner in
multi_processing mode, for `masktfx run` and `masktfx ingest`.
"""

from __future__ import annotations

import sys

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import python_urns
from apache_beam.portability.api import beam_provision_api_pb2, beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

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
