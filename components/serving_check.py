"""The serving check before every push: the candidate is loaded in a fresh model server process the
way TF Serving loads it (as a numbered version, its warmup requests replayed), then called with the
warmup requests built from real test regions, over gRPC on a UNIX socket and, with `masktfx
serve`, over REST on 127.0.0.1: nothing the check opens is reachable from another machine. Its
answers must equal the in-process model's and come within a latency budget. The check writes an
InfraBlessing, which the Pusher requires.

TFX's InfraValidator does this with Docker or Kubernetes only, and does not run on KFP v2; this
component needs neither. It runs `tensorflow_model_server` when that binary is on PATH (as in
the tensorflow/serving image) and `masktfx serve` otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import logging
from tfx import types
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, path_utils

from masktfx import warmup
from masktfx.components.earlier_outputs import find_earlier

# TFX's InfraValidator marks its blessing with these files, and Pusher reads `blessed`.
INFRA_BLESSED = "INFRA_BLESSED"
INFRA_NOT_BLESSED = "INFRA_NOT_BLESSED"
REASON_PROPERTY = "serving_check"  # what was checked, or why it failed, in words
CHECK_RECORD = "masktfx-serving-check.json"  # what the check depended on, and its outcome
DEFAULT_LATENCY_BUDGET_MS = 2000.0
TF_SERVING_BINARY = "tensorflow_model_server"
_START_TIMEOUT_S = 180.0
_REPEATS = 3  # calls of each request per API; the slowest is held against the budget


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_command(base_path: str, model_name: str, rest_port: int, grpc_socket: str
                    ) -> tuple[list[str], bool]:
    """The server's command line, and whether it serves REST. Nothing it opens is reachable
    from another machine: gRPC goes over a UNIX socket; TF Serving binds its TCP ports on every
    interface (it has no host flag), so its TCP gRPC port and its REST API are off, while
    `masktfx serve` binds REST on 127.0.0.1."""
    binary = shutil.which(TF_SERVING_BINARY)
    if binary:
        return [binary, "--port=0", f"--grpc_socket_path={grpc_socket}", "--rest_api_port=0",
                f"--model_name={model_name}", f"--model_base_path={base_path}"], False
    return [sys.executable, "-m", "masktfx.cli", "serve", "--model-base-path", base_path,
            "--model-name", model_name, "--host", "127.0.0.1", "--rest-port", str(rest_port),
            "--grpc-socket-path", grpc_socket], True


def _http(url: str, body: dict | None = None) -> tuple[int, str]:
    """GET (or POST `body` as JSON); the status and the text, whatever the status."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def _json_value(value: Any) -> Any:
    """TF Serving's REST encoding of a tensor: nested lists, bytes as {"b64": ...}."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return value


class ServingCheckFailed(Exception):
    """The candidate cannot serve as the server would call it; the message says how."""


def _compare(where: str, expected: dict[str, Any], got: dict[str, Any]) -> None:
    import numpy as np

    if set(got) != set(expected):
        raise ServingCheckFailed(f"{where}: outputs {sorted(got)}, expected {sorted(expected)}")
    for name, value in expected.items():
        answer = np.asarray(got[name])
        if answer.shape != value.shape or not np.allclose(answer, value, atol=1e-5):
            raise ServingCheckFailed(f"{where}: output {name!r} differs from the in-process "
                                     f"model's (served {answer.tolist()[:4]}, in process "
                                     f"{value.tolist()[:4]})")


def check_serving(model_path: str, model_name: str, warmup_logs: list,
                  latency_budget_ms: float) -> str:
    """Serve `model_path` in a fresh process and call it with each warmup request over REST and
    gRPC; returns what was checked, in words, or raises ServingCheckFailed saying what failed."""
    import tensorflow as tf

    if not warmup_logs:
        raise ServingCheckFailed("no eval regions to build the requests from")
    loaded = tf.saved_model.load(model_path)
    expected = []
    for entry in warmup_logs:
        request = entry.predict_log.request
        function = loaded.signatures.get(request.model_spec.signature_name)
        if function is None:
            raise ServingCheckFailed(f"the model has no signature "
                                     f"{request.model_spec.signature_name!r}")
        outputs = function(**{name: tf.make_ndarray(proto)
                              for name, proto in request.inputs.items()})
        expected.append({name: value.numpy() for name, value in outputs.items()})

    with tempfile.TemporaryDirectory(prefix="masktfx-serving-check-") as folder:
        base_path = os.path.join(folder, model_name)
        version_dir = os.path.join(base_path, "1")
        io_utils.copy_dir(model_path, version_dir)
        warmup_path = os.path.join(version_dir, warmup.WARMUP_FILE)
        os.makedirs(os.path.dirname(warmup_path), exist_ok=True)
        with open(warmup_path, "wb") as handle:  # replayed by the server, as after a push
            handle.write(warmup.encode_warmup(warmup_logs))
        rest_port, grpc_socket = _free_port(), os.path.join(folder, "grpc.sock")
        command, has_rest = _server_command(base_path, model_name, rest_port, grpc_socket)
        log_path = os.path.join(folder, "server.log")
        with open(log_path, "w+", encoding="utf-8", errors="replace") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                channel = _channel(grpc_socket)
                _wait_until_served(server, log, channel, model_name)
                slowest = _call_apis(rest_port if has_rest else None, channel, model_name,
                                     warmup_logs, expected)
            finally:
                server.terminate()
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
    over = {api: ms for api, ms in slowest.items() if ms > latency_budget_ms}
    if over:
        raise ServingCheckFailed(", ".join(f"{api} took {ms:.0f} ms" for api, ms in over.items())
                                 + f", over the budget of {latency_budget_ms:g} ms")
    signatures = ", ".join(sorted({e.predict_log.request.model_spec.signature_name
                                   for e in warmup_logs}))
    served_by = TF_SERVING_BINARY if command[0].endswith(TF_SERVING_BINARY) else "masktfx serve"
    apis = " and ".join(api for api in ("REST", "gRPC") if api.lower() in slowest)
    times = ", ".join(f"{ms:.0f} ms ({api})" for api, ms in
                      (("REST", slowest.get("rest")), ("gRPC", slowest["grpc"])) if ms is not None)
    return (f"{served_by} answered {signatures} over {apis} as the model does in process; "
            f"slowest {times}")


def _channel(grpc_socket: str) -> Any:
    import grpc

    return grpc.insecure_channel(f"unix:{grpc_socket}", options=[
        ("grpc.max_receive_message_length", 64 * 2**20),
        ("grpc.max_send_message_length", 64 * 2**20)])


def _wait_until_served(server: subprocess.Popen, log: Any, channel: Any, model_name: str
                       ) -> None:
    """Until version 1 is AVAILABLE, asked over gRPC (ModelService.GetModelStatus), which both
    servers answer."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model_name
    request.model_spec.version.value = 1
    states = get_model_status_pb2.ModelVersionStatus.State
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            found = stub.GetModelStatus(request, timeout=5).model_version_status
        except grpc.RpcError:  # not listening yet, or the version is not known yet
            found = []
        if found and found[0].state == states.AVAILABLE:
            return
        if found and found[0].state == states.END:
            raise ServingCheckFailed("the server could not load the candidate: "
                                     + found[0].status.error_message)
        if server.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            tail = log.read()[-1500:]
            raise ServingCheckFailed(f"the server did not serve the candidate within "
                                     f"{_START_TIMEOUT_S:g} s (exit status {server.poll()}): "
                                     f"{tail}")
        time.sleep(0.25)


