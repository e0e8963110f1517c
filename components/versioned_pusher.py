"""A Pusher whose versions appear all at once.

TFX's Pusher copies the SavedModel file by file into `<base>/<version>`, so TF Serving, which polls
that folder, can find a version that is still being written (or that a crash, or a full disk, left
half-written). This one copies into a hidden sibling (`.partial-<version>-<random>`; TF Serving
only loads numeric folder names) and renames it into place, which is atomic on one filesystem.
Versions are Unix timestamps, always greater than every version already in the folder.

Object stores (gs://, s3://) have no atomic rename, of a folder or of anything else. There the
version is uploaded under the same hidden name, then moved into `<base>/<version>/` one object at
a time (a server-side copy), `saved_model.pb` last: TF Serving cannot load a SavedModel without
it, so it never loads a half-published version. It may list the folder a moment before the last
object lands; its load then fails and is retried (`--max_num_load_retries`). A push killed during
the move leaves a version folder without `saved_model.pb`, which the next push removes.
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
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, proto_utils

from masktfx import features, warmup
from masktfx.config import OBJECT_STORE_SCHEMES, uri_scheme
from masktfx.records import split_records

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
    """Which model each version was copied from, on a folder or an object store ({} when
    the record is missing, unreadable or damaged)."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(_join(base_directory, SOURCES_FILE)) as handle:
            return json.loads(handle.read())
    except (OSError, ValueError, tf.errors.OpError):
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


