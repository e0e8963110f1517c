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


def test_eight_clients_for_a_minute_across_two_pushes(tiny_model, tmp_path):
    model_dir, examples = tiny_model
    base = str(tmp_path / "serving" / "tiny")
    first, _, _ = publish_version(model_dir, base)
    rest_port, grpc_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "masktfx.cli", "serve", "--model-base-path", base,
         "--model-name", "tiny", "--rest-port", str(rest_port), "--grpc-port", str(grpc_port),
         "--poll-seconds", "0.5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        rest = RestClient(f"http://127.0.0.1:{rest_port}", "tiny", retries=0)
        deadline = time.monotonic() + 90
        while True:
            try:
                if rest.latest_version() == first:
                    break
            except Exception:  # not listening yet
                pass
            assert server.poll() is None, server.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the server never served the first version"
            time.sleep(0.2)
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