def _call_apis(rest_port: int | None, channel: Any, model_name: str, warmup_logs: list,
               expected: list[dict[str, Any]]) -> dict[str, float]:
    """Each request, _REPEATS times over gRPC and (with `rest_port`) REST, compared with the
    in-process answers; returns the slowest call per API, in ms."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    url = f"http://127.0.0.1:{rest_port}/v1/models/{model_name}/versions/1"
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    slowest = {"grpc": 0.0} if rest_port is None else {"rest": 0.0, "grpc": 0.0}
    for entry, wanted in zip(warmup_logs, expected):
        request = entry.predict_log.request
        signature = request.model_spec.signature_name
        body = {"signature_name": signature,
                "inputs": {name: _json_value(tf.make_ndarray(proto))
                           for name, proto in request.inputs.items()}}
        grpc_request = type(request)()
        grpc_request.CopyFrom(request)
        grpc_request.model_spec.name = model_name
        grpc_request.model_spec.version.value = 1
        for _ in range(_REPEATS):
            if rest_port is not None:
                started = time.monotonic()
                status, text = _http(f"{url}:predict", body)
                slowest["rest"] = max(slowest["rest"], (time.monotonic() - started) * 1000)
                if status != 200:
                    raise ServingCheckFailed(f"REST {signature}: {status} {text[:500]}")
                outputs = json.loads(text)["outputs"]
                if not isinstance(outputs, dict):  # a single output comes back bare
                    outputs = {next(iter(wanted)): outputs}
                _compare(f"REST {signature}", wanted, outputs)
            started = time.monotonic()
            try:
                answer = stub.Predict(grpc_request, timeout=60)
            except grpc.RpcError as error:
                raise ServingCheckFailed(f"gRPC {signature}: {error.code().name} "
                                         f"{error.details()}") from None
            slowest["grpc"] = max(slowest["grpc"], (time.monotonic() - started) * 1000)
            _compare(f"gRPC {signature}", wanted,
                     {name: tf.make_ndarray(proto) for name, proto in answer.outputs.items()})
    return slowest


MODEL_KEY = "model"
MODEL_BLESSING_KEY = "model_blessing"
EXAMPLES_KEY = "examples"
BLESSING_KEY = "blessing"
MODEL_NAME_KEY = "model_name"
LATENCY_BUDGET_KEY = "latency_budget_ms"
REGIONS_KEY = "regions"


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: dict[str, list[types.Artifact]],
           output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
        model_blessing = artifact_utils.get_single_instance(input_dict[MODEL_BLESSING_KEY])
        if not model_utils.is_model_blessed(model_blessing):
            _mark(blessing, False, "not checked: the Evaluator did not bless the model", {})
            return
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        model_name = exec_properties[MODEL_NAME_KEY]
        examples = input_dict[EXAMPLES_KEY]
        record = check_record(model, examples, exec_properties)
        # a re-run with no new data: the Evaluator blessed the same model again, so the same
        # requests would go to the same server; a check that passed is not repeated
        earlier = find_earlier(blessing.uri, CHECK_RECORD, record,
                               accept=lambda saved: saved.get("passed") is True)
        if earlier:
            reason = json.loads(io_utils.read_string_file(os.path.join(earlier, CHECK_RECORD)))[
                "reason"]
            logging.info("serving check of this model with these requests passed in %s; "
                         "reusing it", earlier)
            _mark(blessing, True, reason, {**record, "reused_from": earlier})
            return
        logs = warmup.warmup_requests_from(examples[-1].uri, int(exec_properties[REGIONS_KEY]),
                                           model_name)
        try:
            done = check_serving(path_utils.serving_model_path(model.uri), model_name, logs,
                                 float(exec_properties[LATENCY_BUDGET_KEY]))
        except ServingCheckFailed as failed:
            logging.error("serving check failed: %s", failed)
            _mark(blessing, False, str(failed), record)
            return
        logging.info("serving check passed: %s", done)
        _mark(blessing, True, done, record)


def check_record(model: types.Artifact, examples: list[types.Artifact],
                 exec_properties: dict[str, Any]) -> dict[str, Any]:
    """What a check's outcome depends on: the model, the regions, the settings, the server."""
    return {"model": model.uri, "examples": sorted(artifact.uri for artifact in examples),
            "model_name": exec_properties[MODEL_NAME_KEY],
            "latency_budget_ms": float(exec_properties[LATENCY_BUDGET_KEY]),
            "regions": int(exec_properties[REGIONS_KEY]),
            "server": shutil.which(TF_SERVING_BINARY) or "masktfx serve"}


