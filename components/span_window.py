"""The last N spans ImportExampleGen has read, for a run that trains on a window of spans.

TFX 1.16's ExampleGen reads one span per execution. A window is therefore a Resolver over
ImportExampleGen's past outputs, as in TFX's own examples (SpanRangeStrategy), so each span is read
once and later runs take it from MLMD. SpanRangeStrategy alone would mix in every artifact it ever
wrote for a span: a span read again (a re-run after a failure) would count twice, and spans split
under other settings (buckets, `split_by`) would be mixed with this run's. This strategy keeps,
per span, the newest artifact split the way this pipeline splits (the key our ExampleGen executor
stamps on its output), and the last `num_spans` spans of those.
"""

from __future__ import annotations

import hashlib
from typing import Any

from google.protobuf import message
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.utils import proto_utils

SPLIT_KEY_PROPERTY = "masktfx_split_key"


def split_key(*configs: message.Message | None) -> str:
    """Names how records were split and stamped (ExampleGen's output and custom config; not its
    input config, which its driver rewrites with the span it resolved)."""
    digest = hashlib.sha256()
    for config in configs:
        digest.update(proto_utils.proto_to_json(config).encode() if config is not None else b"-")
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def window(artifacts: list[types.Artifact], num_spans: int, key: str) -> list[types.Artifact]:
    """The newest artifact of each of the last `num_spans` spans split with `key`, oldest span
    first (a stable order: the order of inputs is part of TFX's cache key)."""
    newest: dict[int, types.Artifact] = {}
    for artifact in artifacts:
        if artifact.get_string_custom_property(SPLIT_KEY_PROPERTY) != key:
            continue
        span = _int_property(artifact, "span")
        kept = newest.get(span)
        if kept is None or (_int_property(artifact, "version"), artifact.id) > (
                _int_property(kept, "version"), kept.id):
            newest[span] = artifact
    return [newest[span] for span in sorted(newest)[-num_spans:]]


def _int_property(artifact: types.Artifact, name: str) -> int:
    # ExampleGen records span and version as custom properties (older TFX: as strings)
    text = artifact.get_string_custom_property(name)
    return int(text) if text else artifact.get_int_custom_property(name)


class SpanWindowStrategy(resolver.ResolverStrategy):
    """Resolver strategy: `window` over the input channel's artifacts."""

    def __init__(self, num_spans: int, split_key: str):
        self._num_spans = int(num_spans)
        self._split_key = split_key

    def resolve_artifacts(self, store: Any, input_dict: dict[str, list[types.Artifact]]
                          ) -> dict[str, list[types.Artifact]] | None:
        resolved = {name: window(artifacts, self._num_spans, self._split_key)
                    for name, artifacts in input_dict.items()}
        return resolved if all(resolved.values()) else None
