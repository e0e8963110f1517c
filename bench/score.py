"""bench/score: `masktfx score` against the two other ways to score a survey, in one run.

On synthetic regions of 64 x 64 pixels (`masktfx demo-data`), with a pushed version of the default
model (run `make demo` first):
- `score`: `masktfx score --data MANIFEST` (Beam's DirectRunner, its default settings here);
- `score_records`: `masktfx score --data TFRECORDS` (the same regions, ingested);
- `predict`: `masktfx predict --manifest` (gRPC, its default batch of 32) against `masktfx
  serve` of the same version, started before the clock;
- `loop`: the ceiling, a plain in-process loop of `serving_default` over the ingested records
  (batches of 128), in a process of its own.
Each is a whole process (its start and the model's load included), timed in turns for
`--rounds` rounds: regions/s, the median, and per round the ratio of `score` to the others.
Targets: `score` at least 3x `predict` and at least 0.8x `loop`.

Also the peak RSS of `masktfx score`'s process tree at each of `--memory-regions` (target: at
most 1.2x from the smallest to the largest), and the largest difference between `score`'s
probabilities and the loop's, over every region (target: 1e-6).

    python bench/score.py [--regions 20000] [--memory-regions 5000 40000] [--rounds 3]
                          [--model-base-path demo/pipeline/serving/masktfx-demo]
                          [--output bench/results/score.json]
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import csv  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from measure import report, run_measured  # noqa: E402

CLI = [sys.executable, "-m", "masktfx.cli"]


def loop(records: str, version_dir: str, output: str) -> None:
    """The ceiling: serving_default over the records, 128 at a time; writes id -> probability."""
    import tensorflow as tf

    from masktfx import features

    signature = (loaded := tf.saved_model.load(version_dir)).signatures[
        features.SERVING_SIGNATURE]
    spec = {features.ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    found = {}
    files = sorted(glob.glob(os.path.join(records, features.SHARD_GLOB)))
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(128):
        ids = tf.io.parse_example(batch, spec)[features.ID_KEY].numpy()
        probabilities = signature(examples=batch)[features.PROBABILITY_OUTPUT].numpy()
        found.update(zip((i.decode() for i in ids), probabilities.tolist()))
    del loaded
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(found, handle)


def subset(manifest: str, count: int) -> str:
    """The manifest's first `count` rows, beside it (its paths stay relative to the folder)."""
    path = os.path.join(os.path.dirname(manifest), f"first-{count}.csv")
    with open(manifest, encoding="utf-8") as source, open(path, "w", encoding="utf-8") as out:
        for index, line in enumerate(source):
            if index > count:
                break
            out.write(line)
    return path


