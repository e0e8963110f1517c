"""bench/metadata: a whole `masktfx run` with its run metadata in MariaDB against the same run with
the default SQLite file, in turns.

Each round runs the pipeline twice on the same ingested data, from scratch (a new workdir, and for
MariaDB a new database on one server started here): once with `metadata` unset (SQLite) and once
with `mysql://...`. Target: the MariaDB run takes at most 1.2x the SQLite run's time (median of the
per-round ratios). Needs Debian's mariadb-server (as tests/test_metadata_mysql.py).

    python bench/metadata.py [--rounds 3] [--regions 400] [--output bench/results/metadata.json]
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

from mariadb import PASSWORD, MariaDB, available  # noqa: E402
from measure import report, run_measured  # noqa: E402

# The pipeline's work without the parts whose time does not depend on where metadata lives.
FLAGS = ["--image-size", "32", "--model-preset", "seed", "--epochs", "2", "--min-accuracy", "0",
         "--max-auc-drop", "1", "--no-serving-check", "--attribution-regions", "0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--regions", type=int, default=400)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if not available():
        sys.exit("mariadbd is not installed (apt-get install mariadb-server)")
    from masktfx.demo_data import write_synthetic

    work = tempfile.mkdtemp(prefix="bench-metadata-")
    manifest = write_synthetic(os.path.join(work, "data"), num_examples=args.regions, size=32)
    data = os.path.join(work, "ingested")
    run_measured([sys.executable, "-m", "masktfx.cli", "ingest", manifest, "--output", data,
                  "--no-progress"], ROOT)
    server = MariaDB(os.path.join(work, "db")).start()
    env = {**os.environ, "MASKTFX_METADATA_PASSWORD": PASSWORD}
    runs: dict[str, list[float]] = {"sqlite": [], "mariadb": []}
    try:
        for round_index in range(args.rounds):
            for kind in runs:
                workdir = os.path.join(work, f"{kind}-{round_index}")
                metadata = ["--metadata", server.uri(f"bench_{round_index}")] \
                    if kind == "mariadb" else []
                measured = run_measured([sys.executable, "-m", "masktfx.cli", "run", "--data",
                                         data, "--workdir", workdir, *metadata, *FLAGS], ROOT,
                                        env=env)
                runs[kind].append(measured["seconds"])
                print(f"{kind} round {round_index}: {measured['seconds']} s", file=sys.stderr,
                      flush=True)
    finally:
        server.stop()
    ratios = [m / s for s, m in zip(runs["sqlite"], runs["mariadb"])]
    result = {"benchmark": "metadata", "regions": args.regions, "flags": FLAGS,
              "rounds": args.rounds, "seconds": runs,
              "mariadb_to_sqlite_ratios": [round(r, 3) for r in ratios],
              "mariadb_to_sqlite_ratio_median": round(statistics.median(ratios), 3),
              "target": "median ratio <= 1.2"}
    report(result, args.output)


if __name__ == "__main__":
    main()
