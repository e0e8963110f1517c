"""`masktfx compile`, `submit` and `schedule`: Kubeflow Pipelines."""

from __future__ import annotations

import argparse
import json

from masktfx.cli.common import CommandError


def add_kubeflow(sub: argparse._SubParsersAction) -> None:
    from masktfx.cli.flags import add_config_flags

    parser = sub.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines (YAML)")
    parser.add_argument("--output", required=True, help="pipeline spec, ending in .yaml")
    parser.add_argument("--image", required=True, help="the pipeline image (see Dockerfile)")
    parser.add_argument("--pipeline-root", required=True,
                        help="pipeline root URI as the cluster sees it (must be writable here "
                             "too: the module files and the schema are staged there)")
    parser.add_argument("--data-sample", default=None,
                        help="local ingested data to read views/masks/metadata columns from")
    parser.add_argument("--config", default=None, help="YAML file of configuration fields")
    add_config_flags(parser)
    parser.set_defaults(handler=cmd_compile)

    for name, helptext in (("submit", "start one run of a compiled pipeline on KFP"),
                           ("schedule", "schedule recurring runs of a compiled pipeline on KFP")):
        command = sub.add_parser(name, help=helptext,
                                 description=helptext + ". The auth token is read from "
                                             "the KFP_TOKEN environment variable.")
        command.add_argument("--host", required=True, help="KFP API endpoint URL")
        command.add_argument("--package", required=True, help="compiled pipeline .yaml")
        command.add_argument("--experiment", default="masktfx")
        command.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                             help="runtime parameter, e.g. data-root=/data")
        if name == "submit":
            command.add_argument("--run-name", default=None)
            command.set_defaults(handler=cmd_submit)
        else:
            command.add_argument("--cron", required=True,
                                 help="six fields, seconds first: '0 0 3 * * *' is 03:00 daily")
            command.add_argument("--name", default="masktfx-retraining")
            command.add_argument("--max-concurrency", type=int, default=1)
            command.add_argument("--no-catchup", action="store_true",
                                 help="do not backfill runs missed while paused")
            command.set_defaults(handler=cmd_schedule)


def cmd_compile(args: argparse.Namespace) -> int:
    from masktfx.cli.flags import config_from_args
    from masktfx.pipeline.data import DataLayoutError
    from masktfx.pipeline.kubeflow_runner import compile_pipeline

    config = config_from_args(args).replace(pipeline_root_uri=args.pipeline_root)
    try:
        compile_pipeline(config, args.output, args.image, args.data_sample)
    except DataLayoutError as exc:
        raise CommandError(str(exc)) from None
    print(args.output)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from masktfx.pipeline.kfp_client import KfpError, parse_params, submit

    try:
        run_id = submit(args.host, args.package, args.experiment, parse_params(args.param),
                        args.run_name)
    except KfpError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps({"run_id": run_id}))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from masktfx.pipeline.kfp_client import KfpError, parse_params, schedule

    try:
        recurring_id = schedule(args.host, args.package, args.cron, args.experiment,
                                parse_params(args.param), args.name, args.max_concurrency,
                                args.no_catchup)
    except KfpError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps({"recurring_run_id": recurring_id}))
    return 0
