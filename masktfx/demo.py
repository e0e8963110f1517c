"""`make demo`: synthetic demo data -> ingest -> the whole pipeline, then where things are."""

from __future__ import annotations

import argparse
import os
import sys

from masktfx.cli import run_and_summarize
from masktfx.config import PipelineConfig
from masktfx.demo_data import write_synthetic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo")
    parser.add_argument("--num-examples", type=int, default=400)
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' output instead of keeping it in the run's log")
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    data_dir = os.path.join(workdir, "synthetic")
    manifest = os.path.join(data_dir, "manifest.csv")
    if not os.path.exists(manifest):
        print(f"writing {args.num_examples} synthetic regions to {data_dir}")
        write_synthetic(data_dir, num_examples=args.num_examples, views=1, size=64)
    config = PipelineConfig(workdir=os.path.join(workdir, "pipeline"), pipeline_name="masktfx-demo",
                            model_name="masktfx-demo")

    def where(terminal) -> None:
        # the run's summary above names its report page
        terminal.say(f"\nserving folder (TF Serving --model_base_path): "
                     f"{os.path.join(config.resolved_serving_dir, config.model_name)}")

    return run_and_summarize(config, manifest, verbose=args.verbose, after_success=where)


if __name__ == "__main__":
    sys.exit(main())
