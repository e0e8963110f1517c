"""`masktfx promote` and `masktfx rollback`: TF Serving's version labels, in models.config."""

from __future__ import annotations

import argparse
import os

from masktfx.cli.common import CommandError, print_json
from masktfx.config import PipelineConfig, uri_scheme


def add_labels(sub: argparse._SubParsersAction) -> None:
    def target_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--workdir", help="the workdir of `masktfx run`: its serving dir and "
                                              "model name")
        parser.add_argument("--serving-dir", help="the folder of the models' version folders "
                                                  "(default: the workdir's)")
        parser.add_argument("--model-name", help="default: the workdir's")
        parser.add_argument("--config-file", help="the model config (default "
                                                  "SERVING_DIR/models.config)")
        parser.add_argument("--json", action="store_true", help="JSON instead of text")
        parser.add_argument("--server", help="TF Serving's REST URL: the version is added first "
                                             "and the label moved once this server has loaded "
                                             "it (TF Serving moves labels only to loaded "
                                             "versions)")
        parser.add_argument("--wait-seconds", type=float, default=600.0,
                            help="how long to wait for the server to load the version")

    promote = sub.add_parser(
        "promote", help="serve a pushed version as `stable` or `canary` (TF Serving labels)",
        description="Write TF Serving's model config: the version under the label, served with "
                    "the `specific` version policy. A canary is served beside stable until it "
                    "is promoted to stable, which retires the old stable version.")
    target_flags(promote)
    promote.add_argument("--version", type=int, required=True, help="a pushed version")
    promote.add_argument("--label", required=True, choices=["stable", "canary"])
    promote.set_defaults(handler=cmd_promote)
    rollback = sub.add_parser(
        "rollback", help="drop the canary, or go back to the previous stable version",
        description="With a canary: serve stable alone. Without one: serve the stable version "
                    "that came before the current one.")
    target_flags(rollback)
    rollback.set_defaults(handler=cmd_rollback)


def _target(args: argparse.Namespace) -> tuple[str, str, str]:
    """(config file, model name, the model's base path)."""
    if not args.workdir and not (args.serving_dir and args.model_name):
        raise CommandError("give --workdir, or --serving-dir and --model-name")
    config = (PipelineConfig.for_workdir(args.workdir) if args.workdir else PipelineConfig())
    serving_dir = args.serving_dir or config.resolved_serving_dir
    if uri_scheme(serving_dir):
        raise CommandError(f"{serving_dir}: labels are written to a local models.config; mount "
                           "the serving volume and give its path")
    model_name = args.model_name or config.model_name
    from masktfx.model_config import CONFIG_FILE

    config_file = args.config_file or os.path.join(serving_dir, CONFIG_FILE)
    return config_file, model_name, os.path.join(os.path.abspath(serving_dir), model_name)


def _show(args: argparse.Namespace, config_file: str, served, done: str) -> None:
    if args.json:
        print_json({"config_file": config_file, "model": served.name, "labels": served.labels,
                    "versions": list(served.versions), "done": done})
        return
    labels = ", ".join(f"{label} {version}" for label, version in sorted(served.labels.items()))
    print(f"{served.name}: {done}; now {labels or 'no labels'} ({config_file})")


def cmd_promote(args: argparse.Namespace) -> int:
    from masktfx.model_config import ModelConfigError, promote

    config_file, model_name, base_path = _target(args)
    wait = _loaded_on(args.server, model_name, args.wait_seconds) if args.server else None
    try:
        served = promote(config_file, model_name, base_path, args.version, args.label, wait)
    except ModelConfigError as exc:
        raise CommandError(str(exc)) from None
    _show(args, config_file, served, f"{args.version} promoted to {args.label}")
    return 0


def _loaded_on(url: str, model_name: str, seconds: float):
    """A wait until the server at `url` reports the version AVAILABLE."""
    import time

    from masktfx.serving.client import RestClient, ServingClientError

    client = RestClient(url, model_name, retries=0)

    def wait(version: int) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                if client.status(version)[0]["state"] == "AVAILABLE":
                    return
            except ServingClientError:  # not loaded yet (404), or not reachable for a moment
                pass
            if time.monotonic() > deadline:
                raise CommandError(f"{url} did not load version {version} of {model_name} in "
                                   f"{seconds:g} s; the version is in the config, the label "
                                   "not moved: run the command again")
            time.sleep(1.0)

    return wait


def cmd_rollback(args: argparse.Namespace) -> int:
    from masktfx.model_config import ModelConfigError, rollback

    config_file, model_name, _ = _target(args)
    wait = _loaded_on(args.server, model_name, args.wait_seconds) if args.server else None
    try:
        served, done = rollback(config_file, model_name, wait)
    except ModelConfigError as exc:
        raise CommandError(str(exc)) from None
    _show(args, config_file, served, done)
    return 0
