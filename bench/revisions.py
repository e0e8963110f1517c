"""bench/revisions: one whole `masktfx run` of two revisions of this repository, in turns, each
with a version already pushed (so that the DriftCheck has a served model to estimate with, as on
every scheduled run after the first).

For each revision: a git worktree, the same synthetic regions ingested by its own code, and one
run with more epochs whose blessed model is the pushed version. Then runs of one epoch (seed
preset, `--min-accuracy 0` so that every run blesses and pushes: one epoch is near the default
gate, and a run that stops at the gate skips the ServingCheck and the push), each in a fresh
workdir whose serving folder is a copy of that pushed version: after, before, after, before ...
The ratio after/before is taken pair by pair, so that the machine's drift in speed moves both
sides of a ratio alike. Wall and CPU time of the whole process tree (Beam's workers included),
peak RSS, and each component's seconds.

    python bench/revisions.py --before REV --after REV [--regions 1000] [--runs 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys

from measure import report, run_measured  # bench/measure.py

from pipeline import durations  # bench/pipeline.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# masktfx.<name> lives in the repository's top-level <name>/ (pyproject's package-dir)
MAPPED_PACKAGES = ("components", "modules", "pipeline", "serving")
PREPARE_EPOCHS = "6"
TIMED_RUN_FLAGS = ("--model-preset", "seed", "--epochs", "1", "--min-accuracy", "0")


def worktree(revision: str, work: str) -> str:
    """A worktree of `revision` whose `masktfx` package is importable from its root."""
    sha = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    path = os.path.join(work, f"rev-{sha}")
    if not os.path.isdir(path):
        subprocess.run(["git", "worktree", "add", "--detach", path, sha], cwd=ROOT, check=True,
                       capture_output=True)
        for name in MAPPED_PACKAGES:
            os.symlink(os.path.join("..", name), os.path.join(path, "masktfx", name))
    return path


def masktfx(tree: str, *args: str, cwd: str) -> dict:
    """`masktfx ARGS` from `tree`'s code: wall, CPU and peak RSS of the whole process tree."""
    env = {**os.environ, "PYTHONPATH": tree}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = run_measured([sys.executable, "-m", "masktfx.cli", *args], cwd, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found.pop("stdout")
    found["cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                           2)
    return found


def component_seconds(tree: str, workdir: str) -> dict:
    """Each component's seconds, from the run's MLMD execution windows (this checkout's reader)."""
    answer = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "pipeline.py"),
                             "--child", "windows", workdir], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    return durations(json.loads(answer.strip().splitlines()[-1]))


def prepare(tree: str, manifest: str, folder: str) -> tuple[str, str]:
    """The regions ingested by `tree`'s code, and a serving folder holding its blessed model."""
    ingested, workdir = os.path.join(folder, "ingested"), os.path.join(folder, "prepare")
    if not os.path.isdir(ingested):
        masktfx(tree, "ingest", manifest, "--output", ingested, "--span", "1", "--no-progress",
                cwd=tree)
    serving = os.path.join(workdir, "serving")
    if not os.path.isdir(serving):
        masktfx(tree, "run", "--data", ingested, "--workdir", workdir, "--model-preset", "seed",
                "--epochs", PREPARE_EPOCHS, cwd=tree)
    if not os.path.isdir(serving) or not os.listdir(serving):
        raise SystemExit(f"{tree}: the preparing run at {workdir} pushed nothing (not blessed); "
                         "its summary says why")
    return ingested, serving


def timed_run(tree: str, ingested: str, serving: str, workdir: str) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(serving, os.path.join(workdir, "serving"))
    found = masktfx(tree, "run", *TIMED_RUN_FLAGS, "--data", ingested, "--workdir", workdir,
                    cwd=tree)
    found["components_s"] = component_seconds(tree, workdir)
    return found


def component_medians(runs: list[dict]) -> dict:
    names = sorted({name for run in runs for name in run["components_s"]})
    return {name: statistics.median(run["components_s"].get(name, 0.0) for run in runs)
            for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--regions", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="counted runs of each, after one "
                        "warm-up run each")
    parser.add_argument("--work", default="/tmp/masktfx-bench-revisions")
    parser.add_argument("--output")
    args = parser.parse_args()

    from masktfx.demo_data import write_synthetic

    os.makedirs(args.work, exist_ok=True)
    data = os.path.join(args.work, f"data-{args.regions}")
    manifest = os.path.join(data, "manifest.csv")
    if not os.path.exists(manifest):
        write_synthetic(data, num_examples=args.regions, size=128)
    sides = {}
    for side in ("after", "before"):
        tree = worktree(getattr(args, side), args.work)
        ingested, serving = prepare(tree, manifest, os.path.join(tree, "bench-work"))
        sides[side] = {"tree": tree, "ingested": ingested, "serving": serving, "runs": []}
    for turn in range(1 + args.runs):
        for state in sides.values():
            found = timed_run(state["tree"], state["ingested"], state["serving"],
                              os.path.join(state["tree"], "bench-work", f"run-{turn}"))
            if turn:  # the first turn warms caches and is not counted
                state["runs"].append(found)
    ratios = {key: [round(a[key] / b[key], 3) for a, b in
                    zip(sides["after"]["runs"], sides["before"]["runs"])]
              for key in ("seconds", "cpu_s", "peak_rss_mib")}
    result = {
        "benchmark": "masktfx run, two revisions in turns, each with a pushed version",
        "regions": args.regions,
        "command": f"masktfx run {' '.join(TIMED_RUN_FLAGS)} --data INGESTED --workdir FRESH "
                   "(FRESH/serving: a copy of the revision's own blessed model)",
        **{side: {"revision": getattr(args, side), "runs": state["runs"],
                  "wall_s_median": statistics.median(r["seconds"] for r in state["runs"]),
                  "cpu_s_median": statistics.median(r["cpu_s"] for r in state["runs"]),
                  "peak_rss_mib_median": statistics.median(r["peak_rss_mib"]
                                                           for r in state["runs"]),
                  "components_s_median": component_medians(state["runs"])}
           for side, state in sides.items()},
        "ratio_after_to_before_pairwise": {key: {"median": statistics.median(values),
                                                 "each": values}
                                           for key, values in ratios.items()},
    }
    report(result, args.output)


if __name__ == "__main__":
    main()
