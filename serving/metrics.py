"""Prometheus metrics of `masktfx serve`, at TF Serving's path for them
(`/monitoring/prometheus/metrics` on the REST port, as `--monitoring_config_file` sets it up
there): requests, their latency and errors per model, version, signature and API, and the
regions answered, per model and version, by whether the model found them in distribution."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from masktfx import features

METRICS_PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    """One registry per server, so several servers in one process keep apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version", "signature", "api")
        self.requests = Counter("masktfx_serving_requests", "Predict requests, by outcome",
                                (*labels, "code"), registry=self.registry)
        self.latency = Histogram("masktfx_serving_request_latency_seconds",
                                 "Predict latency, from the request read to the answer",
                                 labels, registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                          10, 30))
        # out-of-distribution answers per version: a rising "false" count is new data the model
        # was not trained for, before any label says it does worse there
        self.regions = Counter("masktfx_serving_regions",
                               "Regions answered, by the model's in_distribution output",
                               ("model", "version", "in_distribution"), registry=self.registry)

    @contextmanager
    def observe(self, api: str) -> Iterator[dict[str, str]]:
        """Times one request; the caller fills in model, version, signature and code as its
        routing learns them (an error before they are known counts them as "")."""
        labels = {"model": "", "version": "", "signature": "", "code": "OK"}
        started = time.perf_counter()
        try:
            yield labels
        finally:
            self.requests.labels(labels["model"], labels["version"], labels["signature"], api,
                                 labels["code"]).inc()
            self.latency.labels(labels["model"], labels["version"], labels["signature"],
                                api).observe(time.perf_counter() - started)

    def count_regions(self, labels: dict[str, str], outputs: dict[str, np.ndarray]) -> None:
        """The regions of one answer, by its `in_distribution` output ("unknown" for a model
        without one)."""
        if features.PROBABILITY_OUTPUT not in outputs:
            return
        count = int(np.size(outputs[features.PROBABILITY_OUTPUT]))
        found = outputs.get(features.IN_DISTRIBUTION_OUTPUT)
        if found is None:
            self.regions.labels(labels["model"], labels["version"], "unknown").inc(count)
            return
        inside = int(np.count_nonzero(found))
        self.regions.labels(labels["model"], labels["version"], "true").inc(inside)
        self.regions.labels(labels["model"], labels["version"], "false").inc(count - inside)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
