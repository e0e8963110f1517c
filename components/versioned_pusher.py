"""A Pusher whose versions appear all at once.

TFX's Pusher copies the SavedModel file by file into `<base>/<version>`, so TF Serving, which polls
that folder, can find a version that is still being written (or that a crash, or a full disk, left
half-written). This one copies into a hidden sibling (`.partial-<version>-<random>`; TF Serving
only loads numeric folder names) and renames it into place, which is atomic on one filesystem.
Versions are Unix timestamps, always greater than every version already in the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from typing import Any

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

PARTIAL_PREFIX = ".partial-"
SOURCES_FILE = ".masktfx-versions.json"  # version -> the Trainer model it was copied from


def existing_versions(base_directory: str) -> list[int]:
    if not os.path.isdir(base_directory):
        return []
    return sorted(int(name) for name in os.listdir(base_directory) if name.isdigit())


def next_version(base_directory: str) -> int:
    """A timestamp, bumped past the newest version so versions only ever increase."""
    return max([int(time.time())] + [v + 1 for v in existing_versions(base_directory)])


def _read_sources(base_directory: str) -> dict[str, str]:
    try:
        with open(os.path.join(base_directory, SOURCES_FILE), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _record_source(base_directory: str, version: int, model_path: str) -> None:
    sources = _read_sources(base_directory)
    sources[str(version)] = model_path
    partial = os.path.join(base_directory, f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:8]}.json")
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(sources, handle, indent=1, sort_keys=True)
    os.replace(partial, os.path.join(base_directory, SOURCES_FILE))


def remove_stale_partials(base_directory: str, older_than_s: float = 60.0) -> list[str]:
    """Remove copies a killed push left behind (TF Serving never loads them, but they take disk).

    Only those untouched for `older_than_s`, so a push still copying beside this one is spared.
    """
    removed = []
    now = time.time()
    for name in os.listdir(base_directory):
        path = os.path.join(base_directory, name)
        if name.startswith(PARTIAL_PREFIX) and now - os.path.getmtime(path) > older_than_s:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(name)
    return removed


def publish_version(model_path: str, base_directory: str) -> tuple[int, str, bool]:
    """Copy `model_path` into a hidden folder beside the versions, then rename it into place.

    Returns (version, path, published). When the newest version already is this model (a re-run
    with no new data re-evaluates it against itself), nothing is copied and that version is
    returned. On any failure (a full disk, say) the partial copy is removed and the versions
    already there are untouched.
    """
    os.makedirs(base_directory, exist_ok=True)
    remove_stale_partials(base_directory)
    versions = existing_versions(base_directory)
    if versions and _read_sources(base_directory).get(str(versions[-1])) == model_path:
        return versions[-1], os.path.join(base_directory, str(versions[-1])), False
    version = next_version(base_directory)
    partial = os.path.join(base_directory, f"{PARTIAL_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copytree(model_path, partial)
        target = os.path.join(base_directory, str(version))
        os.rename(partial, target)  # atomic: TF Serving sees all of the version or none of it
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _record_source(base_directory, version, model_path)
    return version, target, True


NEW_VERSION_PROPERTY = "published_new_version"


class Executor(pusher_executor.Executor):
    """Like TFX's Pusher executor, but the serving folder never holds a partial version."""

    def Do(self, input_dict: dict[str, list[types.Artifact]],
           output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        base_directory = destination.filesystem.base_directory
        if "://" in base_directory:
            raise ValueError(f"push destination {base_directory} is not a local or mounted "
                             "folder; the versioned pusher renames folders, which object stores "
                             "cannot do atomically")
        version, serving_path, published = publish_version(model_path, base_directory)
        logging.info("Model version %d %s at %s", version,
                     "published" if published else "was already serving this model",
                     serving_path)
        io_utils.copy_dir(model_path, model_push.uri)  # archive copy, as TFX's Pusher keeps
        self._MarkPushed(model_push, pushed_destination=serving_path,
                         pushed_version=str(version))
        # 0 when the version was already serving this model (a re-run with no new data)
        model_push.set_int_custom_property(NEW_VERSION_PROPERTY, int(published))


class VersionedPusher(Pusher):
    """TFX Pusher with atomic, strictly increasing versions."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
