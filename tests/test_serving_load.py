"""`masktfx serve` under load: 8 clients for 60 s while two new versions are pushed (slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from masktfx.components.versioned_pusher import publish_version
from masktfx.serving.client import GrpcClient, RestClient

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS = 60
CLIENTS = 8


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(base: str, version: int, *flags: str
                  ) -> tuple[subprocess.Popen, RestClient, int]:
    """`masktfx serve` in its own process, once it serves `version`: (process, REST client,
    gRPC port). Its output goes to a file beside the model, so no pipe can fill and stall it."""
    rest_port, grpc_port = _free_port(), _free_port()
    log = open(f"{base}.log", "w+", encoding="utf-8")  # the server writes to it until it stops
    server = subprocess.Popen(
        [sys.executable, "-m", "masktfx.cli", "serve", "--model-base-path", base,
         "--model-name", "tiny", "--rest-port", str(rest_port), "--grpc-port", str(grpc_port),
         "--poll-seconds", "0.5", *flags], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        text=True)
    rest = RestClient(f"http://127.0.0.1:{rest_port}", "tiny", retries=0)
    deadline = time.monotonic() + 90
    while True:
        try:
            if rest.latest_version() == version:
                return server, rest, grpc_port
        except Exception:  # not listening yet
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            log.seek(0)
            raise AssertionError(f"the server never served the first version: "
                                 f"{log.read()[-2000:]}")
        time.sleep(0.2)


def test_eight_clients_for_a_minute_across_two_pushes(tiny_model, tmp_path):
    model_dir, examples = tiny_model
    base = str(tmp_path / "serving" / "tiny")
    first, _, _ = publish_version(model_dir, base)
    server, rest, grpc_port = _start_server(base, first)
    try:
        grpc_client = GrpcClient(f"127.0.0.1:{grpc_port}", "tiny", retries=0)
        images = [[image] for _, image, _ in examples[:4]]
        masks = [[mask] for _, _, mask in examples[:4]]
        for client in (rest, grpc_client):  # warm both paths before the baseline
            for _ in range(20):
                client.predict_regions(images, masks)
        baseline = _rss_mb(server.pid)

        failures: list[str] = []
        seen: set[int] = set()
        counts = [0] * CLIENTS
        stop = threading.Event()

        def loop(index: int) -> None:
            client = rest if index % 2 else grpc_client
            while not stop.is_set():
                try:
                    predictions = client.predict_regions(images, masks)
                    seen.update(p.model_version for p in predictions)
                    counts[index] += 1
                except Exception as exc:  # every failure is recorded and fails the test
                    failures.append(repr(exc))

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        pushed, peak = [], baseline
        for at in (SECONDS / 3, 2 * SECONDS / 3):
            while time.monotonic() - started < at:
                peak = max(peak, _rss_mb(server.pid))
                time.sleep(0.5)
            # a new version: the same weights under a new number, as a re-push would be
            copy = str(tmp_path / f"model-{len(pushed)}")
            shutil.copytree(model_dir, copy)
            pushed.append(publish_version(copy, base)[0])
        while time.monotonic() - started < SECONDS:
            peak = max(peak, _rss_mb(server.pid))
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        final_status = {s["version"]: s["state"] for s in rest.status()}
        time.sleep(2)  # let the last unload settle
        after = _rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert not failures, failures[:5]
    assert min(counts) > 0 and sum(counts) > 100, counts
    assert seen == {first, *pushed}, (seen, first, pushed)
    assert final_status == {str(first): "END", str(pushed[0]): "END",
                            str(pushed[1]): "AVAILABLE"}, final_status
    # back near the baseline once the old versions are unloaded (not growing with versions)
    assert after <= baseline * 1.25 + 64, (baseline, peak, after)


def _huge_png(side: int) -> bytes:
    """A real PNG of side x side zeros: some 50 KB that decode to side**2 bytes."""
    import numpy as np

    from masktfx.images import encode_png

    return encode_png(np.zeros((side, side), np.uint8))


def test_a_hostile_probe_leaves_the_server_answering_and_its_memory_near_baseline(tiny_model,
                                                                                  tmp_path):
    """Stalled clients past the connection cap, a gRPC call declaring millions of regions, a
    REST body of thousands of tiny regions, and requests of few regions that would decode to
    gigabytes: each refused, the server's memory stays within 1.5x of its baseline, and it
    answers its status call within 1 s afterwards."""
    import base64
    import socket

    import grpc
    import numpy as np
    import requests
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from masktfx import features

    model_dir, examples = tiny_model
    base = str(tmp_path / "serving" / "tiny")
    first, _, _ = publish_version(model_dir, base)
    server, rest, grpc_port = _start_server(base, first, "--read-timeout", "2")
    images = [[image] for _, image, _ in examples[:4]]
    masks = [[mask] for _, _, mask in examples[:4]]
    stalled: list[socket.socket] = []
    try:
        grpc_client = GrpcClient(f"127.0.0.1:{grpc_port}", "tiny", retries=0)
        for client in (rest, grpc_client):  # warm both paths before the baseline
            for _ in range(20):
                client.predict_regions(images, masks)
        baseline = _rss_mb(server.pid)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_mb(server.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        url = f"{rest.url}/v1/models/tiny:predict"
        for _ in range(300):  # more than --max-connections, each stalled inside its headers
            sock = socket.create_connection(("127.0.0.1", int(rest.url.rsplit(":", 1)[1])),
                                            timeout=10)
            sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Le")
            stalled.append(sock)
        time.sleep(2.5)  # the read timeout drops them; the cap kept them from piling up

        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))

        def grpc_call(image_list: list[bytes], declared: int) -> grpc.StatusCode:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tiny"
            request.model_spec.signature_name = features.RAW_SIGNATURE
            for key, items in ((features.IMAGES_KEY, image_list),
                               (features.MASKS_KEY, [examples[0][2]] * len(image_list))):
                proto = tf.make_tensor_proto(np.array([[item] for item in items], dtype=object))
                proto.tensor_shape.dim[0].size = declared
                request.inputs[key].CopyFrom(proto)
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request, timeout=60)
            return error.value.code()

        assert grpc_call([examples[0][1]], 4_000_000) == grpc.StatusCode.RESOURCE_EXHAUSTED
        tiny = {"b64": base64.b64encode(examples[0][1]).decode()}
        body = {"signature_name": features.RAW_SIGNATURE, "inputs": {
            features.IMAGES_KEY: [[tiny]] * 4000, features.MASKS_KEY: [[tiny]] * 4000}}
        assert requests.post(url, json=body, timeout=60).status_code == 413
        # 7000 x 7000 each: under max_pixels one by one, 12 GB for 256 of them
        huge = _huge_png(7000)
        encoded = {"b64": base64.b64encode(huge).decode()}
        body = {"signature_name": features.RAW_SIGNATURE, "inputs": {
            features.IMAGES_KEY: [[encoded]] * 256, features.MASKS_KEY: [[encoded]] * 256}}
        response = requests.post(url, json=body, timeout=60)
        assert response.status_code == 413 and "--max-decoded-mb" in response.json()["error"]
        assert grpc_call([huge] * 30, 30) == grpc.StatusCode.RESOURCE_EXHAUSTED

        started = time.monotonic()
        assert requests.get(f"{rest.url}/v1/models/tiny", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        assert len(grpc_client.predict_regions(images, masks)) == 4
        done.set()
        sampler.join()
    finally:
        for sock in stalled:
            sock.close()
        server.terminate()
        server.wait(timeout=30)
    assert peak[0] <= baseline * 1.5, (baseline, peak[0])


def _peak_and_cpu(pid: int) -> tuple[float, float]:
    """The process's peak RSS since the last reset, in MB, and its CPU seconds so far."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        peak = next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM:"))
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return peak, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # VmHWM starts again from the current RSS


