"""`masktfx serve`'s REST front end: TF Serving's REST API (predict in row and columnar form, model
status, model metadata, Prometheus metrics) over a bounded threading HTTP server, with TF
Serving's JSON encoding of tensors."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from masktfx.serving.budget import InflightBudget, rest_body_cost
from masktfx.serving.limits import (
    DEFAULT_INFLIGHT_WAIT_S,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_REST_THREADS,
    SMALL_BODY_BYTES,
)
from masktfx.serving.metrics import CONTENT_TYPE, METRICS_PATH, ServingMetrics
from masktfx.serving.models import (
    ModelManager,
    ServingError,
    check_input_names,
    check_region_count,
)

log = logging.getLogger("masktfx.serve")

DEFAULT_BODY_LIMIT = 32 * 2**20
_VERSION = re.compile(r"^[0-9]{1,18}$")  # ASCII digits that fit an int64
_CONTENT_LENGTH = re.compile(r"^[0-9]{1,15}$")
_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[a-z]+)|/(?P<metadata>metadata))?/?$")


# -- JSON <-> arrays (TF Serving's REST encoding) ---------------------------------------------
# Lists nested deeper than this are refused: a region's inputs are a few levels deep, and how
# deep the JSON parser itself goes depends on the Python version (3.13's parses what 3.10's
# refused, and the decoding below would then exhaust the stack).
MAX_JSON_DEPTH = 32


def _decode_value(value: Any, where: str, depth: int = 0) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise ServingError("INVALID_ARGUMENT",
                           f"{where}: lists nested more than {MAX_JSON_DEPTH} deep")
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ServingError("INVALID_ARGUMENT",
                               f"{where}: an object value must be {{\"b64\": \"<base64>\"}}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ServingError("INVALID_ARGUMENT", f"{where}: invalid base64 in \"b64\"") from None
    if isinstance(value, list):
        return [_decode_value(item, where, depth + 1) for item in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _to_array(value: Any) -> np.ndarray:
    try:
        array = np.array(value, dtype=object)
    except ValueError:
        raise ServingError("INVALID_ARGUMENT", "input lists are ragged") from None
    if array.size and not isinstance(array.flat[0], bytes):
        try:
            array = np.array(value)
        except ValueError:
            raise ServingError("INVALID_ARGUMENT", "input lists are ragged") from None
    return array


def parse_json_body(raw: bytes) -> tuple[dict[str, Any], str]:
    """A predict request's body -> (the JSON object, its signature name or "")."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServingError("INVALID_ARGUMENT", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ServingError("INVALID_ARGUMENT", "the body's JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise ServingError("INVALID_ARGUMENT", "the body must be a JSON object")
    signature_name = body.get("signature_name") or ""
    if not isinstance(signature_name, str):
        raise ServingError("INVALID_ARGUMENT", "\"signature_name\" must be a string")
    return body, signature_name


def parse_predict_body(body: dict[str, Any], input_names: list[str], max_regions: int
                       ) -> tuple[dict[str, np.ndarray], bool]:
    """Row (`instances`) or columnar (`inputs`) form -> batched arrays; True for row form. The
    number of regions is checked against `max_regions` before any value is decoded."""
    if ("instances" in body) == ("inputs" in body):
        raise ServingError("INVALID_ARGUMENT",
                           "the request must have exactly one of \"instances\" or \"inputs\"")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError("INVALID_ARGUMENT", "\"instances\" must be a non-empty list")
        check_region_count(len(instances), max_regions)
        columns: dict[str, list] = {name: [] for name in input_names}
        for index, instance in enumerate(instances):
            if len(input_names) == 1:
                name = input_names[0]
                named = isinstance(instance, dict) and set(instance) == {name}
                value = instance[name] if named else instance
                columns[name].append(_decode_value(value, f"instance {index}"))
                continue
            if not isinstance(instance, dict):
                raise ServingError("INVALID_ARGUMENT", f"instance {index} must be an object "
                                                       f"with {', '.join(input_names)}")
            check_input_names(instance, input_names, f"instance {index}: ")
            for name in input_names:
                columns[name].append(_decode_value(instance[name], f"instance {index}, {name}"))
        return {name: _to_array(values) for name, values in columns.items()}, True
    inputs = body["inputs"]
    if not isinstance(inputs, dict) or (len(input_names) == 1 and set(inputs) == {"b64"}):
        inputs = {input_names[0]: inputs}
    for name, value in inputs.items():
        if isinstance(value, list):
            check_region_count(len(value), max_regions, f"input {name!r}")
    return {name: _to_array(_decode_value(value, name)) for name, value in inputs.items()}, False