def scored_probabilities(folder: str) -> dict[str, float]:
    found = {}
    for shard in glob.glob(os.path.join(folder, "scores-*.csv")):
        with open(shard, encoding="utf-8") as handle:
            found.update((row["id"], float(row["probability"])) for row in csv.DictReader(handle))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=20000)
    parser.add_argument("--memory-regions", type=int, nargs="+", default=[5000, 40000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-base-path",
                        default=os.path.join(ROOT, "demo/pipeline/serving/masktfx-demo"))
    parser.add_argument("--output", default=None, help="also write the JSON here")
    parser.add_argument("--loop", nargs=3, metavar=("RECORDS", "VERSION_DIR", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        loop(*args.loop)
        return

    from masktfx.demo_data import write_synthetic
    from masktfx.model_config import version_folders

    versions = version_folders(args.model_base_path)
    if not versions:
        sys.exit(f"{args.model_base_path}: no pushed version (run `make demo` first)")
    version = max(versions)
    work = tempfile.mkdtemp(prefix="bench-score-")
    largest = max(args.regions, *args.memory_regions)
    started = time.perf_counter()
    manifest = write_synthetic(os.path.join(work, "survey"), num_examples=largest, size=64)
    made_seconds = time.perf_counter() - started
    survey = subset(manifest, args.regions)
    records = os.path.join(work, "records")
    run_measured([*CLI, "ingest", survey, "--output", records, "--no-progress"], ROOT)

    from serving_processes import start_server, wait_until_served

    from masktfx.serving.client import GrpcClient

    server, _, grpc_target = start_server(args.model_base_path, [])
    try:
        wait_until_served(GrpcClient(grpc_target, "bench"), version, server)
        commands = {
            "score": [*CLI, "score", "--model", args.model_base_path, "--data", survey,
                      "--output", os.path.join(work, "scored"), "--no-progress"],
            "score_records": [*CLI, "score", "--model", args.model_base_path, "--data", records,
                              "--output", os.path.join(work, "scored_records"),
                              "--no-progress"],
            "predict": [*CLI, "predict", "--grpc", grpc_target, "--model", "bench",
                        "--manifest", survey],
            "loop": [sys.executable, os.path.abspath(__file__), "--loop", records,
                     versions[version], os.path.join(work, "loop.json")],
        }
        runs: dict[str, list[dict]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                measured = run_measured(command, ROOT)
                measured.pop("stdout")
                runs[name].append(measured)
                print(f"{name}: {measured}", file=sys.stderr, flush=True)
    finally:
        server.kill()
        server.wait()
    result: dict = {"benchmark": "score", "regions": args.regions, "image_size": 64,
                    "model": os.path.abspath(args.model_base_path), "version": version,
                    "rounds": args.rounds, "data_seconds": round(made_seconds, 1),
                    "throughput": {}}
    for name, measured in runs.items():
        rates = [args.regions / m["seconds"] for m in measured]
        result["throughput"][name] = {
            "seconds": [m["seconds"] for m in measured],
            "regions_per_second": [round(rate, 1) for rate in rates],
            "regions_per_second_median": round(statistics.median(rates), 1),
            "peak_rss_mib": [m["peak_rss_mib"] for m in measured]}
    for other in ("predict", "loop", "score_records"):
        result["throughput"][f"score_to_{other}_ratio_median"] = round(statistics.median(
            o["seconds"] / s["seconds"] for s, o in zip(runs["score"], runs[other])), 3)
    scored = scored_probabilities(os.path.join(work, "scored"))
    with open(os.path.join(work, "loop.json"), encoding="utf-8") as handle:
        looped = json.load(handle)
    result["probabilities"] = {
        "regions_compared": len(looped), "same_ids": sorted(scored) == sorted(looped),
        "max_abs_difference": max(abs(scored[i] - p) for i, p in looped.items())}
    memory = {}
    for count in sorted(args.memory_regions):
        measured = run_measured([*CLI, "score", "--model", args.model_base_path, "--data",
                                 subset(manifest, count), "--output",
                                 os.path.join(work, f"memory-{count}"), "--no-progress"], ROOT)
        memory[str(count)] = {"seconds": measured["seconds"],
                              "peak_rss_mib": measured["peak_rss_mib"]}
        print(f"memory {count}: {memory[str(count)]}", file=sys.stderr, flush=True)
    sizes = sorted(args.memory_regions)
    memory["peak_ratio_largest_to_smallest"] = round(
        memory[str(sizes[-1])]["peak_rss_mib"] / memory[str(sizes[0])]["peak_rss_mib"], 3)
    result["memory"] = memory
    result["targets"] = {
        "score_to_predict_at_least_3x": result["throughput"]["score_to_predict_ratio_median"]
        >= 3.0,
        "score_to_loop_at_least_0.8x": result["throughput"]["score_to_loop_ratio_median"] >= 0.8,
        "memory_at_most_1.2x": memory["peak_ratio_largest_to_smallest"] <= 1.2,
        "probabilities_within_1e-6": result["probabilities"]["max_abs_difference"] <= 1e-6}
    report(result, args.output)


if __name__ == "__main__":
    main()
