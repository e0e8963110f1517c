"""`masktfx run`: the pipeline on the local runner."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from masktfx.cli.common import CommandError
from masktfx.config import PipelineConfig

if TYPE_CHECKING:
    from masktfx.pipeline.run_output import Terminal


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
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' output (TensorFlow, Beam, TFX) on the terminal "
                             "instead of only in WORKDIR/logs/<run id>.log")
    add_config_flags(parser)
    parser.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from masktfx.cli.flags import config_from_args

    config = config_from_args(args)
    return run_and_summarize(config, args.data, as_json=args.json, verbose=args.verbose)


def run_and_summarize(config: PipelineConfig, data: str, as_json: bool = False,
                      verbose: bool = False,
                      after_success: Callable[[Terminal], None] | None = None) -> int:
    """Run the pipeline (errors before it starts mean nothing ran) and print its summary.

    The libraries' output goes to WORKDIR/logs/<run id>.log (all of it on the terminal with
    `verbose`); the terminal shows each component as it starts and ends. `after_success` runs
    inside the same capture (the demo writes its report there)."""
    from masktfx.pipeline.run_output import library_output_to, log_path, new_run_id

    run_id = new_run_id()
    log_file = log_path(os.path.abspath(config.workdir), run_id)
    with library_output_to(None if verbose else log_file) as terminal:
        status = _run_in(terminal, config, data, run_id, as_json, live=not verbose)
        if status == 0 and after_success is not None:
            after_success(terminal)
    return status


def _run_in(terminal: Terminal, config: PipelineConfig, data: str, run_id: str,
            as_json: bool, live: bool) -> int:
    from masktfx.ingest import IngestError
    from masktfx.manifest import ManifestError
    from masktfx.pipeline.data import DataLayoutError
    from masktfx.pipeline.local_runner import run_local
    from masktfx.pipeline.run_lock import MetadataUnavailableError, RunLockedError
    from masktfx.pipeline.run_output import ComponentProgress
    from masktfx.pipeline.summary import format_summary, latest_node_state

    def announce(prepared) -> None:
        if prepared.ingested:
            terminal.say(prepared.ingested.describe())
        for warning in prepared.warnings:
            terminal.say(f"masktfx run: warning: {warning}", error=True)
        if terminal.log_file:
            terminal.say(f"run {run_id}: the libraries' output goes to {terminal.log_file}")

    def state_of(node: str) -> str:
        return latest_node_state(config.replace(workdir=os.path.abspath(config.workdir)), node)

    live = live and terminal.out.isatty()
    try:
        with ComponentProgress(terminal, state_of, live=live) as progress:
            outcome = run_local(config, data, on_prepared=announce, run_id=run_id,
                                progress_stream=terminal.err, announce=terminal.say)
            failed_node = progress.failed() if outcome.failure is not None else None
    except (ManifestError, IngestError, DataLayoutError, RunLockedError,
            MetadataUnavailableError, OSError) as exc:
        raise CommandError(str(exc)) from None
    if outcome.failure is not None:
        failure = outcome.failure
        where = f" in {failed_node}" if failed_node else ""
        terminal.say(f"masktfx run: the pipeline failed{where}: "
                     f"{type(failure).__name__}: {failure}", error=True)
        if outcome.not_completed:
            terminal.say(f"components not completed: {', '.join(outcome.not_completed)}",
                         error=True)
        tail = terminal.error_lines()
        if tail:
            terminal.say("last lines of the log:\n" + "\n".join(f"  | {line}" for line in tail),
                         error=True)
        if terminal.log_file:
            terminal.say(f"full log: {terminal.log_file}", error=True)
        return 1
    if as_json:
        terminal.say(json.dumps(outcome.summary.as_dict(), indent=2, sort_keys=True))
    else:
        terminal.say(format_summary(outcome.summary))
    return 0


def add_beam_worker_pool(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "beam-worker-pool", help="serve Beam SDK workers that start warm, for a portable runner",
        description="A Beam worker pool (what --environment_type=EXTERNAL "
                    "--environment_config=HOST:PORT names) that forks each job's SDK workers "
                    "from a process that has imported Beam, masktfx and the TFX libraries once. "
                    "Runs until interrupted.")
    parser.add_argument("--port", type=int, default=50000,
                        help="the port to listen on (0: any free one; the log line names it)")
    parser.add_argument("--host", default="localhost",
                        help="the interface to listen on (0.0.0.0 in a pod beside Flink's task "
                             "manager)")
    parser.add_argument("--preload", choices=("pipeline", "ingest"), default="pipeline",
                        help="what the workers find imported: everything the pipeline's Beam "
                             "components use (TensorFlow, TFX libraries), or ingest's only")
    parser.set_defaults(handler=cmd_beam_worker_pool)


def cmd_beam_worker_pool(args: argparse.Namespace) -> int:
    from masktfx.beam_worker_pool import serve
    from masktfx.fork_server import INGEST_PRELOAD, PIPELINE_PRELOAD

    serve(args.port, args.host,
          PIPELINE_PRELOAD if args.preload == "pipeline" else INGEST_PRELOAD)
    return 0
