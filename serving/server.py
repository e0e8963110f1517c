"""`masktfx serve`: a development model server that speaks TF Serving's REST and gRPC APIs for
what MaskTFX uses (predict, model status, model metadata).

Production uses the real TensorFlow Serving (the manifests in kubernetes/); this server lets the
same client code run on laptops, in CI and on machines without the TF Serving binary. Its parts:
the REST front end (serving/rest.py), the gRPC one (serving/grpc_service.py), both over the
model manager they share (serving/models.py), within one budget of decoded bytes in flight
(serving/budget.py).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

from masktfx.model_config import ModelConfigError, read_config
from masktfx.serving.budget import InflightBudget
from masktfx.serving.grpc_service import grpc_services
from masktfx.serving.limits import (
    DEFAULT_INFLIGHT_WAIT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_REST_THREADS,
    GRPC_STREAM_WINDOW_BYTES,
)
from masktfx.serving.metrics import ServingMetrics
from masktfx.serving.models import ModelManager
from masktfx.serving.rest import (
    DEFAULT_BODY_LIMIT,
    BoundedHTTPServer,
    RestHandler,
    parse_json_body,
    parse_predict_body,
)

log = logging.getLogger("masktfx.serve")
# The REST module's parsers, for callers that know them from here (fuzz targets, benches).
__all__ = ["DEFAULT_BODY_LIMIT", "ModelServer", "parse_json_body", "parse_predict_body"]


class ModelServer:
    """REST and gRPC front ends over one or more ModelManagers."""

    def __init__(self, models: dict[str, ModelManager], host: str = "127.0.0.1",
                 rest_port: int = 8501, grpc_port: int | None = 8500,
                 body_limit: int = DEFAULT_BODY_LIMIT, grpc_workers: int = 16,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                 rest_threads: int = DEFAULT_REST_THREADS,
                 model_config_file: str | None = None, config_poll_seconds: float = 0.0,
                 grpc_socket_path: str | None = None):
        """`grpc_port` None: no gRPC over TCP; `grpc_socket_path`: gRPC on this UNIX socket
        too (TF Serving's --grpc_socket_path), reachable from this machine only."""
        self.models = models
        self.model_config_file = model_config_file
        self.config_poll_seconds = config_poll_seconds
        self._stop = threading.Event()
        self._config_thread: threading.Thread | None = None
        self.metrics = ServingMetrics()
        self.budget = InflightBudget(max_inflight_bytes, DEFAULT_INFLIGHT_WAIT_S)
        # `timeout`: socketserver's per-connection socket timeout, so a client that stops
        # sending (headers or body) is dropped rather than holding its thread.
        handler = type("Handler", (RestHandler,), {"models": models, "body_limit": body_limit,
                                                   "timeout": read_timeout_s,
                                                   "metrics": self.metrics,
                                                   "budget": self.budget,
                                                   "answering": threading.BoundedSemaphore(
                                                       rest_threads)})
        self.rest = BoundedHTTPServer((host, rest_port), handler, max_connections)
        self.rest.daemon_threads = True
        self.rest_port = self.rest.server_address[1]
        self.grpc = None
        self.grpc_port = None
        if grpc_port is not None or grpc_socket_path:
            import grpc

            self.grpc = grpc.server(
                futures.ThreadPoolExecutor(max_workers=grpc_workers),
                maximum_concurrent_rpcs=max_connections,  # past it: RESOURCE_EXHAUSTED
                options=[("grpc.max_receive_message_length", body_limit),
                         ("grpc.max_send_message_length", body_limit),
                         # streams past the workers would only wait, each holding a window of
                         # its message that the budget does not count; refused, a client
                         # retries them
                         ("grpc.max_concurrent_streams", grpc_workers),
                         # A stream's window is what gRPC takes of a message before the handler
                         # reads it. Grown by bandwidth-delay probing, it took whole messages of
                         # calls still waiting for room in the budget (bench/serving --budget);
                         # fixed, a message beyond it arrives once its handler asks for it.
                         ("grpc.http2.bdp_probe", 0),
                         ("grpc.http2.lookahead_bytes", GRPC_STREAM_WINDOW_BYTES)])
            prediction, model_service, model_grpc = grpc_services(models, self.metrics,
                                                                  self.budget, body_limit)
            self.grpc.add_generic_rpc_handlers((prediction,))
            model_grpc.add_ModelServiceServicer_to_server(model_service, self.grpc)
            if grpc_port is not None:
                self.grpc_port = self.grpc.add_insecure_port(f"{host}:{grpc_port}")
                if not self.grpc_port:
                    raise OSError(f"cannot bind gRPC to {host}:{grpc_port}")
            if grpc_socket_path and not self.grpc.add_insecure_port(f"unix:{grpc_socket_path}"):
                raise OSError(f"cannot listen on the UNIX socket {grpc_socket_path}")
        self._rest_thread: threading.Thread | None = None

    def apply_model_config(self) -> None:
        """The config file's versions and labels to each model it lists (TF Serving's
        --model_config_file); a file that cannot be read leaves the last policy in force."""
        for name, served in read_config(self.model_config_file).items():
            manager = self.models.get(name)
            if manager is None:
                log.warning("%s lists model %r, which this server was not started with",
                            self.model_config_file, name)
                continue
            manager.set_policy(served.versions, served.labels)

    def _watch_config(self) -> None:
        while not self._stop.wait(self.config_poll_seconds):
            try:
                self.apply_model_config()
            except ModelConfigError as exc:
                log.error("keeping the last model config: %s", exc)

    def start(self) -> None:
        if self.model_config_file:
            self.apply_model_config()
            if self.config_poll_seconds > 0:
                self._config_thread = threading.Thread(target=self._watch_config, daemon=True,
                                                       name="model-config")
                self._config_thread.start()
        for manager in self.models.values():
            manager.start()
        if self.grpc:
            self.grpc.start()
        self._rest_thread = threading.Thread(target=self.rest.serve_forever, daemon=True,
                                             name="rest")
        self._rest_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._config_thread:
            self._config_thread.join(timeout=5)
        self.rest.shutdown()
        self.rest.server_close()
        if self.grpc:
            self.grpc.stop(grace=2).wait()
        for manager in self.models.values():
            manager.stop()
