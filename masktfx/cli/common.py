"""What every command group shares: its error, JSON output, defaults."""

from __future__ import annotations

import json

from masktfx.config import PipelineConfig

DEFAULT_MAX_PIXELS = PipelineConfig().max_pixels


class CommandError(RuntimeError):
    """A command could not do what was asked; the message says why. Exit status 2."""


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