def _jsonable(value: np.ndarray) -> Any:
    if value.dtype == object:
        return [_jsonable(v) if isinstance(v, np.ndarray) else
                {"b64": base64.b64encode(v).decode()} for v in value]
    return value.tolist()


def format_predict_response(outputs: dict[str, np.ndarray], rows: bool) -> dict[str, Any]:
    names = sorted(outputs)
    if not rows:
        if len(names) == 1:
            return {"outputs": _jsonable(outputs[names[0]])}
        return {"outputs": {name: _jsonable(outputs[name]) for name in names}}
    count = len(next(iter(outputs.values())))
    columns = {name: _jsonable(outputs[name]) for name in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{name: columns[name][i] for name in names} for i in range(count)]}


def status_json(manager: ModelManager, version: int | None) -> dict[str, Any]:
    return {"model_version_status": [
        {"version": str(s.version), "state": s.state,
         "status": {"error_code": "OK" if not s.error else "UNKNOWN",
                    "error_message": s.error}}
        for s in manager.status(version)]}


def metadata_json(manager: ModelManager, version: int | None) -> dict[str, Any]:
    from google.protobuf import json_format
    from tensorflow.core.protobuf import meta_graph_pb2

    servable, _ = manager.servable(version)
    signature_map = {name: json_format.MessageToDict(proto)
                     for name, proto in servable.signature_defs.items()
                     if isinstance(proto, meta_graph_pb2.SignatureDef)}
    return {"model_spec": {"name": manager.name, "signature_name": "",
                           "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": signature_map}}}


