"""What every command group shares: its error, JSON output, defaults."""

from __future__ import annotations

import argparse
import json

from masktfx.config import PipelineConfig

DEFAULT_MAX_PIXELS = PipelineConfig().max_pixels


class CommandError(RuntimeError):
    """A command could not do what was asked; the message says why. Exit status 2."""


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def add_manifest_reading_flags(parser: argparse.ArgumentParser) -> None:
    """How a manifest's rows are read and checked: the flags `ingest` and `score` share."""
    parser.add_argument("--resize-masks", action="store_true",
                        help="resize masks of another size to the image (nearest neighbour)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels, before decoding them")
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="allow paths outside the manifest's folder")
    parser.add_argument("--id-field", default="",
                        help="GeoJSON mask files: the polygon property that holds each "
                             "region's id (default: the feature's id, else ROW_ID-N)")
