"""Beam args read before Beam is imported: the named flags' values, and the DirectRunner settings
`masktfx ingest` fills in for the flags its caller left out."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from masktfx.config import PipelineConfig


def beam_flags(beam_args: Sequence[str], defaults: Mapping[str, str]) -> dict[str, str]:
    """The values of the named Beam flags in `beam_args` (`--flag=value` or `--flag value`; the
    last one wins, as in Beam), or their defaults. The one reading of Beam args before Beam is
    imported (the fork server must start before that import, which takes 2 s); everything
    later parses them with Beam's own PipelineOptions (masktfx/beam_runner.py)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", default=default)
    known, _ = parser.parse_known_args(list(beam_args))
    return vars(known)


def ingest_beam_args(beam_args: Sequence[str], running_mode: str = "") -> list[str]:
    """Beam args for `masktfx ingest` (and `score`): the caller's, then, for each flag the caller
    left out, the DirectRunner in `running_mode` (default: the pipeline's) and the pipeline's
    worker count."""
    defaults = PipelineConfig()
    wanted = {"runner": "DirectRunner",
              "direct_running_mode": running_mode or defaults.direct_running_mode,
              "direct_num_workers": str(defaults.direct_num_workers)}
    given = beam_flags(beam_args, dict.fromkeys(wanted, None))
    return [*with_long_job_runners(beam_args), *(f"--{name}={value}"
                                                 for name, value in wanted.items()
                                                 if given[name] is None)]


# Beam's runners that submit to a job service, and masktfx.beam_runner's subclass of each: Beam
# gives a job's state and message streams the deadline `--job_server_timeout` (300 s by default),
# which fails any job that runs longer; ours open them without one.
LONG_JOB_RUNNERS = {"portablerunner": "masktfx.beam_runner.PortableRunner",
                    "flinkrunner": "masktfx.beam_runner.FlinkRunner",
                    "sparkrunner": "masktfx.beam_runner.SparkRunner"}


def long_job_runner(runner: str) -> str:
    """masktfx's runner for a portable runner's name (short or dotted), else the name as is."""
    return LONG_JOB_RUNNERS.get(runner.split(".")[-1].lower(), runner)


def with_long_job_runners(beam_args: Sequence[str]) -> list[str]:
    """The args with a portable runner (`--runner=PortableRunner`, FlinkRunner, SparkRunner, in
    either flag form) named by masktfx's subclass of it."""
    args, result = list(beam_args), []
    for index, arg in enumerate(args):
        if arg.startswith("--runner="):
            arg = "--runner=" + long_job_runner(arg.split("=", 1)[1])
        elif index and args[index - 1] == "--runner":
            arg = long_job_runner(arg)
        result.append(arg)
    return result


# Runners whose SDK workers run on this machine, in this environment: Beam's direct runners (by
# class name or alias) and masktfx.beam_runner's ForkServerDirectRunner.
LOCAL_RUNNERS = ("directrunner", "direct", "switchingdirectrunner", "bundlebaseddirectrunner",
                 "forkserverdirectrunner")


def runs_on_this_machine(beam_args: Sequence[str]) -> bool:
    """The args name a direct runner (or none): Beam's workers run in this environment."""
    runner = beam_flags(beam_args, {"runner": "DirectRunner"})["runner"] or "DirectRunner"
    return runner.split(".")[-1].lower() in LOCAL_RUNNERS
