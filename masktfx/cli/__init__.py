"""The `masktfx` command line: one module per command group, wiring only (what a command does
lives in the layers below)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext

from masktfx import __version__

# The package sets TF_USE_LEGACY_KERAS before anything imports TensorFlow.
from masktfx.cli import data, kubeflow, labels, reports, run, score, serving
from masktfx.cli.common import CommandError, print_json, quiet_tensorflow
from masktfx.cli.run import run_and_summarize
from masktfx.config import ConfigError

__all__ = ["CommandError", "build_parser", "main", "print_json", "run_and_summarize"]

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    data.add_ingest, data.add_demo_data, data.add_drift, run.add_run, run.add_beam_worker_pool,
    serving.add_serve, serving.add_predict, score.add_score, labels.add_labels,
    kubeflow.add_kubeflow, reports.add_reports]
# Commands that load TensorFlow (`run` keeps the libraries' output in its log instead).
TENSORFLOW_COMMANDS = ("drift", "beam-worker-pool", "serve", "predict", "score", "promote",
                       "rollback", "compile", "submit", "schedule", "report", "runs", "lineage")


def version_line() -> str:
    """This package's version and the stack it runs on (from the installed distributions: no
    TensorFlow import)."""
    import platform
    from importlib import metadata

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"masktfx {__version__} (TFX {installed('tfx')}, TensorFlow "
            f"{installed('tensorflow')}, Python {platform.python_version()})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masktfx", description="Region-level image "
                                     "classification pipelines on TFX.")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = quiet_tensorflow() if args.command in TENSORFLOW_COMMANDS else nullcontext()
    try:
        with quiet:
            return int(args.handler(args) or 0)
    except (CommandError, ConfigError) as exc:
        print(f"masktfx {args.command}: error: {exc}", file=sys.stderr)
        return 2
