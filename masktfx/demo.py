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
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    data_dir = os.path.join(workdir, "synthetic")
    manifest = os.path.join(data_dir, "manifest.csv")
    if not os.path.exists(manifest):
        print(f"writing {args.num_examples} synthetic regions to {data_dir}")
        write_synthetic(data_dir, num_examples=args.num_examples, views=1, size=64)
    config = PipelineConfig(workdir=os.path.join(workdir, "pipeline"), pipeline_name="masktfx-demo",
                            model_name="masktfx-demo")
    status = run_and_summarize(config, manifest)
    if status == 0:
        from masktfx.pipeline.report import write_report

        report = write_report(PipelineConfig.for_workdir(config.workdir))
        print(f"\nserving folder (TF Serving --model_base_path): "
              f"{os.path.join(config.resolved_serving_dir, config.model_name)}")
        print(f"report: {report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