def test_each_small_request_that_lies_costs_the_server_little_memory_and_cpu(tiny_model,
                                                                             tmp_path):
    """The family of issue #34, each request under 64 KB: tensors declaring values they do not
    hold (every way of carrying values), shapes the signature does not take, millions of
    declared regions, JSON nested deep or made of numbers, batches that disagree, JPEGs whose
    header claims more than their data. Each is refused, and costs the server at most 50 MB of
    peak memory and 0.5 s of CPU."""
    import base64
    import json

    import grpc
    import numpy as np
    import requests
    import tensorflow as tf
    from conftest import patched_jpeg
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from masktfx import features

    model_dir, examples = tiny_model
    base = str(tmp_path / "serving" / "tiny")
    first, _, _ = publish_version(model_dir, base)
    server, rest, grpc_port = _start_server(base, first)
    image, mask = examples[0][1], examples[0][2]

    def declared(dtype: int, dims: list[int], **values) -> tensor_pb2.TensorProto:
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims]), **values)

    def strings(*rows: list[bytes]) -> tensor_pb2.TensorProto:
        return tf.make_tensor_proto(np.array(rows, dtype=object))

    def grpc_request(signature: str, **inputs) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tiny"
        request.model_spec.signature_name = signature
        for key, proto in inputs.items():
            request.inputs[key].CopyFrom(proto)
        return request

    raw, examples_key = features.RAW_SIGNATURE, features.EXAMPLES_INPUT
    lying_jpeg = patched_jpeg(16, 60000)
    grpc_family = {
        "the 56-byte probe": grpc_request(raw, images=declared(types_pb2.DT_STRING,
                                                               [1, 50_000_000]),
                                          masks=strings([mask])),
        "50M strings, one held": grpc_request(raw, images=declared(
            types_pb2.DT_STRING, [50_000_000, 1], string_val=[image]), masks=strings([mask])),
        "packed floats declaring 10^9": grpc_request(raw, images=declared(
            types_pb2.DT_FLOAT, [250_000_000, 1], tensor_content=b"\0" * 8),
            masks=strings([mask])),
        "int64 declaring 10^9": grpc_request(raw, images=declared(
            types_pb2.DT_INT64, [1, 10**9], int64_val=[1]), masks=strings([mask])),
        "examples declaring 10^9": grpc_request(features.SERVING_SIGNATURE, **{
            examples_key: declared(types_pb2.DT_STRING, [10**9])}),
        "batches that disagree": grpc_request(raw, images=strings([image]),
                                              masks=strings([mask], [mask])),
        "a lying JPEG": grpc_request(raw, images=strings([lying_jpeg]), masks=strings([mask])),
    }
    nested = b'{"inputs": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    rest_family = {
        "JSON nested 30,000 deep": nested,
        "JSON of 20,000 numbers": json.dumps({"signature_name": raw, "inputs": {
            "images": [0] * 10_000, "masks": [0] * 10_000}}).encode(),
        "1,000 regions": json.dumps({"signature_name": raw, "instances": [
            {"images": [{"b64": ""}], "masks": [{"b64": ""}]}] * 1_000}).encode(),
        "a lying JPEG": json.dumps({"signature_name": raw, "inputs": {
            "images": [[{"b64": base64.b64encode(lying_jpeg).decode()}]],
            "masks": [[{"b64": base64.b64encode(mask).decode()}]]}}).encode(),
    }
    costs: dict[str, tuple[float, float]] = {}
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        url = f"{rest.url}/v1/models/tiny:predict"
        for name, request in grpc_family.items():  # once each first: lazy imports and tracing
            assert request.ByteSize() < 64 * 2**10, name
            with pytest.raises(grpc.RpcError):
                stub.Predict(request, timeout=60)
        for name, body in rest_family.items():
            assert len(body) < 64 * 2**10, name
            assert requests.post(url, data=body, timeout=60).status_code in (400, 413)
        for name, request in grpc_family.items():
            _reset_peak(server.pid)
            rss, cpu = _rss_mb(server.pid), _peak_and_cpu(server.pid)[1]
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request, timeout=60)
            assert error.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                          grpc.StatusCode.RESOURCE_EXHAUSTED), name
            peak, cpu_after = _peak_and_cpu(server.pid)
            costs[f"gRPC {name}"] = (peak - rss, cpu_after - cpu)
        for name, body in rest_family.items():
            _reset_peak(server.pid)
            rss, cpu = _rss_mb(server.pid), _peak_and_cpu(server.pid)[1]
            assert requests.post(url, data=body, timeout=60).status_code in (400, 413), name
            peak, cpu_after = _peak_and_cpu(server.pid)
            costs[f"REST {name}"] = (peak - rss, cpu_after - cpu)
        assert requests.get(f"{rest.url}/v1/models/tiny", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    over = {name: cost for name, cost in costs.items() if cost[0] > 50 or cost[1] > 0.5}
    assert not over, f"(MB of peak memory, CPU seconds) over the target: {over}"