def _mark(blessing: types.Artifact, blessed: bool, reason: str, record: dict[str, Any]
          ) -> None:
    io_utils.write_string_file(
        os.path.join(blessing.uri, CHECK_RECORD),
        json.dumps({**record, "passed": blessed, "reason": reason}, indent=1))
    io_utils.write_string_file(
        os.path.join(blessing.uri, INFRA_BLESSED if blessed else INFRA_NOT_BLESSED), "")
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property(REASON_PROPERTY, reason)


class ServingCheckSpec(ComponentSpec):
    PARAMETERS = {MODEL_NAME_KEY: ExecutionParameter(type=str),
                  LATENCY_BUDGET_KEY: ExecutionParameter(type=float),
                  REGIONS_KEY: ExecutionParameter(type=int)}
    INPUTS = {MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
              MODEL_BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
              EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing)}


class ServingCheck(base_component.BaseComponent):
    """Between the Evaluator and the Pusher: an InfraBlessing for a candidate that serves."""

    SPEC_CLASS = ServingCheckSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
                 examples: types.BaseChannel, model_name: str,
                 latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS,
                 regions: int = warmup.DEFAULT_WARMUP_REGIONS):
        spec = ServingCheckSpec(
            model=model, model_blessing=model_blessing, examples=examples,
            model_name=model_name, latency_budget_ms=latency_budget_ms, regions=regions,
            blessing=types.Channel(type=standard_artifacts.InfraBlessing))
        super().__init__(spec=spec)
