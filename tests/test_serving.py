"""`masktfx serve` and the client: real HTTP and gRPC on loopback, a real SavedModel."""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import requests
import tensorflow as tf
from conftest import square_mask, write_png

from masktfx import cli
from masktfx.images import encode_png
from masktfx.serving.client import GrpcClient, RestClient, ServingClientError
from masktfx.serving.models import ModelManager, wait_for_version
from masktfx.serving.server import ModelServer


def _in_process(model_dir: str, images: list[bytes], masks: list[bytes]) -> np.ndarray:
    loaded = tf.saved_model.load(model_dir)
    out = loaded.signatures["predict_raw"](images=tf.constant([[i] for i in images]),
                                           masks=tf.constant([[m] for m in masks]))
    return out["probability"].numpy()


@pytest.fixture
def served(tiny_model, tmp_path):
    model_dir, examples = tiny_model
    base = tmp_path / "models" / "tiny"
    base.mkdir(parents=True)
    shutil.copytree(model_dir, base / "1")
    manager = ModelManager("tiny", str(base), poll_seconds=0.2)
    server = ModelServer({"tiny": manager}, rest_port=0, grpc_port=0, body_limit=2**20)
    server.start()
    wait_for_version(manager)
    yield server, base, examples, model_dir
    server.stop()


def test_rest_and_grpc_match_the_model_called_in_process(served):
    server, _, examples, model_dir = served
    images = [img for _, img, _ in examples]
    masks = [mask for _, _, mask in examples]
    expected = _in_process(model_dir, images, masks)
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}", "tiny")
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "tiny")
    for client in (rest, grpc_client):
        predictions = client.predict_regions([[i] for i in images], [[m] for m in masks])
        np.testing.assert_allclose([p.probability for p in predictions], expected, atol=1e-5)
        assert {p.model_version for p in predictions} == {1}
        assert [p.label for p in predictions] == [int(p >= 0.5) for p in expected]
    assert rest.status() == [{"version": "1", "state": "AVAILABLE",
                              "status": {"error_code": "OK", "error_message": ""}}]
    assert grpc_client.status()[0]["state"] == "AVAILABLE"
    signatures = rest.metadata()["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "predict_raw", "transform_features"} <= set(signatures)
    assert "predict_raw" in grpc_client.metadata().signature_def

    # columnar form and serving_default over serialized examples, over plain HTTP
    from masktfx.records import make_example

    url = f"http://127.0.0.1:{server.rest_port}/v1/models/tiny:predict"
    serialized = make_example([images[0]], [masks[0]]).SerializeToString()
    body = {"inputs": {"examples": [{"b64": base64.b64encode(serialized).decode()}]}}
    outputs = requests.post(url, json=body, timeout=30).json()["outputs"]
    assert abs(outputs["probability"][0] - expected[0]) < 1e-5


def test_predict_cli_over_rest_and_grpc(served, tmp_path, capsys):
    server, _, examples, model_dir = served
    _, image, mask = examples[1]
    (tmp_path / "a.png").write_bytes(image)
    (tmp_path / "m.png").write_bytes(mask)
    expected = _in_process(model_dir, [image], [mask])[0]
    for target in (["--server", f"http://127.0.0.1:{server.rest_port}"],
                   ["--grpc", f"127.0.0.1:{server.grpc_port}"]):
        assert cli.main(["predict", *target, "--model", "tiny", "--image",
                         str(tmp_path / "a.png"), "--mask", str(tmp_path / "m.png")]) == 0
        result = json.loads(capsys.readouterr().out.strip())
        assert abs(result["probability"] - expected) < 1e-5 and result["model_version"] == 1


def _post(server, body, raw=None, path="tiny:predict"):
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{path}"
    response = requests.post(url, data=raw if raw is not None else json.dumps(body), timeout=30)
    return response.status_code, response.json().get("error", "")


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def test_bad_inputs_get_400_and_the_server_keeps_serving(served):
    server, _, examples, _ = served
    _, image, mask = examples[0]
    big_mask = encode_png(square_mask(40, 5, 30))

    def raw_request(images, masks):
        return {"signature_name": "predict_raw",
                "instances": [{"images": images, "masks": masks}]}

    cases = [
        (None, b"{not json", "not valid JSON"),
        (raw_request([{"b64": "!!!notbase64"}], [_b64(mask)]), None, "invalid base64"),
        (raw_request([_b64(b"plain text, not an image")], [_b64(mask)]), None,
         "images[0]: not a PNG, JPEG or TIFF"),
        (raw_request([_b64(image)], [_b64(big_mask)]), None, "mask is 40x40 but the image"),
        (raw_request([_b64(image), _b64(image)], [_b64(mask)]), None,
         "input 'images' has shape [1, 2]"),
        ({"signature_name": "predict_raw", "instances": []}, None, "non-empty list"),
        ({"signature_name": "nope", "instances": [{"images": [_b64(image)]}]}, None,
         "signature 'nope' not found"),
    ]
    for body, raw, message in cases:
        status, error = _post(server, body, raw)
        assert status == 400, (message, status, error)
        assert message in error, (message, error)
    assert _post(server, raw_request([_b64(image)], [_b64(mask)]), path="other:predict")[0] == 404
    assert _post(server, raw_request([_b64(image)], [_b64(mask)]),
                 path="tiny/versions/9:predict")[0] == 404
    too_big = json.dumps({"instances": ["x" * (2**20 + 10)]})
    assert _post(server, None, too_big.encode())[0] == 413
    # gRPC: the same checks, as INVALID_ARGUMENT
    client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "tiny")
    with pytest.raises(ServingClientError) as error:
        client.predict_regions([[b"not an image"]], [[mask]])
    assert error.value.code == "INVALID_ARGUMENT" and "not a PNG" in error.value.message
    with pytest.raises(ServingClientError) as error:
        client.predict_regions([[image]], [[big_mask]])
    assert error.value.code == "INVALID_ARGUMENT"
    # still serving
    status, _ = _post(server, raw_request([_b64(image)], [_b64(mask)]))
    assert status == 200


