"""bench/serving --budget: the server's memory while many clients send the largest request its
limits allow, and its status call's latency meanwhile."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import base64  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from serving_processes import rss_mb, start_server, wait_until_served  # noqa: E402

from masktfx import features  # noqa: E402


def largest_request(views: int, masks: int, regions: int, decoded_bytes: int,
                    body_limit: int) -> tuple[list[list[bytes]], list[list[bytes]]]:
    """`regions` regions of `views` gray images and `masks` masks, each as large as the decoded
    limit allows; the images are noise in as many rows as keep the JSON body (base64) under
    `body_limit`, and flat elsewhere."""
    from masktfx.images import encode_png

    side = int((decoded_bytes / regions / (views + masks)) ** 0.5) - 1
    rng = np.random.default_rng(0)
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 255
    encoded_mask = encode_png(mask)
    per_region_limit = 0.95 * body_limit * 3 / 4 / regions - masks * len(encoded_mask)
    rows = side
    while True:
        image = np.full((side, side), 90, np.uint8)
        image[:rows] = rng.integers(0, 256, (rows, side), dtype=np.uint8)
        encoded = encode_png(image)
        if views * len(encoded) <= per_region_limit or rows <= 1:
            break
        rows = int(rows * per_region_limit / (views * len(encoded)) * 0.95)
    return [[encoded] * views] * regions, [[encoded_mask] * masks] * regions


HEALTH_CHECKER = """
import json, sys, time, urllib.error, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
latencies, failures = [], {}
stop = time.monotonic() + seconds
while time.monotonic() < stop:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            code = answer.status
    except urllib.error.HTTPError as error:
        code = error.code
    except OSError as error:
        code = type(error).__name__
    latencies.append(time.monotonic() - started)
    if code != 200:
        failures[str(code)] = failures.get(str(code), 0) + 1
    time.sleep(0.2)
print(json.dumps({"calls": len(latencies), "failures": failures,
                  "slowest_s": round(max(latencies), 3),
                  "p99_s": round(sorted(latencies)[int(0.99 * (len(latencies) - 1))], 3)}))
"""


def budget_run(model_base_path: str, version: int, views: int, masks: int, clients: int,
               seconds: float, grpc_clients: int | None = None,
               server_flags: list[str] | None = None) -> dict:
    """The server's memory while `clients` clients send the largest request its default limits
    allow, and its status call's latency meanwhile (see the module's docstring)."""
    import http.client

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from masktfx.serving.client import RestClient
    from masktfx.serving.limits import (
        DEFAULT_MAX_DECODED_BYTES,
        DEFAULT_MAX_INFLIGHT_BYTES,
        DEFAULT_MAX_REGIONS,
    )
    from masktfx.serving.server import DEFAULT_BODY_LIMIT

    images, region_masks = largest_request(views, masks, DEFAULT_MAX_REGIONS,
                                           DEFAULT_MAX_DECODED_BYTES, DEFAULT_BODY_LIMIT)
    body = json.dumps({"signature_name": features.RAW_SIGNATURE, "inputs": {
        features.IMAGES_KEY: [[{"b64": base64.b64encode(i).decode()} for i in row]
                              for row in images],
        features.MASKS_KEY: [[{"b64": base64.b64encode(m).decode()} for m in row]
                             for row in region_masks]}}).encode()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "bench"
    request.model_spec.signature_name = features.RAW_SIGNATURE
    request.model_spec.version.value = version
    request.inputs[features.IMAGES_KEY].CopyFrom(tf.make_tensor_proto(np.array(images, object)))
    request.inputs[features.MASKS_KEY].CopyFrom(tf.make_tensor_proto(np.array(region_masks,
                                                                              object)))
    server, rest_url, grpc_target = start_server(model_base_path, server_flags or [])
    try:
        wait_until_served(RestClient(rest_url, "bench", retries=0), version, server)
        RestClient(rest_url, "bench", retries=0).predict_regions(images[:1], region_masks[:1],
                                                                 version)
        idle = rss_mb(server.pid)
        with open(f"/proc/{server.pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # VmHWM from here on
        answers: dict[str, int] = {}
        lock = threading.Lock()
        stop = time.monotonic() + seconds
        host, port = rest_url.removeprefix("http://").rsplit(":", 1)
        channel = grpc.insecure_channel(grpc_target, options=[
            ("grpc.max_send_message_length", 2 * DEFAULT_BODY_LIMIT),
            ("grpc.max_receive_message_length", 2 * DEFAULT_BODY_LIMIT)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        said: dict[str, str] = {}  # the first message of each kind of answer

        def count(answer: str, message: str = "") -> None:
            with lock:
                answers[answer] = answers.get(answer, 0) + 1
                said.setdefault(answer, message[:300])

        # Refused, a client waits a second before it tries again, as clients with retries do
        # (this machine's cores are shared by the clients and the server: clients that retry
        # at once would mostly measure themselves).
        def rest_client() -> None:
            while time.monotonic() < stop:
                connection = http.client.HTTPConnection(host, int(port), timeout=120)
                status = 0
                try:
                    connection.request("POST", "/v1/models/bench:predict", body,
                                       {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    status = response.status
                    count(f"REST {status}", response.read().decode("utf-8", "replace"))
                except OSError as error:  # refused before its body was read: it closed
                    count(f"REST {type(error).__name__}", str(error))
                finally:
                    connection.close()
                if status != 200:
                    time.sleep(1.0)

        def grpc_client() -> None:
            while time.monotonic() < stop:
                try:
                    stub.Predict(request, timeout=120)
                    count("gRPC OK")
                except grpc.RpcError as error:
                    count(f"gRPC {error.code().name}", error.details() or "")
                    time.sleep(1.0)

        checker = subprocess.Popen([sys.executable, "-c", HEALTH_CHECKER,
                                    f"{rest_url}/v1/models/bench", str(seconds)],
                                   stdout=subprocess.PIPE, text=True)
        on_grpc = clients // 2 if grpc_clients is None else grpc_clients
        threads = [threading.Thread(target=grpc_client if index < on_grpc else rest_client)
                   for index in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        health = json.loads(checker.communicate()[0])
        peak = rss_mb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=60)
    budget_mb = DEFAULT_MAX_INFLIGHT_BYTES / 2**20
    return {"clients": clients, "grpc_clients": on_grpc, "seconds": seconds,
            "server_flags": server_flags or [],
            "request": {"regions": len(images), "body_mb": round(len(body) / 2**20, 1),
                        "image_side": int(np.sqrt(DEFAULT_MAX_DECODED_BYTES / len(images)
                                                  / (views + masks))) - 1},
            "answers": dict(sorted(answers.items())), "first_messages": said,
            "idle_rss_mb": round(idle),
            "peak_rss_mb": round(peak), "budget_mb": budget_mb,
            "peak_to_idle_plus_budget": round(peak / (1.5 * idle + budget_mb), 3),
            "status_calls": health,
            "targets": {"peak_rss_mb": f"<= 1.5 x idle + budget = {1.5 * idle + budget_mb:.0f}",
                        "status_slowest_s": "<= 1"}}
