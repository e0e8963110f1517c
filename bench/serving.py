"""bench/serving: latency and throughput of `masktfx serve` (REST and gRPC) against the same
SavedModel called in process, in one run.

For 1 and 32 regions per request and 1 and 8 concurrent clients: p50/p99 latency (ms) and
requests/s, for the server without and with server-side batching (`+batching`). Each server is
`masktfx serve` in its own process, as deployed; the clients are threads of this process.
Targets: REST adds at most 3 ms p50 over in process for one region; throughput at 8 clients at
least 0.7x the in-process figure.

Also the first request after a version switch, with the version's TF Serving warmup requests
(`assets.extra/tf_serving_warmup_requests`, which the server replays before the version is
AVAILABLE) and without them: a running server is given new versions one after another, and the
first REST request to each is timed (`--switches` of them per mode, median).

Also, with `--budget`, the server's memory under `--clients` clients (half REST, half gRPC)
that each send, again and again (a second after a refusal), the largest request its limits
allow (`--max-regions` regions decoding to just under `--max-decoded-mb`, the body under
`--body-limit-mb`), while another
process asks for the model's status every 0.2 s: idle and peak RSS (VmHWM), the answers by
status, the status call's slowest answer. Target: peak at most 1.5x idle plus the server-wide
budget (`--max-inflight-mb`), the status answered within 1 s throughout.

And, with `--throughput-vs TREE`, ordinary requests (1 and 32 regions, 8 clients, REST and gRPC)
against this tree's server and the server of another checkout, in turns, `--rounds` times:
the median ratio of requests/s. The other checkout needs its subpackages where Python finds
them: `git worktree add /tmp/ref REV; for d in components modules pipeline serving; do ln -s
../$d /tmp/ref/masktfx/$d; done`.

    python bench/serving.py [--model-base-path demo/pipeline/serving/masktfx-demo] [--seconds 5]
    python bench/serving.py --first-request-only [--switches 5]
    python bench/serving.py --budget [--clients 128] [--seconds 60]
    python bench/serving.py --throughput-vs /tmp/ref [--rounds 5]

The model is a pushed version folder's parent (run `make demo` first for the default).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from masktfx import features  # noqa: E402
from masktfx.demo_data import write_synthetic  # noqa: E402
from masktfx.manifest import read_manifest  # noqa: E402


def run_load(call, clients: int, seconds: float) -> dict:
    """`clients` threads calling `call()` for `seconds`; latency percentiles and requests/s."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    errors: list[str] = []

    def worker() -> None:
        mine = []
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                call()
            except Exception as exc:  # counted, and reported
                errors.append(repr(exc))
                continue
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    values = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors),
            "p50_ms": round(float(np.percentile(values, 50)), 2),
            "p99_ms": round(float(np.percentile(values, 99)), 2),
            "requests_per_s": round(len(latencies) / elapsed, 1)}


def start_server(model_base_path: str, flags: list[str], tree: str = ROOT
                 ) -> tuple[subprocess.Popen, str, str]:
    """`masktfx serve` of the checkout `tree` in its own process, as deployed; its REST URL and
    gRPC target.

    A server sharing the benchmark's process would share its interpreter lock with the
    clients and be charged for their work.
    """
    command = [sys.executable, "-m", "masktfx.cli", "serve", "--model-base-path",
               os.path.abspath(model_base_path), "--model-name", "bench", "--rest-port", "0",
               "--grpc-port", "0", *flags]
    environment = {**os.environ, "PYTHONPATH": tree}
    server = subprocess.Popen(command, cwd=tree, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=environment)
    line = server.stdout.readline()  # the server prints where it listens once it is bound
    found = re.search(r"REST (http://\S+), gRPC (\S+)", line)
    if not found:
        server.kill()
        sys.exit(f"`masktfx serve` did not start (exit {server.wait()}): {line!r}")
    return server, found.group(1), found.group(2)


def wait_until_served(client, version: int, server: subprocess.Popen,
                      timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"`masktfx serve` exited ({server.returncode}) before loading the model")
        try:
            if any(s["version"] == str(version) and s["state"] == "AVAILABLE"
                   for s in client.status()):
                return
        except Exception:  # noqa: BLE001  (not loaded yet: keep polling until the deadline)
            pass
        time.sleep(0.2)
    sys.exit(f"version {version} was not AVAILABLE within {timeout:.0f} s")


