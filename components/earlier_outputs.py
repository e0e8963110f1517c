"""Finding an earlier output of a component made from exactly the same inputs and settings.

TFX's cache reuses a component's outputs only when every input artifact is the same one. Two of
ours get a new upstream artifact on a re-run with no new data while what they compute stays the
same: the Evaluator (the Resolver now hands it the candidate as its own baseline) and the serving
check (the Evaluator wrote a new blessing for the same model). Each writes a record of what its
result depends on beside the result; a later execution with the same record reuses that result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from tfx.dsl.io import fileio


def find_earlier(output_uri: str, record_file: str, record: dict[str, Any],
                 accept: Callable[[dict[str, Any]], bool] = lambda saved: True) -> str | None:
    """A sibling of `output_uri` (an earlier execution's output of the same component) whose
    `record_file` holds every key of `record` with the same value, and that `accept`s."""
    parent = os.path.dirname(output_uri.rstrip("/"))
    if not fileio.isdir(parent):
        return None
    for name in sorted(fileio.listdir(parent)):
        earlier = os.path.join(parent, name.rstrip("/"))
        path = os.path.join(earlier, record_file)
        if earlier == output_uri.rstrip("/") or not fileio.exists(path):
            continue
        with fileio.open(path, "r") as handle:
            try:
                saved = json.loads(handle.read())
            except ValueError:  # a record cut short (a killed run): that result is not trusted
                continue
        if {key: saved.get(key) for key in record} == record and accept(saved):
            return earlier
    return None
