"""What every command group shares: its error, JSON output, defaults."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

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


# What TensorFlow's runtime prints on a machine without a GPU although nothing is wrong: its CUDA
# plugins registering twice (logged as errors), notes on CPU instructions, and Grappler's cost
# model meeting ops it has no estimate for (C++ warnings that ignore TF_CPP_MIN_LOG_LEVEL).
# `masktfx run` keeps them in its log; the other commands drop them.
TENSORFLOW_NOISE = re.compile(
    r"Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning|"
    r"oneDNN custom operations are on|This TensorFlow binary is optimized|"
    r"rebuild TensorFlow with the appropriate compiler flags|"
    r"computation placer already registered|"
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers|"
    r"cuda_platform\.cc:\d+\] failed call to cuInit|"
    r"All log messages before absl::InitializeLog\(\) is called|"
    r"op_level_cost_estimator\.cc:\d+\] Error in PredictCost\(\)")


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """For the block, TensorFlow's noise is dropped from this process's stderr (and its
    children's: they inherit it) while every other line goes through; Python-side TensorFlow
    and absl messages show from ERROR up."""
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.stderr.flush()
    reading, writing = os.pipe()
    saved = os.dup(2)
    os.dup2(writing, 2)
    os.close(writing)

    def forward() -> None:
        with os.fdopen(reading, "rb") as lines:
            for line in lines:
                if not TENSORFLOW_NOISE.search(line.decode("utf-8", "replace")):
                    try:
                        os.write(saved, line)
                    except OSError:  # a child still writing after the command ended
                        return

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the forwarder reads to its end
        forwarder.join(timeout=5)
        os.close(saved)