def test_a_new_version_is_loaded_then_switched_without_failed_requests(served):
    server, base, examples, model_dir = served
    _, image, mask = examples[0]
    client = RestClient(f"http://127.0.0.1:{server.rest_port}", "tiny", retries=0)
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "tiny", retries=0)
    seen, failures, stop = set(), [], threading.Event()

    def loop(c):
        while not stop.is_set():
            try:
                seen.update(p.model_version for p in c.predict_regions([[image]], [[mask]]))
            except Exception as exc:  # every failure is recorded and fails the test
                failures.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(c,)) for c in (client, grpc_client)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    staging = base / ".partial-2"
    shutil.copytree(model_dir, staging)
    os.rename(staging, base / "2")  # how the VersionedPusher publishes
    deadline = time.monotonic() + 60
    while 2 not in seen and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert seen == {1, 2}
    states = {s["version"]: s["state"] for s in client.status()}
    assert states == {"2": "AVAILABLE", "1": "END"}


def test_predict_cli_with_a_manifest_reports_bad_rows(served, tmp_path, capsys):
    server, _, examples, _ = served
    for index, (_, image, mask) in enumerate(examples[:3]):
        (tmp_path / f"i{index}.png").write_bytes(image)
        (tmp_path / f"m{index}.png").write_bytes(mask)
    write_png(str(tmp_path / "rgba.png"), np.zeros((20, 20, 4), np.uint8) + 255)
    (tmp_path / "manifest.csv").write_text(
        "id,image,mask,label\na,i0.png,m0.png,1\nb,i1.png,m1.png,0\n"
        "c,i2.png,rgba.png,1\nd,missing.png,m0.png,1\n")
    assert cli.main(["predict", "--server", f"http://127.0.0.1:{server.rest_port}",
                     "--model", "tiny", "--manifest", str(tmp_path / "manifest.csv"),
                     "--batch-size", "2"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_id = {line["id"]: line for line in lines}
    assert set(by_id) == {"a", "b", "c", "d"}
    assert "probability" in by_id["a"] and "probability" in by_id["b"]
    assert "single-channel" in by_id["c"]["error"]
    assert "file not found" in by_id["d"]["error"]


def test_batcher_merges_concurrent_requests_and_isolates_a_failing_one():
    from masktfx.serving.batching import Batcher, BatchingParameters

    calls: list[int] = []

    def double(batch):
        values = batch["x"]
        calls.append(len(values))
        if (values < 0).any():
            raise ValueError("negative input")
        return {"y": values * 2}

    batcher = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000,
                                         num_batch_threads=1))
    results: dict[int, object] = {}

    def request(i):
        try:
            results[i] = batcher.submit("model", double, {"x": np.array([i, i + 100])})["y"]
        except ValueError as exc:
            results[i] = exc

    threads = [threading.Thread(target=request, args=(i,)) for i in (1, 2, 3, -5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    for i in (1, 2, 3):  # each request gets its own rows back, in order
        np.testing.assert_array_equal(results[i], [2 * i, 2 * (i + 100)])
    assert isinstance(results[-5], ValueError)
    assert max(calls) > 2, calls  # at least one call merged several requests
    assert all(size <= 8 for size in calls)


def test_server_side_batching_gives_the_same_answers(tiny_model, tmp_path):
    from masktfx.serving.batching import BatchingParameters

    model_dir, examples = tiny_model
    base = tmp_path / "tiny"
    shutil.copytree(model_dir, base / "1")
    manager = ModelManager("tiny", str(base), batching=BatchingParameters(
        max_batch_size=16, batch_timeout_micros=50_000, num_batch_threads=2))
    server = ModelServer({"tiny": manager}, rest_port=0, grpc_port=0)
    server.start()
    try:
        wait_for_version(manager)
        images = [img for _, img, _ in examples[:12]]
        masks = [mask for _, _, mask in examples[:12]]
        expected = _in_process(model_dir, images, masks)
        rest = RestClient(f"http://127.0.0.1:{server.rest_port}", "tiny")
        grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "tiny")
        got: dict[int, float] = {}
        errors: list[str] = []

        def call(i):
            client = rest if i % 2 else grpc_client
            try:
                got[i] = client.predict_regions([[images[i]]], [[masks[i]]])[0].probability
            except Exception as exc:  # recorded, fails the test below
                errors.append(repr(exc))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        np.testing.assert_allclose([got[i] for i in range(len(images))], expected, atol=1e-5)
        assert manager.batcher.rows_run == len(images)
        assert manager.batcher.batches_run < len(images)
        # a bad request in the mix still gets its own 400
        with pytest.raises(ServingClientError) as error:
            rest.predict_regions([[b"not an image"]], [[masks[0]]])
        assert "not a PNG" in error.value.message
    finally:
        server.stop()