def publish_version(model_path: str, base_directory: str,
                    extra_files: dict[str, bytes] | None = None) -> tuple[int, str, bool]:
    """Copy `model_path` into a hidden folder beside the versions, then rename it into place.

    Returns (version, path, published). When the newest version already is this model (a re-run
    with no new data re-evaluates it against itself), nothing is copied and that version is
    returned. On any failure (a full disk, say) the partial copy is removed and the versions
    already there are untouched. `extra_files` (relative path -> bytes) are written into the
    version before it is published.
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
        for name, data in (extra_files or {}).items():  # e.g. the warmup requests
            os.makedirs(os.path.dirname(os.path.join(partial, name)), exist_ok=True)
            with open(os.path.join(partial, name), "wb") as handle:
                handle.write(data)
        target = os.path.join(base_directory, str(version))
        os.rename(partial, target)  # atomic: TF Serving sees all of the version or none of it
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _record_source(base_directory, version, model_path)
    return version, target, True


# TF Serving needs one of these to load a version, so they are moved into place last.
GRAPH_FILES = ("saved_model.pb", "saved_model.pbtxt")


def _gfile():
    import tensorflow as tf  # the object-store file systems (gs://; s3:// with tensorflow-io)

    return tf.io.gfile


def _join(*parts: str) -> str:
    return "/".join(part.rstrip("/") for part in parts)


def store_versions(base: str) -> list[int]:
    """Versions TF Serving can load from an object store: numbered folders with their graph."""
    gfile = _gfile()
    if not gfile.isdir(base):
        return []
    return sorted(int(name.rstrip("/")) for name in gfile.listdir(base)
                  if name.rstrip("/").isdigit() and any(
                      gfile.exists(_join(base, name, graph)) for graph in GRAPH_FILES))


def _relative_files(root: str) -> list[str]:
    gfile = _gfile()
    files = []
    for folder, _, names in gfile.walk(root):
        relative = folder[len(root):].strip("/")
        files.extend(_join(relative, name) if relative else name for name in names)
    # the graph last: until it is there, TF Serving cannot load what was moved before it
    return sorted(files, key=lambda name: (name in GRAPH_FILES, name))


def _move_files(source: str, target: str, files: list[str], copy: bool) -> None:
    gfile = _gfile()
    for name in files:
        destination = _join(target, name)
        gfile.makedirs(destination.rsplit("/", 1)[0])
        if copy:
            gfile.copy(_join(source, name), destination, overwrite=True)
        else:
            gfile.rename(_join(source, name), destination, overwrite=True)


def remove_store_leftovers(base: str, older_than_s: float | None = 60.0) -> list[str]:
    """What a killed object-store push left: hidden uploads, and version folders without their
    graph (killed during the move). Object stores keep no folder times, so age is read from the
    version timestamp in the name; a push still running beside this one is spared (None: remove
    every leftover, whatever its age)."""
    gfile = _gfile()
    loadable = set(store_versions(base))
    removed = []
    for entry in gfile.listdir(base):
        name = entry.rstrip("/")
        if name.startswith(PARTIAL_PREFIX):
            stamp = name[len(PARTIAL_PREFIX):].split("-", 1)[0]
        elif name.isdigit() and int(name) not in loadable:
            stamp = name
        else:
            continue
        if older_than_s is None or not stamp.isdigit() or time.time() - int(stamp) > older_than_s:
            path = _join(base, name)
            if gfile.isdir(path):
                gfile.rmtree(path)
            else:
                gfile.remove(path)
            removed.append(name)
    return removed


def publish_to_store(model_path: str, base: str, extra_files: dict[str, bytes] | None = None
                     ) -> tuple[int, str, bool]:
    """`publish_version` for object stores: upload hidden, then move object by object, graph
    last. Same return value and same no-op when the newest version already is this model."""
    gfile = _gfile()
    gfile.makedirs(base)
    remove_store_leftovers(base)
    versions = store_versions(base)
    sources = _read_sources(base)
    if versions and sources.get(str(versions[-1])) == model_path:
        return versions[-1], _join(base, str(versions[-1])), False
    taken = [int(name.rstrip("/")) for name in gfile.listdir(base) if name.rstrip("/").isdigit()]
    version = max([int(time.time())] + [v + 1 for v in taken])
    staging = _join(base, f"{PARTIAL_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    target = _join(base, str(version))
    files = _relative_files(model_path)
    if not any(name in GRAPH_FILES for name in files):
        raise ValueError(f"{model_path} holds no saved_model.pb: not a SavedModel to push")
    try:
        _move_files(model_path, staging, files, copy=True)
        for name, data in (extra_files or {}).items():
            gfile.makedirs(_join(staging, name).rsplit("/", 1)[0])
            with gfile.GFile(_join(staging, name), "wb") as handle:
                handle.write(data)
        files = sorted(set(files) | set(extra_files or {}),
                       key=lambda name: (name in GRAPH_FILES, name))
        _move_files(staging, target, files, copy=False)
    except BaseException:
        # A store's rename is copy-then-delete: if the graph's copy landed, the version is whole.
        published = version in store_versions(base)
        for leftover in (staging,) if published else (staging, target):
            if gfile.isdir(leftover):
                gfile.rmtree(leftover)
        raise
    gfile.rmtree(staging)
    sources[str(version)] = model_path
    with gfile.GFile(_join(base, SOURCES_FILE), "w") as handle:  # one object: replaced whole
        handle.write(json.dumps(sources, indent=1, sort_keys=True))
    return version, target, True


def publish(model_path: str, base_directory: str, extra_files: dict[str, bytes] | None = None
            ) -> tuple[int, str, bool]:
    """Publish on a folder (atomic rename) or an object store (graph last)."""
    scheme = uri_scheme(base_directory)
    if not scheme:
        return publish_version(model_path, base_directory, extra_files)
    if scheme not in OBJECT_STORE_SCHEMES + ("ram",):  # ram://: TensorFlow's in-memory store
        raise ValueError(f"push destination {base_directory}: TF Serving reads "
                         f"{', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)} or folders, "
                         f"not {scheme}://")
    try:
        _gfile().exists(base_directory)
    except Exception as exc:  # noqa: BLE001 - TF raises UnimplementedError for unknown schemes
        hint = " (TensorFlow 2.16 reads s3:// through the tensorflow-io package: install it " \
               "in the pipeline image)" if scheme == "s3" else ""
        raise ValueError(f"push destination {base_directory}: {exc}{hint}") from exc
    return publish_to_store(model_path, base_directory, extra_files)


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
        extra_files = self._warmup(input_dict, exec_properties, base_directory)
        extra_files.update(self._descriptors(input_dict, exec_properties))
        extra_files.update(self._test_metrics(input_dict))
        version, serving_path, published = publish(model_path, base_directory, extra_files)
        logging.info("Model version %d %s at %s", version,
                     "published" if published else "was already serving this model",
                     serving_path)
        io_utils.copy_dir(model_path, model_push.uri)  # archive copy, as TFX's Pusher keeps
        self._MarkPushed(model_push, pushed_destination=serving_path,
                         pushed_version=str(version))
        # 0 when the version was already serving this model (a re-run with no new data)
        model_push.set_int_custom_property(NEW_VERSION_PROPERTY, int(published))


    @staticmethod
    def _warmup(input_dict: dict[str, list[types.Artifact]], exec_properties: dict[str, Any],
                base_directory: str) -> dict[str, bytes]:
        """TF Serving's warmup file, from the first test regions of the examples input."""
        examples = input_dict.get(EXAMPLES_KEY) or []
        count = int(exec_properties.get(WARMUP_REGIONS_KEY) or 0)
        if not examples or count <= 0:
            return {}
        model_name = os.path.basename(base_directory.rstrip("/"))
        # the newest span's regions
        logs = warmup.warmup_requests_from(examples[-1].uri, count, model_name)
        logging.info("warmup: %d requests of up to %d regions", len(logs), count)
        return {warmup.WARMUP_FILE: warmup.encode_warmup(logs)} if logs else {}

    @staticmethod
    def _descriptors(input_dict: dict[str, list[types.Artifact]],
                     exec_properties: dict[str, Any]) -> dict[str, bytes]:
        """The region descriptors' statistics of the training split of the examples input (the
        whole window), which the next runs' drift checks compare new data with."""
        examples = input_dict.get(EXAMPLES_KEY) or []
        if not examples or not exec_properties.get(DESCRIPTORS_KEY):
            return {}
        from masktfx import drift

        columns = drift.describe_records(split_records(
            [artifact.uri for artifact in examples], [features.TRAIN_SPLIT]))
        if not columns:
            return {}
        logging.info("region descriptors of %d training regions",
                     len(next(iter(columns.values()))))
        return {drift.DESCRIPTORS_FILE: drift.descriptor_statistics(columns).SerializeToString()}


    @staticmethod
    def _test_metrics(input_dict: dict[str, list[types.Artifact]]) -> dict[str, bytes]:
        """The Evaluator's overall figures on the test split (its intervals' file), which later
        estimates on new data are shown beside."""
        evaluations = input_dict.get(EVALUATION_KEY) or []
        if not evaluations:
            return {}
        from masktfx import drift, intervals

        path = os.path.join(evaluations[0].uri, intervals.INTERVALS_FILE)
        if not fileio.exists(path):
            return {}
        overall = json.loads(io_utils.read_string_file(path))["overall"]
        metrics = overall["metrics"]
        found = {"auc": metrics["auc"]["value"], "accuracy": metrics["accuracy"]["value"],
                 "auc_interval": [metrics["auc"]["lower"], metrics["auc"]["upper"]],
                 "regions": overall["count"], "groups": overall.get("groups")}
        return {drift.TEST_METRICS_FILE: json.dumps(found, indent=1).encode()}


