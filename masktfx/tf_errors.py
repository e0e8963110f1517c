"""TensorFlow's error messages as a user should read them (the model server and `masktfx
score` answer with them)."""

from __future__ import annotations

import re

# The op's name and the graph function's, which TensorFlow appends to the message.
_NODE_SUFFIX = re.compile(r"\s*\[\[\{\{node [^}]*\}\}\]\]|\s*\[Op:[^\]]*\]")


def op_message(exc: Exception) -> str:
    """TensorFlow's message without the 'Graph execution error:' preamble, the Python traceback
    of where the op was defined and the node names after it: the op's own message, whole."""
    message = getattr(exc, "message", None) or str(exc)
    if message.startswith("Graph execution error:"):
        blocks = [block.strip() for block in message.split("\n\n") if block.strip()]
        message = blocks[-1] if len(blocks) > 1 else message
    lines = message.strip().splitlines()
    if lines and lines[0].startswith("Detected at node"):
        # where the op was defined: indented frames, or a line saying there are none
        lines = lines[1:]
        while lines and (lines[0].startswith((" ", "\t")) or
                         lines[0].strip() == "<stack traces unavailable>"):
            lines = lines[1:]
    return _NODE_SUFFIX.sub("", "\n".join(lines)).strip()
