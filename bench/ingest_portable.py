"""bench/ingest_portable: `masktfx ingest` on Beam's portable runner (a job service and a worker
pool of separate SDK worker processes, as Flink or Spark on Kubernetes) against the same command
on the DirectRunner (its defaults: multi-processing, a worker per core, forked warm), in turns.
Two pools: Beam's own (`worker_pool_main`, a new process per worker) and `masktfx
beam-worker-pool` (workers forked from a process that imported ingest's modules once).

Beam's local job service runs every job on one SDK worker, whatever the job asks for
(`FnApiRunner.run_via_runner_api` never reads `direct_num_workers`, and the runner's default is
one worker): the pool's fork log shows one worker per job. So the DirectRunner is also measured
with one worker (`--direct_num_workers=1`), the like-for-like comparison on this job service.

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


def _forks(pool_logs: str) -> int:
    with open(os.path.join(pool_logs, "forks.log"), encoding="utf-8") as log:
        return sum(1 for line in log if "forked Beam worker" in line)


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
    kinds = {"direct": [], "direct_one_worker": ["--direct_num_workers=1"]}
    seconds: dict[str, list[float]] = {"direct": [], "direct_one_worker": [], "portable": [],
                                       "portable_warm_pool": []}
    with portable_services(os.path.join(work, "beam-pool"), args.workers) as portable_args, \
            portable_services(os.path.join(work, "warm-pool"), args.workers, pool="masktfx",
                              preload="ingest") as warm_args:
        for round_index in range(args.rounds):
            for kind, beam_args in (*kinds.items(), ("portable", portable_args),
                                    ("portable_warm_pool", warm_args)):
                output = os.path.join(work, f"{kind}-{round_index}")
                measured = run_measured(
                    [sys.executable, "-m", "masktfx.cli", "ingest", manifest, "--output",
                     output, "--no-progress", *(["--beam-args", *beam_args] if beam_args
                                                else [])], ROOT)
                seconds[kind].append(measured["seconds"])
                print(f"{kind} round {round_index}: {measured['seconds']} s", file=sys.stderr,
                      flush=True)
    direct = records(os.path.join(work, "direct-0"))
    result = {"benchmark": "ingest_portable", "examples": args.examples, "size": args.size,
              "portable_workers": args.workers, "rounds": args.rounds, "seconds": seconds,
              "examples_per_second_median": {
                  kind: round(args.examples / statistics.median(values), 1)
                  for kind, values in seconds.items()},
              "target": "median ratio >= 0.8 and the same records"}
    for kind in ("portable", "portable_warm_pool"):
        result[kind] = {"same_records": records(os.path.join(work, f"{kind}-0")) == direct}
        for reference in kinds:
            ratios = [d / p for d, p in zip(seconds[reference], seconds[kind])]
            result[kind][f"to_{reference}_throughput_ratios"] = [round(r, 3) for r in ratios]
            result[kind][f"to_{reference}_throughput_ratio_median"] = round(
                statistics.median(ratios), 3)
    result["workers_forked_per_warm_pool_job"] = round(
        _forks(os.path.join(work, "warm-pool")) / args.rounds, 2)
    shutil.rmtree(work, ignore_errors=True)
    report(result, args.output)


if __name__ == "__main__":
    main()
