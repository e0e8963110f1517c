"""`masktfx serve` under hostile and careless clients: limits checked before anything is
allocated, the same region checks for every signature, HTTP edges answered with 400, and clients
that stall dropped rather than piling up. Real HTTP and gRPC calls on loopback."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from conftest import patched_jpeg, square_mask
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from masktfx import features
from masktfx.images import encode_png
from masktfx.records import make_example
from masktfx.serving.models import ModelManager, wait_for_version
from masktfx.serving.server import ModelServer
from masktfx.tf_errors import op_message

MAX_REGIONS = 4
MAX_CONNECTIONS = 8
READ_TIMEOUT_S = 1.0
MAX_DECODED_BYTES = 64 * 2**10


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    model_dir, _ = tiny_model
    base = tmp_path_factory.mktemp("limits") / "tiny"
    shutil.copytree(model_dir, base / "1")
    manager = ModelManager("tiny", str(base), poll_seconds=0.2, max_regions=MAX_REGIONS,
                           max_decoded_bytes=MAX_DECODED_BYTES)
    served = ModelServer({"tiny": manager}, rest_port=0, grpc_port=0,
                         max_connections=MAX_CONNECTIONS, read_timeout_s=READ_TIMEOUT_S)
    served.start()
    wait_for_version(manager)
    yield served
    served.stop()


IMAGE = encode_png(np.random.default_rng(0).integers(0, 200, (20, 20)).astype(np.uint8))
MASK = encode_png(square_mask(20, 5, 15))
EMPTY_MASK = encode_png(np.zeros((20, 20), np.uint8))
SMALL_MASK = encode_png(square_mask(10, 2, 8))


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def _post(server, body: dict, path: str = "/v1/models/tiny:predict") -> tuple[int, dict]:
    response = requests.post(f"http://127.0.0.1:{server.rest_port}{path}", json=body, timeout=30)
    return response.status_code, response.json()


def _raw(count: int, mask_count: int | None = None) -> dict:
    return {"signature_name": features.RAW_SIGNATURE, "inputs": {
        features.IMAGES_KEY: [[_b64(IMAGE)]] * count,
        features.MASKS_KEY: [[_b64(MASK)]] * (count if mask_count is None else mask_count)}}


def _stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _grpc_request(images, masks) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = features.RAW_SIGNATURE
    request.inputs[features.IMAGES_KEY].CopyFrom(images)
    request.inputs[features.MASKS_KEY].CopyFrom(masks)
    return request


def test_requests_over_the_region_limit_are_refused_before_anything_is_decoded(server):
    assert _post(server, _raw(MAX_REGIONS))[0] == 200
    status, payload = _post(server, _raw(MAX_REGIONS + 1))
    assert status == 413 and f"the limit is {MAX_REGIONS} per request" in payload["error"]
    rows = {"signature_name": features.RAW_SIGNATURE, "instances": [
        {features.IMAGES_KEY: [_b64(IMAGE)], features.MASKS_KEY: [_b64(MASK)]}] * 50}
    status, payload = _post(server, rows)
    assert status == 413 and "holds 50 regions" in payload["error"]

    # gRPC: a tiny message declaring a huge [N, 1] tensor is refused from its declared shape
    huge = tf.make_tensor_proto(np.array([[IMAGE]], dtype=object))
    huge.tensor_shape.dim[0].size = 4_000_000
    masks = tf.make_tensor_proto(np.array([[MASK]], dtype=object))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        _stub(server).Predict(_grpc_request(huge, masks), timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "holds 4000000 regions" in error.value.details()
    assert time.monotonic() - started < 2.0
    # within the limit, but declaring more values than it holds
    padded = tf.make_tensor_proto(np.array([[IMAGE]], dtype=object))
    padded.tensor_shape.dim[0].size = 3
    with pytest.raises(grpc.RpcError) as error:
        _stub(server).Predict(_grpc_request(padded, masks), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "declares shape [3, 1] (3 values) but holds 1" in error.value.details()


def test_a_tensor_declaring_values_it_does_not_hold_is_refused_whatever_its_dtype(server):
    """56 bytes declaring a [1, 50,000,000] string tensor with no values, and the same lie in
    packed bytes and typed fields of other dtypes: refused from the count, nothing filled."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    masks = tf.make_tensor_proto(np.array([[MASK]], dtype=object))

    def declared(dtype: int, dims: list[int], **values) -> tensor_pb2.TensorProto:
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims]), **values)

    for proto, holds in ((declared(types_pb2.DT_STRING, [MAX_REGIONS, 1]), 0),
                         (declared(types_pb2.DT_FLOAT, [MAX_REGIONS, 1],
                                   tensor_content=b"\0" * 8), 2),
                         (declared(types_pb2.DT_INT64, [MAX_REGIONS, 1], int64_val=[1]), 1)):
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as error:
            _stub(server).Predict(_grpc_request(proto, masks), timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"({MAX_REGIONS} values) but holds {holds}" in error.value.details()
        assert time.perf_counter() - started < 2.0
    # a shape the signature does not take (predict_raw's images are [regions, 1 view]): refused
    # from the declaration, before any value is read
    for dims in ([1, 50_000_000], [1, 1, 1], [1]):  # the 56-byte probe first
        wrong = declared(types_pb2.DT_STRING, dims, string_val=[IMAGE] if dims != [
            1, 50_000_000] else [])
        with pytest.raises(grpc.RpcError) as error:
            _stub(server).Predict(_grpc_request(wrong, masks), timeout=30)
        assert f"declares shape {dims}; the signature takes ['any', 1]" in error.value.details()
    odd = declared(types_pb2.DT_FLOAT, [1, 1], tensor_content=b"\0" * 3)
    with pytest.raises(grpc.RpcError) as error:
        _stub(server).Predict(_grpc_request(odd, masks), timeout=30)
    assert "whole values" in error.value.details()


def test_a_request_that_would_decode_to_more_than_the_limit_is_refused_from_its_headers(server):
    # a few hundred bytes of PNG that decode to 120 KB of RGB, with its 40 KB mask
    big_image = encode_png(np.zeros((200, 200, 3), np.uint8))
    big_mask = encode_png(square_mask(200, 50, 150))
    assert len(big_image) + len(big_mask) < 4096
    raw = {"signature_name": features.RAW_SIGNATURE, "inputs": {
        features.IMAGES_KEY: [[_b64(big_image)]], features.MASKS_KEY: [[_b64(big_mask)]]}}
    by_example = {"instances": [_b64(make_example([big_image], [big_mask]).SerializeToString())]}
    for body in (raw, by_example):
        status, payload = _post(server, body)
        assert status == 413, payload
        assert "decode to 0.2 MiB; the limit is 0.0625 MiB per request" in payload["error"]
        assert "--max-decoded-mb" in payload["error"]
    request = _grpc_request(tf.make_tensor_proto(np.array([[big_image]], dtype=object)),
                            tf.make_tensor_proto(np.array([[big_mask]], dtype=object)))
    with pytest.raises(grpc.RpcError) as error:
        _stub(server).Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the limit is 0.0625 MiB per request" in error.value.details()
    assert _post(server, _raw(MAX_REGIONS))[0] == 200  # small regions, up to the region limit


def test_a_jpeg_whose_header_claims_more_than_its_data_holds_is_refused(server):
    image = patched_jpeg(20, 60)
    mask = encode_png(square_mask(60, 10, 50))
    status, payload = _post(server, {"signature_name": features.RAW_SIGNATURE, "inputs": {
        features.IMAGES_KEY: [[_b64(image)]], features.MASKS_KEY: [[_b64(mask)]]}})
    assert status == 400 and payload["error"].startswith("instance 0, images[0]: cannot decode "
                                                         "JPEG (truncated or corrupt)"), payload


def test_the_inputs_of_a_request_must_agree_on_the_number_of_regions(server):
    status, payload = _post(server, _raw(2, mask_count=3))
    assert status == 400
    assert "agree on the number of regions: images has 2, masks has 3" in payload["error"]
    images = tf.make_tensor_proto(np.array([[IMAGE]] * 2, dtype=object))
    masks = tf.make_tensor_proto(np.array([[MASK]] * 1, dtype=object))
    with pytest.raises(grpc.RpcError) as error:
        _stub(server).Predict(_grpc_request(images, masks), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images has 2, masks has 1" in error.value.details()


def test_serving_default_gets_the_same_region_checks_as_predict_raw(server):
    def by_example(*examples: bytes) -> tuple[int, dict]:
        return _post(server, {"instances": [_b64(e) for e in examples]})

    good = make_example([IMAGE], [MASK]).SerializeToString()
    assert by_example(good, good)[0] == 200
    for mask, reason in ((EMPTY_MASK, "empty"), (SMALL_MASK, "10x10")):
        bad = make_example([IMAGE], [mask]).SerializeToString()
        status, payload = by_example(good, bad)
        raw_status, raw_payload = _post(server, {
            "signature_name": features.RAW_SIGNATURE,
            "instances": [{features.IMAGES_KEY: [_b64(IMAGE)], features.MASKS_KEY: [_b64(MASK)]},
                          {features.IMAGES_KEY: [_b64(IMAGE)], features.MASKS_KEY: [_b64(mask)]}]})
        assert status == raw_status == 400, payload
        assert payload["error"] == raw_payload["error"]
        assert payload["error"].startswith("instance 1, masks[0]") and reason in payload["error"]
    status, payload = by_example(b"\xff\x00 not a proto")
    assert status == 400 and "instance 0: not a serialized tf.Example" in payload["error"]
    status, payload = by_example(make_example([IMAGE], []).SerializeToString())
    assert status == 400 and "has no masks bytes" in payload["error"]


def _raw_http(server, request: bytes) -> tuple[int, str]:
    """Send bytes as they are (requests would fix a bad header) and read one response."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        headers = {}
        while line := reader.readline().strip():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.lower()] = value.strip()
        body = reader.read(int(headers.get("content-length", 0)))
    return status, body.decode()


def test_http_edges_get_400_with_a_message(server):
    body = json.dumps(_raw(1))
    for path, expected in ((f"/v1/models/tiny/versions/{'9' * 5000}:predict", "version"),
                           ("/v1/models/tiny/versions/%D9%A3:predict", "version"),
                           ("/v1/models/tiny/versions/-1:predict", "version")):
        response = requests.post(f"http://127.0.0.1:{server.rest_port}{path}", data=body,
                                 timeout=30)
        assert response.status_code == 400 and expected in response.json()["error"], path
    for length in (b"12abc", b"\xd9\xa3", b"99999999999999999999"):
        status, text = _raw_http(server, b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                                         b"Content-Length: " + length + b"\r\n\r\n{}")
        assert status == 400 and "Content-Length" in text, length
    nested = "[" * 10000 + "]" * 10000
    status, text = _raw_http(server, b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: " + str(len(nested)).encode() + b"\r\n\r\n"
                             + nested.encode())
    assert status == 400 and "nested too deeply" in text
    status, payload = _post(server, {**_raw(1), "signature_name": ["x"]})
    assert status == 400 and "signature_name" in payload["error"]
    assert _post(server, _raw(1))[0] == 200


def test_a_client_that_hangs_up_is_a_log_line_not_a_traceback(server, caplog, capfd):
    """Clients that send a predict request and reset the connection at once, in a loop: the
    server logs one line for each it notices, writes no traceback, and keeps answering."""
    import logging
    import struct

    body = json.dumps(_raw(1)).encode()
    request = (f"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
               f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="masktfx.serve"):
        for _ in range(30):
            client = socket.create_connection(("127.0.0.1", server.rest_port), timeout=5)
            client.sendall(request)
            # close with a reset (linger 0), so the server's writes fail rather than buffer
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        # the server's threads finish with the dropped connections (until then the connection
        # limit may answer 503), then it answers as before
        deadline = time.monotonic() + 60
        while (status := _post(server, _raw(1))[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err, err[-2000:]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert any("disconnected before its answer" in r.getMessage() for r in caplog.records)


def test_clients_that_stall_are_dropped_and_cannot_pile_up(server):
    threads_before = threading.active_count()
    stalled = []
    for _ in range(MAX_CONNECTIONS * 3):  # headers started, never finished
        sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        stalled.append(sock)
    time.sleep(0.3)
    # past the cap, connections are answered 503 at once rather than queued
    refused = 0
    for sock in stalled:
        sock.settimeout(0.2)
        try:
            refused += b" 503 " in sock.recv(4096)
        except TimeoutError:
            pass
    assert refused >= MAX_CONNECTIONS
    assert threading.active_count() <= threads_before + MAX_CONNECTIONS + 2
    # once the read timeout has dropped the stalled ones, the server answers in well under 1 s
    time.sleep(READ_TIMEOUT_S + 0.5)
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=5)
    connection.request("GET", "/v1/models/tiny")
    assert connection.getresponse().status == 200
    assert time.monotonic() - started < 1.0
    for sock in stalled:
        sock.close()


def test_tensorflow_errors_reach_the_client_whole():
    @tf.function
    def check(value):
        tf.debugging.assert_positive(value, message="the mask of region 3 is empty")
        return value

    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        check(tf.constant([-1.0]))
    assert str(error.value).startswith("Graph execution error:")
    message = op_message(error.value)
    assert "the mask of region 3 is empty" in message
    assert not message.startswith("Graph execution error") and "Detected at node" not in message


def test_the_served_graph_refuses_what_the_dev_server_refuses_with_the_same_message(
        server, tiny_model):
    """Real TF Serving runs no Python check: the graph itself stops on an empty mask, a mask of
    another size and views that disagree, with the words `masktfx serve` answers."""
    from masktfx.config import PipelineConfig
    from masktfx.modules.transform import transform_regions
    from masktfx.serving.models import ServingError, check_signature_regions

    model_dir, _ = tiny_model
    loaded = tf.saved_model.load(model_dir)
    for mask in (EMPTY_MASK, SMALL_MASK):
        images, masks = [[IMAGE], [IMAGE]], [[MASK], [mask]]
        status, payload = _post(server, {"signature_name": features.RAW_SIGNATURE, "inputs": {
            features.IMAGES_KEY: [[_b64(i) for i in row] for row in images],
            features.MASKS_KEY: [[_b64(m) for m in row] for row in masks]}})
        assert status == 400 and payload["error"].startswith("instance 1, masks[0]: ")
        examples = [make_example(i, m).SerializeToString() for i, m in zip(images, masks)]
        calls = {features.RAW_SIGNATURE: {"images": tf.constant(images),
                                          "masks": tf.constant(masks)},
                 features.SERVING_SIGNATURE: {"examples": tf.constant(examples)}}
        for name, inputs in calls.items():
            with pytest.raises(tf.errors.InvalidArgumentError) as error:
                loaded.signatures[name](**inputs)
            assert payload["error"] in op_message(error.value), (name, op_message(error.value))

    other = encode_png(np.zeros((24, 20), np.uint8))
    arrays = {features.IMAGES_KEY: np.array([[IMAGE, other]], dtype=object),
              features.MASKS_KEY: np.array([[MASK]], dtype=object)}
    with pytest.raises(ServingError) as refused:
        check_signature_regions(arrays, 10**6)
    assert "co-registered" in refused.value.message
    config = PipelineConfig(num_views=2, num_masks=1, channels=1, image_size=8)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        tf.function(lambda views, masks: transform_regions(views, masks, config))(
            tf.constant(arrays[features.IMAGES_KEY].tolist()),
            tf.constant(arrays[features.MASKS_KEY].tolist()))
    assert refused.value.message in op_message(error.value), op_message(error.value)


def test_a_grpc_predict_message_that_is_not_a_predict_request_is_an_invalid_argument(server):
    """Predict reads its message itself: bytes that do not parse are the client's error."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as error:
        predict(b"\xff\xff\xff", timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a PredictRequest" in error.value.details()
    channel.close()


def test_a_large_model_call_waits_for_the_one_running_while_small_ones_are_answered(
        server, monkeypatch):
    """Model calls whose images decode to more than the limit run one at a time in the server;
    smaller calls never wait for them."""
    from masktfx.serving import models

    # one region decodes to 800 bytes (a 20x20 gray image and its mask): small; two: large
    monkeypatch.setattr(models, "LARGE_MODEL_CALL_BYTES", 1000)
    answers: list[int] = []
    with models.LARGE_MODEL_CALLS:  # a large call is running
        assert _post(server, _raw(1))[0] == 200
        waiter = threading.Thread(target=lambda: answers.append(_post(server, _raw(2))[0]))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not answers
    waiter.join(timeout=30)
    assert answers == [200]