def first_request_after_switches(version_dir: str, warmup: bool, switches: int,
                                 images: list, masks: list) -> list[float]:
    """Seconds of the first request to each of `switches` new versions (copies of
    `version_dir`, with or without their warmup file) pushed into a running server."""
    import shutil

    from masktfx.components.warmup import WARMUP_FILE
    from masktfx.serving.client import RestClient

    base = tempfile.mkdtemp(prefix="bench-switch-")

    def push(version: int) -> None:
        target = os.path.join(base, str(version))
        shutil.copytree(version_dir, target + ".partial")
        if not warmup and os.path.exists(os.path.join(target + ".partial", WARMUP_FILE)):
            os.remove(os.path.join(target + ".partial", WARMUP_FILE))
        os.rename(target + ".partial", target)

    push(1)
    server, rest_url, _ = start_server(base, ["--poll-seconds", "0.2"])
    client = RestClient(rest_url, "bench", retries=0)
    firsts = []
    try:
        wait_until_served(client, 1, server)
        client.predict_regions(images[:1], masks[:1], 1)
        for version in range(2, switches + 2):
            push(version)
            wait_until_served(client, version, server)
            started = time.perf_counter()
            client.predict_regions(images[:1], masks[:1], version)
            firsts.append(time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    return firsts


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


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


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
               seconds: float, grpc_clients: int | None = None) -> dict:
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
    server, rest_url, grpc_target = start_server(model_base_path, [])
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