# -- REST ---------------------------------------------------------------------------------------
class RestHandler(BaseHTTPRequestHandler):
    server_version = "masktfx-dev-model-server"
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm and delayed ACKs each
    # keep-alive request would wait for the peer's delayed ACK.
    disable_nagle_algorithm = True
    models: dict[str, ModelManager] = {}
    body_limit = DEFAULT_BODY_LIMIT
    metrics: ServingMetrics | None = None
    budget = InflightBudget(DEFAULT_MAX_INFLIGHT_BYTES, DEFAULT_INFLIGHT_WAIT_S)
    answering = threading.BoundedSemaphore(DEFAULT_REST_THREADS)  # predicts answered at once

    def log_message(self, fmt: str, *args: Any) -> None:  # route to logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except DISCONNECTED:
            self.close_connection = True
            log_disconnect(self.client_address)

    def _error(self, error: ServingError) -> None:
        self._send(error.http_status, {"error": error.message})

    def _route(self) -> tuple[ModelManager, int | None, dict[str, str]]:
        """The model, the version number asked for (None: by label or the newest), and the
        path's parts (`label` among them)."""
        match = _PATH.match(self.path.split("?", 1)[0])
        if not match:
            raise ServingError("NOT_FOUND", f"Malformed request: {self.command} {self.path}")
        parts = match.groupdict()
        manager = self.models.get(parts["name"])
        if manager is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest("
                                            f"{parts['name']})")
        version = None
        if parts["version"] is not None:
            if not _VERSION.match(parts["version"]):
                raise ServingError("INVALID_ARGUMENT",
                                   f"version {parts['version'][:40]!r} is not a version number "
                                   "(ASCII digits, at most 18)")
            version = int(parts["version"])
        return manager, version, parts

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] == METRICS_PATH and self.metrics is not None:
            data = self.metrics.exposition()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        try:
            manager, version, parts = self._route()
            if parts["verb"]:
                raise ServingError("NOT_FOUND", f"{parts['verb']} needs POST")
            if parts["label"]:
                version = manager.servable(label=parts["label"])[0].version
            if parts["metadata"]:
                self._send(200, metadata_json(manager, version))
            else:
                self._send(200, status_json(manager, version))
        except ServingError as error:
            self._error(error)

    def do_POST(self) -> None:  # noqa: N802
        if self.metrics is None:
            self._predict({})
            return
        with self.metrics.observe("rest") as labels:
            self._predict(labels)

    def _predict(self, labels: dict[str, str]) -> None:
        body_read = False
        try:
            length = (self.headers.get("Content-Length") or "").strip()
            if not _CONTENT_LENGTH.match(length):
                raise ServingError("INVALID_ARGUMENT", "Content-Length is required, as a number "
                                                       f"of bytes (got {length[:40]!r})")
            if int(length) > self.body_limit:
                raise ServingError("RESOURCE_EXHAUSTED",
                                   f"request body of {length} bytes is over the limit of "
                                   f"{self.body_limit} bytes")
            with self.budget.reserve() as held:
                held.grow(int(length), "the request body")
                raw = self.rfile.read(int(length))
                body_read = True
                # Sizing a body scans it, holding the interpreter lock: inside the slot too.
                # Small bodies take no slot: their lock time is short, and ordinary requests
                # must not queue behind a large one.
                with self.answering if len(raw) > SMALL_BODY_BYTES else contextlib.nullcontext():
                    held.grow(rest_body_cost(raw) - len(raw), "the parsed request")
                    self._answer(raw, labels, held)
        except ServingError as error:
            labels["code"] = error.code
            if not body_read:
                self.close_connection = True  # the body is not read
            self._error(error)
        except DISCONNECTED:  # the client left while its request was read
            labels["code"] = "CANCELLED"
            self.close_connection = True
            log_disconnect(self.client_address)
        except TimeoutError:  # the body did not arrive within --read-timeout
            labels["code"] = "DEADLINE_EXCEEDED"
            self.close_connection = True
            log.info("client %s sent no whole body within the read timeout", self.client_address[0])
        except Exception as exc:  # never let one request take the server down
            labels["code"] = "INTERNAL"
            log.exception("predict failed")
            self._send(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _answer(self, raw: bytes, labels: dict[str, str], held: Any) -> None:
        """Route, parse and run one predict request whose body is `raw`; `held` is its
        reservation of the server's budget."""
        manager, version, parts = self._route()
        labels["model"] = manager.name
        if parts["verb"] != "predict":
            raise ServingError("UNIMPLEMENTED" if parts["verb"] in ("classify", "regress")
                               else "NOT_FOUND",
                               f"{parts['verb'] or 'this path'} is not supported; use :predict")
        body, signature_name = parse_json_body(raw)
        # the one version lookup, by number, label or the newest
        resolved = manager.signature(signature_name, version, parts["label"] or "")
        labels.update(version=str(resolved[0].version), signature=resolved[1])
        input_names = sorted(resolved[2].structured_input_signature[1])
        inputs, rows = parse_predict_body(body, input_names, manager.max_regions)
        _, _, outputs = manager.call(resolved, inputs, held)
        if self.metrics is not None:
            self.metrics.count_regions(labels, outputs)
        self._send(200, format_predict_response(outputs, rows))


# What a client that hangs up mid-request raises on the server's side of its socket.
DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def log_disconnect(client_address: Any) -> None:
    """One line per dropped client, not a traceback: a client that drops connections in a loop
    must not flood the log."""
    host = client_address[0] if isinstance(client_address, tuple) else client_address
    log.info("client %s disconnected before its answer", host)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them: past that a connection gets
    503 at once and is closed, so idle or slow clients cannot pile up threads and sockets (the
    handler's timeout drops the ones that stall)."""

    # the listen backlog: socketserver's 5 makes the kernel drop connections in a burst, which
    # then retry for seconds instead of getting an answer
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int):
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = json.dumps({"error": f"the server holds {self.max_connections} connections, "
                                        "its limit (masktfx serve --max-connections); retry "
                                        "later"}).encode()
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                b"application/json\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver prints a traceback for any error; a client that hung up gets a line."""
        if isinstance(sys.exc_info()[1], DISCONNECTED):
            log_disconnect(client_address)
            return
        super().handle_error(request, client_address)
