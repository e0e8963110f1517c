"""A Beam worker pool whose SDK workers start warm, for our pipelines on a portable runner
(Flink, Spark, or Beam's job service): `--environment_type=EXTERNAL
--environment_config=HOST:PORT` names it, as it would name the SDK container's `--worker_pool`.

Beam's pool (`apache_beam.runners.worker.worker_pool_main`, and the container in pool mode)
starts every SDK worker of every job as a new Python process, which imports Beam, our code and,
for the TFX components, TensorFlow and the TFX libraries before it does any work. This pool
starts a fork server (masktfx/fork_server.py) that imports those once, and forks each worker
from it. The worker is Beam's own harness (`sdk_worker_main`), given what the runner's
StartWorkerRequest names and the job's pipeline options from the runner's provision service, as
the container's boot program gives them. Like Beam's own process pool, it installs nothing the
job stages: the image the pool runs in has masktfx and its dependencies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import traceback
from collections.abc import Sequence

from masktfx.fork_server import (
    PIPELINE_PRELOAD,
    request_worker,
    running_fork_server,
    wait_for_worker,
)

_LOGGER = logging.getLogger("masktfx.beam_worker_pool")
_PROVISION_TIMEOUT_S = 60.0


def worker_environment(request: object, base: dict[str, str]) -> dict[str, str]:
    """The environment `sdk_worker_main` reads, for the worker a StartWorkerRequest asks for:
    its endpoints and id from the request, the pipeline options from the provision service."""
    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
    from google.protobuf import json_format, text_format

    with grpc.insecure_channel(request.provision_endpoint.url) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(),
            metadata=[("worker_id", request.worker_id)], timeout=_PROVISION_TIMEOUT_S).info
    env = {**base, "WORKER_ID": request.worker_id,
           "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
           "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
           "CONTROL_API_SERVICE_DESCRIPTOR": text_format.MessageToString(
               info.control_endpoint if info.control_endpoint.url else
               request.control_endpoint)}
    logging_endpoint = info.logging_endpoint if info.logging_endpoint.url else \
        request.logging_endpoint
    if logging_endpoint.url:
        env["LOGGING_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(logging_endpoint)
    return env


def _servicer_class() -> type:
    from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc

    class WarmWorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
        """StartWorker forks a worker from the fork server; StopWorker ends it."""

        def __init__(self, fork_server: str) -> None:
            self._fork_server = fork_server
            self._workers: dict[str, socket.socket] = {}
            self._lock = threading.Lock()
            self._devnull = os.open(os.devnull, os.O_RDONLY)

        def StartWorker(self, request, context):  # noqa: N802 - gRPC's method name
            try:
                env = worker_environment(request, dict(os.environ))
                connection = request_worker(self._fork_server, env, os.getcwd(),
                                            (self._devnull, 2, 2))
            except Exception:  # noqa: BLE001 - the runner reports the error it is given
                return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())
            with self._lock:
                self._workers[request.worker_id] = connection
            threading.Thread(target=self._reap, args=(request.worker_id, connection),
                             daemon=True).start()
            return beam_fn_api_pb2.StartWorkerResponse()

        def _reap(self, worker_id: str, connection: socket.socket) -> None:
            status = wait_for_worker(connection)
            if status:
                _LOGGER.warning("worker %s ended with status %s", worker_id, status)
            with self._lock:
                self._workers.pop(worker_id, None)
            connection.close()

        def StopWorker(self, request, context):  # noqa: N802 - gRPC's method name
            with self._lock:
                connection = self._workers.pop(request.worker_id, None)
            if connection is not None:  # the forked worker exits when its connection closes
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            return beam_fn_api_pb2.StopWorkerResponse()

    return WarmWorkerPool


def serve(port: int, host: str = "localhost", preload: Sequence[str] = PIPELINE_PRELOAD
          ) -> None:
    """Serve the pool on HOST:PORT until interrupted. The fork server is started first, before
    any gRPC thread exists in this process."""
    from concurrent import futures

    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc

    with running_fork_server(preload) as fork_server:
        if not fork_server:
            raise SystemExit("masktfx beam-worker-pool: the fork server did not start")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
            _servicer_class()(fork_server), server)
        bound = server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise SystemExit(f"masktfx beam-worker-pool: cannot listen on {host}:{port}")
        server.start()
        print(f"masktfx beam-worker-pool: listening on {host}:{bound}", file=sys.stderr,
              flush=True)
        try:
            server.wait_for_termination()
        finally:
            server.stop(grace=None)