EXAMPLES_KEY = "examples"  # test regions the warmup requests are built from
EVALUATION_KEY = "evaluation"  # the Evaluator's output: its test-split figures
WARMUP_REGIONS_KEY = "warmup_regions"
DESCRIPTORS_KEY = "region_descriptors"  # 1: store the training regions' descriptors


class VersionedPusherSpec(standard_component_specs.PusherSpec):
    """TFX's PusherSpec, plus the examples the warmup requests come from."""

    PARAMETERS = {**standard_component_specs.PusherSpec.PARAMETERS,
                  WARMUP_REGIONS_KEY: ExecutionParameter(type=int, optional=True),
                  DESCRIPTORS_KEY: ExecutionParameter(type=int, optional=True)}
    INPUTS = {**standard_component_specs.PusherSpec.INPUTS,
              EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
              EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation,
                                               optional=True)}


class VersionedPusher(Pusher):
    """TFX Pusher with atomic, strictly increasing versions, each with TF Serving's warmup
    requests (from `examples`' test split) when `examples` is given, and with
    `region_descriptors` the descriptors of its training split (masktfx/drift.py)."""

    SPEC_CLASS = VersionedPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
                 push_destination: pusher_pb2.PushDestination,
                 examples: types.BaseChannel | None = None,
                 warmup_regions: int = warmup.DEFAULT_WARMUP_REGIONS,
                 infra_blessing: types.BaseChannel | None = None,
                 region_descriptors: bool = False,
                 evaluation: types.BaseChannel | None = None):
        spec = VersionedPusherSpec(
            model=model, model_blessing=model_blessing, infra_blessing=infra_blessing,
            push_destination=push_destination,
            examples=examples, warmup_regions=warmup_regions, evaluation=evaluation,
            region_descriptors=int(region_descriptors),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel))
        base_component.BaseComponent.__init__(self, spec=spec)
