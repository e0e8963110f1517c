"""bench/ingest_portable: `masktfx ingest` on Beam's portable runner (a job service and a worker
pool of separate SDK worker processes, as Flink or Spark on Kubernetes) against the same command
on the DirectRunner (its defaults: multi-processing, a worker per core), in turns.

Target: the portable runner with 2 workers at least 0.8x the DirectRunner's throughput at 5,000
regions (median of the per-round ratios), and the same records.

    python bench/ingest_portable.py [--examples 5000] [--size 128] [--rounds 3]
                                    [--output bench/results/ingest-portable.json]
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

from beam_services import portable_services  # noqa: E402
from measure import report, run_measured  # noqa: E402


def records(folder: str) -> dict[bytes, object]:
    from masktfx import features
    from masktfx.records import read_examples

    return {example.features.feature[features.ID_KEY].bytes_list.value[0]: example
            for example in read_examples(os.path.join(folder, features.SHARD_GLOB))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    from masktfx.demo_data import write_synthetic

    work = tempfile.mkdtemp(prefix="bench-ingest-portable-")
    manifest = write_synthetic(os.path.join(work, "data"), num_examples=args.examples,
                               size=args.size)
    seconds: dict[str, list[float]] = {"direct": [], "portable": []}
    with portable_services(work, args.workers) as portable_args:
        for round_index in range(args.rounds):
            for kind, beam_args in (("direct", []), ("portable", portable_args)):
                output = os.path.join(work, f"{kind}-{round_index}")
                measured = run_measured(
                    [sys.executable, "-m", "masktfx.cli", "ingest", manifest, "--output",
                     output, "--no-progress", *(["--beam-args", *beam_args] if beam_args
                                                else [])], ROOT)
                seconds[kind].append(measured["seconds"])
                print(f"{kind} round {round_index}: {measured['seconds']} s", file=sys.stderr,
                      flush=True)
    same = records(os.path.join(work, "direct-0")) == records(os.path.join(work, "portable-0"))
    ratios = [d / p for d, p in zip(seconds["direct"], seconds["portable"])]
    result = {"benchmark": "ingest_portable", "examples": args.examples, "size": args.size,
              "portable_workers": args.workers, "rounds": args.rounds, "seconds": seconds,
              "examples_per_second_median": {
                  kind: round(args.examples / statistics.median(values), 1)
                  for kind, values in seconds.items()},
              "portable_to_direct_throughput_ratios": [round(r, 3) for r in ratios],
              "portable_to_direct_throughput_ratio_median": round(statistics.median(ratios), 3),
              "same_records": same, "target": "median ratio >= 0.8 and the same records"}
    shutil.rmtree(work, ignore_errors=True)
    report(result, args.output)


if __name__ == "__main__":
    main()
