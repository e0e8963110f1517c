"""A TF Serving client for MaskTFX models, over REST or gRPC; works against the real TF Serving and
against `masktfx serve` alike.

Predictions come with the model version that made them: over gRPC the response says it; over REST
(whose predict response does not) the client asks for the newest available version first and
sends the request to that version's URL.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from masktfx import features

GRPC_MESSAGE_LIMIT = 64 * 2**20  # images are large; gRPC's default is 4 MB


class ServingClientError(RuntimeError):
    """The server refused or failed the request; `message` is the server's own words."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Prediction:
    probability: float
    label: int
    model_version: int
    ood_score: float | None = None  # None: a model trained before it had one
    in_distribution: bool | None = None


def _optional(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


def _with_retries(call: Callable[[], Any], retries: int, backoff: float) -> Any:
    """Retry only what says 'try again later' (HTTP 503, gRPC UNAVAILABLE)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except ServingClientError as error:
            if error.code not in ("UNAVAILABLE", "503") or attempt == retries:
                raise
            time.sleep(backoff * 2 ** attempt)
    raise AssertionError("unreachable")


class RestClient:
    """TF Serving's REST API over keep-alive connections, one per calling thread.

    Plain `http.client` rather than a higher-level library: at one region per request the
    client's own overhead is a large share of the latency (docs/benchmarks.md).
    """

    def __init__(self, url: str, model: str, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.25):
        parsed = urllib.parse.urlsplit(url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"server URL must look like http://HOST:PORT, got {url!r}")
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._scheme = parsed.scheme
        self._netloc = parsed.netloc
        self._prefix = parsed.path
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = (http.client.HTTPSConnection if self._scheme == "https"
                    else http.client.HTTPConnection)
            connection = kind(self._netloc, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _model_url(self, version: int | None, label: str = "") -> str:
        base = f"{self.url}/v1/models/{self.model}"
        if label:
            return f"{base}/labels/{urllib.parse.quote(label, safe='')}"
        return base if version is None else f"{base}/versions/{version}"

    def _exchange(self, method: str, path: str, data: bytes | None) -> tuple[int, str, bytes]:
        """One request on this thread's connection; a stale keep-alive connection is reopened."""
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for fresh in (False, True):
            connection = self._connection()
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                if response.will_close:
                    self._drop_connection()
                return response.status, response.reason, payload
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                self._drop_connection()
                if fresh:
                    raise
            except BaseException:
                self._drop_connection()
                raise
        raise AssertionError("unreachable")

    def _request(self, method: str, url: str, body: dict | None = None) -> dict:
        path = self._prefix + url[len(self.url):]
        data = None if body is None else json.dumps(body).encode("utf-8")

        def once() -> dict:
            try:
                status, reason, raw = self._exchange(method, path, data)
            except TimeoutError:
                raise ServingClientError("DEADLINE_EXCEEDED",
                                         f"no answer from {url} in {self.timeout} s") from None
            except (OSError, http.client.HTTPException) as exc:
                raise ServingClientError("UNREACHABLE", f"cannot connect to {url}: {exc}") \
                    from None
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"error": raw[:500].decode("utf-8", "replace")}
            if status != 200:
                code = "UNAVAILABLE" if status == 503 else str(status)
                message = payload.get("error", reason) if isinstance(payload, dict) else reason
                raise ServingClientError(code, message)
            return payload

        return _with_retries(once, self.retries, self.backoff)

    def status(self, version: int | None = None, label: str = "") -> list[dict[str, Any]]:
        return self._request("GET", self._model_url(version, label))["model_version_status"]

    def metadata(self, version: int | None = None) -> dict[str, Any]:
        return self._request("GET", self._model_url(version) + "/metadata")

    def latest_version(self, label: str = "") -> int:
        """The newest available version, or the one `label` points at."""
        available = [int(s["version"]) for s in self.status(label=label)
                     if s["state"] == "AVAILABLE"]
        if not available:
            raise ServingClientError("UNAVAILABLE", f"no version of {self.model} is available")
        return max(available)

    def predict(self, body: dict[str, Any], version: int | None = None) -> dict[str, Any]:
        return self._request("POST", self._model_url(version) + ":predict", body)

    def predict_regions(self, images: Sequence[Sequence[bytes]], masks: Sequence[Sequence[bytes]],
                        version: int | None = None, label: str = "") -> list[Prediction]:
        """Many regions in one request, through the `predict_raw` signature. TF Serving's REST
        answer does not say which version answered, so the version (newest, or the label's) is
        looked up first and the request pinned to it."""
        body = {"signature_name": features.RAW_SIGNATURE, "instances": [
            {features.IMAGES_KEY: [{"b64": base64.b64encode(i).decode()} for i in views],
             features.MASKS_KEY: [{"b64": base64.b64encode(m).decode()} for m in region]}
            for views, region in zip(images, masks)]}
        for attempt in range(3):
            chosen = version if version is not None else self.latest_version(label)
            try:
                predictions = self.predict(body, chosen)["predictions"]
                break
            except ServingClientError as error:
                # the version was unloaded (or the label moved) between the status and the
                # predict: ask again
                if version is not None or error.code != "404" or attempt == 2:
                    raise
        return [Prediction(float(p[features.PROBABILITY_OUTPUT]),
                           int(p[features.PREDICTED_LABEL_OUTPUT]), chosen,
                           _optional(p.get(features.OOD_SCORE_OUTPUT), float),
                           _optional(p.get(features.IN_DISTRIBUTION_OUTPUT), bool))
                for p in predictions]


class GrpcClient:
    def __init__(self, target: str, model: str, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.25):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
            ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _call(self, method: Callable, request: Any) -> Any:
        import grpc

        def once() -> Any:
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as error:
                raise ServingClientError(error.code().name, error.details() or "") from None

        return _with_retries(once, self.retries, self.backoff)

    def _spec(self, spec: Any, version: int | None, signature: str = "", label: str = ""
              ) -> None:
        spec.name = self.model
        if label:
            spec.version_label = label
        elif version is not None:
            spec.version.value = version
        if signature:
            spec.signature_name = signature

    def status(self, version: int | None = None, label: str = "") -> list[dict[str, Any]]:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, version, label=label)
        response = self._call(self._models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [{"version": str(s.version), "state": states.Name(s.state),
                 "status": {"error_message": s.status.error_message}}
                for s in response.model_version_status]

    def metadata(self, version: int | None = None) -> Any:
        """The SignatureDefMap of the served version."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, version)
        response = self._call(self._predict.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return signature_map

    def predict_regions(self, images: Sequence[Sequence[bytes]], masks: Sequence[Sequence[bytes]],
                        version: int | None = None, label: str = "") -> list[Prediction]:
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, version, features.RAW_SIGNATURE, label)
        request.inputs[features.IMAGES_KEY].CopyFrom(
            tf.make_tensor_proto(np.array([list(v) for v in images], dtype=object)))
        request.inputs[features.MASKS_KEY].CopyFrom(
            tf.make_tensor_proto(np.array([list(m) for m in masks], dtype=object)))
        response = self._call(self._predict.Predict, request)
        outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        probability = outputs[features.PROBABILITY_OUTPUT]
        label = outputs[features.PREDICTED_LABEL_OUTPUT]
        ood = outputs.get(features.OOD_SCORE_OUTPUT, [None] * len(probability))
        inside = outputs.get(features.IN_DISTRIBUTION_OUTPUT, [None] * len(probability))
        served = response.model_spec.version.value
        return [Prediction(float(p), int(v), served, _optional(o, float), _optional(i, bool))
                for p, v, o, i in zip(probability, label, ood, inside)]
