"""`masktfx serve`'s Prometheus metrics: requests, latencies and errors per model, version,
signature and API, and answered regions by `in_distribution`, read back through Prometheus' own
text parser."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from conftest import b64, serving, square_mask
from prometheus_client.parser import text_string_to_metric_families

from masktfx import features
from masktfx.images import encode_png
from masktfx.serving.client import GrpcClient, ServingClientError
from masktfx.serving.metrics import METRICS_PATH


def _samples(url: str) -> dict[tuple, float]:
    response = requests.get(url, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_requests_latencies_and_errors_per_model_version_signature_and_api(tiny_model,
                                                                            tmp_path):
    model_dir, _ = tiny_model
    with serving(model_dir, str(tmp_path / "tiny"), "tiny", version=7) as server:
        image = encode_png(np.random.default_rng(0).integers(0, 200, (20, 20)).astype(np.uint8))
        mask = encode_png(square_mask(20, 5, 15))
        empty = encode_png(np.zeros((20, 20), np.uint8))
        rest = f"http://127.0.0.1:{server.rest_port}"

        def raw(mask_bytes: bytes) -> int:
            body = {"signature_name": features.RAW_SIGNATURE, "instances": [
                {features.IMAGES_KEY: [b64(image)],
                 features.MASKS_KEY: [b64(mask_bytes)]}]}
            return requests.post(f"{rest}/v1/models/tiny:predict", json=body,
                                 timeout=30).status_code

        assert [raw(mask), raw(mask), raw(empty)] == [200, 200, 400]
        grpc = GrpcClient(f"127.0.0.1:{server.grpc_port}", "tiny", retries=0)
        answered = grpc.predict_regions([[image]], [[mask]])
        with pytest.raises(ServingClientError):
            grpc.predict_regions([[image]], [[empty]])
        samples = _samples(rest + METRICS_PATH)

    def count(api: str, code: str) -> float:
        labels = (("api", api), ("code", code), ("model", "tiny"),
                  ("signature", features.RAW_SIGNATURE), ("version", "7"))
        return samples.get(("masktfx_serving_requests_total", labels), 0.0)

    assert (count("rest", "OK"), count("rest", "INVALID_ARGUMENT")) == (2.0, 1.0)
    assert (count("grpc", "OK"), count("grpc", "INVALID_ARGUMENT")) == (1.0, 1.0)
    latency = (("api", "rest"), ("model", "tiny"), ("signature", features.RAW_SIGNATURE),
               ("version", "7"))
    assert samples[("masktfx_serving_request_latency_seconds_count", latency)] == 3.0
    assert samples[("masktfx_serving_request_latency_seconds_sum", latency)] > 0

    # the 3 regions answered (2 REST, 1 gRPC; refused ones are not answers), by the model's
    # in_distribution output for that same region
    regions = {flag: samples.get(("masktfx_serving_regions_total", (
        ("in_distribution", flag), ("model", "tiny"), ("version", "7"))), 0.0)
        for flag in ("true", "false")}
    assert sum(regions.values()) == 3.0
    assert regions["true" if answered[0].in_distribution else "false"] == 3.0
