"""`masktfx run`: the pipeline on the local runner."""

from __future__ import annotations

import argparse
import sys

from masktfx.cli.common import CommandError, print_json
from masktfx.config import PipelineConfig


def add_run(sub: argparse._SubParsersAction) -> None:
    from masktfx.cli.flags import add_config_flags

    parser = sub.add_parser("run", help="run the whole TFX pipeline locally (LocalDagRunner)",
                            description="Ingest (for a manifest), validate, transform, train, "
                                        "evaluate and push, with an SQLite MLMD store and "
                                        "caching in the workdir.")
    parser.add_argument("--data", required=True,
                        help="ingested data folder, or a manifest CSV to ingest first")
    parser.add_argument("--config", default=None, help="YAML file of configuration fields")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_config_flags(parser)
    parser.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from masktfx.cli.flags import config_from_args

    config = config_from_args(args)
    return run_and_summarize(config, args.data, as_json=args.json)


def run_and_summarize(config: PipelineConfig, data: str, as_json: bool = False) -> int:
    """Run the pipeline (errors before it starts mean nothing ran) and print its summary."""
    from masktfx.ingest import IngestError
    from masktfx.manifest import ManifestError
    from masktfx.pipeline.data import DataLayoutError
    from masktfx.pipeline.local_runner import run_local
    from masktfx.pipeline.summary import format_summary

    def announce(prepared) -> None:
        if prepared.ingested:
            print(prepared.ingested.describe(), flush=True)
        for warning in prepared.warnings:
            print(f"masktfx run: warning: {warning}", file=sys.stderr, flush=True)

    try:
        outcome = run_local(config, data, on_prepared=announce)
    except (ManifestError, IngestError, DataLayoutError, OSError) as exc:
        raise CommandError(str(exc)) from None
    if outcome.failure is not None:
        failure = outcome.failure
        print(f"masktfx run: the pipeline failed: {type(failure).__name__}: {failure}",
              file=sys.stderr)
        if outcome.not_completed:
            print(f"components not completed: {', '.join(outcome.not_completed)}",
                  file=sys.stderr)
        return 1
    if as_json:
        print_json(outcome.summary.as_dict())
    else:
        print(format_summary(outcome.summary))
    return 0
