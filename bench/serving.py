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
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from serving_budget import budget_run  # noqa: E402
from serving_processes import start_server, wait_until_served  # noqa: E402

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


def first_request_after_switches(version_dir: str, warmup: bool, switches: int,
                                 images: list, masks: list) -> list[float]:
    """Seconds of the first request to each of `switches` new versions (copies of
    `version_dir`, with or without their warmup file) pushed into a running server."""
    import shutil

    from masktfx.serving.client import RestClient
    from masktfx.warmup import WARMUP_FILE

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
    parser.add_argument("--server-flags", default="",
                        help="with --budget: more `masktfx serve` flags, e.g. "
                             "'--rest-api-num-threads 128'")
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
                               args.clients, args.seconds, args.grpc_clients,
                               args.server_flags.split())
        else:
            found = throughput_vs(args.throughput_vs, args.model_base_path, version, images,
                                  masks, args.rounds, args.seconds)
        print(json.dumps({"benchmark": "serving", "cpu_count": os.cpu_count(),
                          "model_version": version,
                          "budget" if args.budget else "throughput_vs_reference": found},
                         indent=2))
        return

    from masktfx.warmup import read_warmup

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