def throughput_vs(reference_tree: str, model_base_path: str, version: int, images: list,
                  masks: list, rounds: int, seconds: float) -> dict:
    """Requests/s of ordinary requests against this tree's server and the reference tree's,
    in turns (which goes first alternates); per case, each round's ratio (this / reference)
    and their median."""
    from masktfx.serving.client import GrpcClient, RestClient

    clients = {}
    servers = []
    try:
        for tree_name, tree in (("this", ROOT), ("reference", os.path.abspath(reference_tree))):
            server, rest_url, grpc_target = start_server(model_base_path, [], tree)
            servers.append(server)
            clients[tree_name] = {"rest": RestClient(rest_url, "bench", retries=0),
                                  "grpc": GrpcClient(grpc_target, "bench", retries=0)}
            wait_until_served(clients[tree_name]["rest"], version, server)
        found: dict = {}
        for regions in (1, 32):
            for api in ("rest", "grpc"):
                key = f"{api}/regions={regions}/clients=8"
                ratios = []
                for round_index in range(rounds):
                    measured = {}
                    order = ("this", "reference") if round_index % 2 else ("reference", "this")
                    for tree_name in order:
                        client = clients[tree_name][api]

                        def call(c=client, i=images[:regions], m=masks[:regions]) -> None:
                            c.predict_regions(i, m, version)

                        call()
                        measured[tree_name] = run_load(call, 8, seconds)["requests_per_s"]
                    ratios.append(measured["this"] / measured["reference"])
                found[key] = {"ratios": [round(r, 3) for r in ratios],
                              "median_ratio": round(float(np.median(ratios)), 3)}
                print(key, found[key], file=sys.stderr)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    return {"rounds": rounds, "seconds_per_measurement": seconds, "runs": found,
            "target": "median ratio >= 0.95 in every case"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base-path", default="demo/pipeline/serving/masktfx-demo")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-micros", type=int, default=0)
    parser.add_argument("--switches", type=int, default=5,
                        help="version switches timed per mode (with and without warmup)")
    parser.add_argument("--first-request-only", action="store_true",
                        help="measure only the first request after a switch")
    parser.add_argument("--budget", action="store_true",
                        help="measure only the memory under clients sending the largest "
                             "requests")
    parser.add_argument("--clients", type=int, default=128, help="with --budget")
    parser.add_argument("--grpc-clients", type=int, default=None,
                        help="with --budget: how many of them use gRPC (default half)")
    parser.add_argument("--throughput-vs", metavar="TREE",
                        help="measure only throughput against the server of this checkout")
    parser.add_argument("--rounds", type=int, default=5, help="with --throughput-vs")
    args = parser.parse_args()

    import tensorflow as tf

    from masktfx.serving.client import GrpcClient, RestClient
    from masktfx.serving.models import version_folders

    versions = version_folders(args.model_base_path)
    if not versions:
        sys.exit(f"no pushed version under {args.model_base_path}: run `make demo` first, or "
                 "pass --model-base-path SERVING_DIR/MODEL_NAME")
    version = max(versions)
    loaded = tf.saved_model.load(versions[version])
    raw = loaded.signatures[features.RAW_SIGNATURE]
    num_views = raw.structured_input_signature[1][features.IMAGES_KEY].shape[1]
    manifest = read_manifest(write_synthetic(tempfile.mkdtemp(), num_examples=32,
                                             views=num_views, size=64))
    images = [[open(p, "rb").read() for p in row.images] for row in manifest.rows]
    masks = [[open(p, "rb").read() for p in row.masks] for row in manifest.rows]
    if args.budget or args.throughput_vs:
        if args.budget:
            num_masks = raw.structured_input_signature[1][features.MASKS_KEY].shape[1]
            found = budget_run(args.model_base_path, version, num_views, num_masks,
                               args.clients, args.seconds, args.grpc_clients)
        else:
            found = throughput_vs(args.throughput_vs, args.model_base_path, version, images,
                                  masks, args.rounds, args.seconds)
        print(json.dumps({"benchmark": "serving", "cpu_count": os.cpu_count(),
                          "model_version": version,
                          "budget" if args.budget else "throughput_vs_reference": found},
                         indent=2))
        return

    from masktfx.components.warmup import read_warmup

    if not read_warmup(versions[version]):
        sys.exit(f"{versions[version]} has no warmup requests: push it with this version of "
                 "masktfx (make demo) to compare the first request with and without them")
    first = {mode: first_request_after_switches(versions[version], mode == "warmup",
                                                args.switches, images, masks)
             for mode in ("warmup", "no_warmup")}
    switch = {f"{mode}_first_request_ms": [round(1000 * t, 1) for t in times]
              for mode, times in first.items()}
    for mode, times in first.items():
        switch[f"{mode}_first_request_median_ms"] = round(1000 * float(np.median(times)), 1)
    switch["ratio_no_warmup_to_warmup"] = round(
        switch["no_warmup_first_request_median_ms"] / switch["warmup_first_request_median_ms"], 2)
    print("first request after a switch", switch, file=sys.stderr)
    if args.first_request_only:
        print(json.dumps({"benchmark": "serving", "cpu_count": os.cpu_count(),
                          "model_version": version, "first_request_after_switch": switch},
                         indent=2))
        return

    servers, clients_of = [], {}
    for label, flags in (("", []), ("+batching", [
            "--enable-batching", "--max-batch-size", str(args.max_batch_size),
            "--batch-timeout-micros", str(args.batch_timeout_micros)])):
        server, rest_url, grpc_target = start_server(args.model_base_path, flags)
        servers.append(server)
        clients_of["rest" + label] = RestClient(rest_url, "bench", retries=0)
        clients_of["grpc" + label] = GrpcClient(grpc_target, "bench", retries=0)
        wait_until_served(clients_of["rest" + label], version, server)
    result = {"benchmark": "serving", "cpu_count": os.cpu_count(), "model_version": version,
              "seconds_per_measurement": args.seconds, "first_request_after_switch": switch,
              "runs": {}}
    try:
        for regions in (1, 32):
            batch_images, batch_masks = images[:regions], masks[:regions]
            tensors = {features.IMAGES_KEY: tf.constant(batch_images),
                       features.MASKS_KEY: tf.constant(batch_masks)}
            calls = {"in_process": lambda t=tensors: raw(**t)}
            for name, client in clients_of.items():
                calls[name] = lambda c=client, i=batch_images, m=batch_masks: c.predict_regions(
                    i, m, version)
            for name, call in calls.items():
                call()  # warm up
                for clients in (1, 8):
                    key = f"{name}/regions={regions}/clients={clients}"
                    result["runs"][key] = run_load(call, clients, args.seconds)
                    print(key, result["runs"][key], file=sys.stderr)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    runs = result["runs"]
    result["rest_p50_overhead_ms_1_region"] = round(
        runs["rest/regions=1/clients=1"]["p50_ms"] - runs["in_process/regions=1/clients=1"]
        ["p50_ms"], 2)
    for name in clients_of:
        for regions in (1, 32):
            result[f"{name}_throughput_ratio_8_clients_{regions}_regions"] = round(
                runs[f"{name}/regions={regions}/clients=8"]["requests_per_s"]
                / runs[f"in_process/regions={regions}/clients=8"]["requests_per_s"], 2)
    result["targets"] = {"rest_p50_overhead_ms_1_region": "<= 3",
                         "throughput_ratio_8_clients": ">= 0.7"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
