"""`masktfx report`, `runs` and `lineage`: reading a workdir back."""

from __future__ import annotations

import argparse
import os

from masktfx.cli.common import CommandError, print_json
from masktfx.config import PipelineConfig


def add_reports(sub: argparse._SubParsersAction) -> None:
    def workdir_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--workdir", required=True, help="the workdir of `masktfx run`")
        metadata_flag(parser)
        parser.add_argument("--json", action="store_true", help="JSON instead of text")

    def metadata_flag(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--metadata", default=None,
                            help="the run metadata, if not the one the workdir's last run used: "
                                 "sqlite:PATH or mysql://USER@HOST:PORT/DATABASE (password in "
                                 "MASKTFX_METADATA_PASSWORD)")

    report = sub.add_parser("report", help="one self-contained HTML page for a run",
                            description="Data, training, evaluation, the blessing decision "
                                        "and the pushed version's lineage, read from the "
                                        "workdir's MLMD store and artifacts.")
    report.add_argument("--workdir", required=True, help="the workdir of `masktfx run`")
    metadata_flag(report)
    report.add_argument("--output", default=None, help="HTML file (default WORKDIR/report.html)")
    report.add_argument("--run", default=None, help="run ID (default: the latest; see `runs`)")
    report.set_defaults(handler=cmd_report)
    runs = sub.add_parser("runs", help="a table of past runs in a workdir")
    workdir_flags(runs)
    runs.set_defaults(handler=cmd_runs)
    lineage = sub.add_parser("lineage", help="where a pushed version came from")
    workdir_flags(lineage)
    lineage.add_argument("--version", default=None, help="pushed version (default: the newest)")
    lineage.set_defaults(handler=cmd_lineage)


def _workdir_config(args: argparse.Namespace) -> PipelineConfig:
    """The workdir's last run's config, its metadata location replaced by --metadata."""
    if not os.path.isdir(args.workdir):
        raise CommandError(f"{args.workdir}: no such workdir")
    config = PipelineConfig.for_workdir(args.workdir)
    if args.metadata is not None:
        config = config.replace(metadata=args.metadata).validate()
    return config


def cmd_report(args: argparse.Namespace) -> int:
    from masktfx.pipeline.report import write_report

    config = _workdir_config(args)
    try:
        path = write_report(config, args.output, args.run)
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    print(f"report: {path}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from masktfx.pipeline.summary import format_runs, list_runs

    try:
        runs = list_runs(_workdir_config(args))
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print_json([run.as_dict() for run in runs])
    else:
        print(format_runs(runs))
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from masktfx.pipeline.lineage import format_lineage, lineage

    try:
        found = lineage(_workdir_config(args), args.version)
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print_json(found.as_dict())
    else:
        print(format_lineage(found))
    return 0
