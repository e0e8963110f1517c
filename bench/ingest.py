"""bench/ingest: the `masktfx ingest` command (Beam DirectRunner, multi-processing, workers from
the fork server) against a plain single-process Python loop that reads the same files and writes
the same records.

Prints JSON: examples/s of both and their ratio on N examples (5,000 by default), and the peak RSS
of each whole process tree at two sizes (2,000 and 8,000), to show whether memory grows with N.
Every figure comes from this run; each measured run is a fresh subprocess.

    python bench/ingest.py [--examples 5000] [--memory-sizes 2000 8000] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

from measure import run_measured  # noqa: E402  (bench/measure.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loop_ingest(manifest_path: str, output: str) -> int:
    """The reference: one process, one row at a time, same checks, same records."""
    import tensorflow as tf

    from masktfx.config import PipelineConfig
    from masktfx.ingest import RowFailure, encode_region
    from masktfx.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    os.makedirs(output, exist_ok=True)
    written = 0
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(output, "data-00000-of-00001.tfrecord.gz"),
                              options=options) as writer:
        for row in manifest.rows:
            try:
                serialized, _ = encode_region(row, PipelineConfig().max_pixels, False)
            except RowFailure:
                continue
            writer.write(serialized)
            written += 1
    return written


def measure(kind: str, manifest: str, output: str) -> dict:
    """Run one ingest in a child process; wall time and peak RSS of its whole process tree.

    Beam's side is the `masktfx ingest` command itself, as users run it."""
    if kind == "loop":
        command = [sys.executable, __file__, "--child", kind, manifest, output]
    else:
        command = [sys.executable, "-m", "masktfx.cli", "ingest", manifest, "--output", output,
                   "--no-progress"]
    result = run_measured(command, ROOT)
    last_line = result.pop("stdout").strip().splitlines()[-1]
    written = int(last_line) if kind == "loop" else int(
        re.match(r"ingested (\d+) of", last_line).group(1))
    return {"seconds": result["seconds"], "examples": written,
            "examples_per_s": round(written / result["seconds"], 1),
            "peak_rss_mib": result["peak_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=[2000, 8000])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "MANIFEST", "OUTPUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, manifest, output = args.child
        print(loop_ingest(manifest, output))
        return

    from masktfx.demo_data import write_synthetic

    work = tempfile.mkdtemp(prefix="bench-ingest-")
    result = {"benchmark": "ingest", "cpu_count": os.cpu_count(), "image_size": args.size}
    manifest = write_synthetic(os.path.join(work, "data"), num_examples=args.examples,
                               size=args.size)
    loop = measure("loop", manifest, os.path.join(work, "loop"))
    beam = measure("beam", manifest, os.path.join(work, "beam"))
    result["throughput"] = {"examples": args.examples, "python_loop": loop, "beam_ingest": beam,
                            "speedup_vs_loop": round(beam["examples_per_s"]
                                                     / loop["examples_per_s"], 2),
                            "target_speedup": 1.5}
    memory = {}
    for count in args.memory_sizes:
        data = write_synthetic(os.path.join(work, f"data{count}"), num_examples=count,
                               size=args.size)
        memory[str(count)] = measure("beam", data, os.path.join(work, f"beam{count}"))
    small, large = (memory[str(c)]["peak_rss_mib"] for c in args.memory_sizes)
    result["memory"] = {"runs": memory, "peak_rss_ratio_large_vs_small": round(large / small, 2),
                        "examples_ratio": round(args.memory_sizes[1] / args.memory_sizes[0], 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
