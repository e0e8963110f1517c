"""Loading, switching and calling the versions of one model, as TF Serving does it.

The manager polls the model's base path for numbered version folders, loads a new version fully
before it serves it, then unloads older versions. A request holds a reference to the version it
started on, so a switch never fails a request in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from masktfx import features
from masktfx.config import PipelineConfig
from masktfx.images import (
    REGION_AT,
    RegionCheckError,
    RegionInputError,
    check_region,
    read_header,
)
from masktfx.model_config import version_folders
from masktfx.serving.batching import Batcher, BatchingParameters, QueueFullError
from masktfx.serving.limits import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_REGIONS,
    LARGE_MODEL_CALL_BYTES,
)
from masktfx.tf_errors import op_message

# Model calls over LARGE_MODEL_CALL_BYTES run one at a time in the process, whatever the model.
LARGE_MODEL_CALLS = threading.Lock()

log = logging.getLogger("masktfx.serve")



def check_region_count(count: int, limit: int, where: str = "the request") -> None:
    """Refuse a request over the region limit before anything is decoded or allocated."""
    if count > limit:
        raise ServingError("RESOURCE_EXHAUSTED",
                           f"{where} holds {count} regions; the limit is {limit} per request "
                           "(masktfx serve --max-regions); send them in smaller batches")


class ServingError(Exception):
    """An error with a TF Serving status code (INVALID_ARGUMENT, NOT_FOUND, ...)."""

    HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
                   "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": 503, "INTERNAL": 500,
                   "UNIMPLEMENTED": 501}

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return self.HTTP_STATUS.get(self.code, 500)


@dataclass
class ServableVersion:
    version: int
    path: str
    state: str = "START"
    error: str = ""
    module: Any = None
    signature_defs: dict[str, Any] = field(default_factory=dict)  # name -> SignatureDef proto
    warmup_requests: int = 0  # replayed from assets.extra before the version became AVAILABLE


def _read_signature_defs(path: str) -> dict[str, Any]:
    from tensorflow.python.saved_model import loader_impl

    saved_model = loader_impl.parse_saved_model(path)
    return dict(saved_model.meta_graphs[0].signature_def)


class ModelManager:
    """One model's versions; serves the newest `keep_versions` of them (TF Serving's 'latest'),
    or, once `set_policy` gives it specific versions, those, with their labels."""

    def __init__(self, name: str, base_path: str, poll_seconds: float = 1.0,
                 keep_versions: int = 1, max_pixels: int | None = None,
                 batching: BatchingParameters | None = None,
                 max_regions: int = DEFAULT_MAX_REGIONS,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES):
        self.name = name
        self.base_path = os.path.abspath(base_path)
        self.poll_seconds = poll_seconds
        self.keep_versions = keep_versions
        self.max_pixels = PipelineConfig().max_pixels if max_pixels is None else max_pixels
        self.max_regions = max_regions
        self.max_decoded_bytes = max_decoded_bytes
        self._specific: tuple[int, ...] = ()  # versions to serve; () serves the newest
        self._wanted_labels: dict[str, int] = {}  # as the config file says
        self._labels: dict[str, int] = {}  # in effect: each to a version that is available
        self._versions: dict[int, ServableVersion] = {}
        self._failed: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batching = batching
        self.batcher: Batcher | None = None

    # -- version management ------------------------------------------------------------------
    def set_policy(self, versions: tuple[int, ...], labels: dict[str, int]) -> None:
        """Serve these versions (() for the newest) with these labels, from the next poll on.
        A label moves to its new version once that version is available, and a version is
        unloaded only once no label points at it: a switch fails no request."""
        with self._lock:
            self._specific = tuple(versions)
            self._wanted_labels = dict(labels)

    def poll_once(self) -> None:
        """Load the versions the policy wants that are not yet loaded, move the labels to the
        ones now available, then retire the versions neither the policy nor a label holds."""
        on_disk = version_folders(self.base_path)
        with self._lock:
            specific, wanted_labels = self._specific, dict(self._wanted_labels)
        if specific:
            wanted = [version for version in specific if version in on_disk]
        else:
            wanted = sorted(on_disk, reverse=True)[:self.keep_versions]
        for version in sorted(wanted):
            with self._lock:
                known = self._versions.get(version)
            # an unloaded version (END) is loaded again when the policy wants it back
            if (known is not None and known.state != "END") or version in self._failed:
                continue
            servable = ServableVersion(version, on_disk[version], state="LOADING")
            with self._lock:
                self._versions[version] = servable
            try:
                servable.module = tf.saved_model.load(servable.path)
                servable.signature_defs = _read_signature_defs(servable.path)
                servable.warmup_requests = replay_warmup(servable.module, servable.path)
                servable.state = "AVAILABLE"
                log.info("model %s version %d is available", self.name, version)
            except Exception as exc:  # a broken version must not stop the others
                servable.state, servable.error = "END", f"{type(exc).__name__}: {exc}"
                self._failed.add(version)
                log.error("model %s version %d failed to load: %s", self.name, version, exc)
        with self._lock:
            available = {v for v, s in self._versions.items() if s.state == "AVAILABLE"}
            labels = {label: version for label, version in wanted_labels.items()
                      if version in available}
            for label, version in self._labels.items():  # not yet movable: kept where it was
                if label in wanted_labels and label not in labels and version in available:
                    labels[label] = version
            self._labels = labels
        if specific:
            keep = set(wanted) | set(labels.values())
        else:
            keep = set(sorted(available, reverse=True)[:self.keep_versions])
        for version in sorted(available - keep):
            with self._lock:
                servable = self._versions[version]
                servable.state = "UNLOADING"
                servable.module = None  # requests in flight keep their own reference
                servable.state = "END"
            log.info("model %s version %d unloaded", self.name, version)

    def labels(self) -> dict[str, int]:
        """The labels in effect, each to a version that is available."""
        with self._lock:
            return dict(self._labels)

    def start(self) -> None:
        if self._batching is not None and self.batcher is None:
            self.batcher = Batcher(self._batching)
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_forever, daemon=True,
                                        name=f"poll-{self.name}")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # keep polling whatever one poll met
                log.exception("polling %s failed", self.base_path)

    # -- lookups -------------------------------------------------------------------------------
    def status(self, version: int | None = None) -> list[ServableVersion]:
        with self._lock:
            versions = sorted(self._versions.values(), key=lambda s: s.version, reverse=True)
        if version is not None:
            versions = [s for s in versions if s.version == version]
            if not versions:
                raise ServingError("NOT_FOUND",
                                   f"Could not find version {version} of model {self.name}")
        return versions

    def servable(self, version: int | None = None, label: str = ""
                 ) -> tuple[ServableVersion, Any]:
        """The version to call (by number, by label, or the newest) and a reference to its
        loaded module (held for the request), looked up at once under the lock."""
        with self._lock:
            if label:
                version = self._labels.get(label)
                if version is None:
                    raise ServingError("NOT_FOUND",
                                       f"Unrecognized servable version label: {label}")
            if version is None:
                ready = [s for s in self._versions.values() if s.state == "AVAILABLE"]
                if not ready:
                    raise ServingError("UNAVAILABLE" if self._versions else "NOT_FOUND",
                                       f"no version of model {self.name} is available yet "
                                       f"(watching {self.base_path})")
                chosen = max(ready, key=lambda s: s.version)
            else:
                chosen = self._versions.get(version)
                if chosen is None or chosen.state != "AVAILABLE":
                    raise ServingError("NOT_FOUND", f"Servable not found for request: Specific"
                                                    f"({self.name}, {version})")
            return chosen, chosen.module

    # -- inference -----------------------------------------------------------------------------
    def signature(self, signature_name: str = "", version: int | None = None, label: str = ""
                  ) -> tuple[ServableVersion, str, Any]:
        """The version to call, the signature's name (default serving_default), its function."""
        servable, module = self.servable(version, label)
        name = signature_name or features.SERVING_SIGNATURE
        if name not in module.signatures:
            raise ServingError("INVALID_ARGUMENT",
                               f"signature {name!r} not found; this model has "
                               f"{', '.join(sorted(module.signatures))}")
        return servable, name, module.signatures[name]

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str = "",
                version: int | None = None, label: str = ""
                ) -> tuple[int, str, dict[str, np.ndarray]]:
        return self.call(self.signature(signature_name, version, label), inputs)

    def call(self, resolved: tuple[ServableVersion, str, Any], inputs: dict[str, np.ndarray],
             held: Any = None) -> tuple[int, str, dict[str, np.ndarray]]:
        """Run a signature `signature()` resolved (one version lookup per request) on inputs
        that pass the same checks whatever the signature: names, dtypes, shapes, one number of
        regions across inputs, the region and decoded-size limits, and every region through
        check_region. `held` (the request's reservation of the server's budget, if any) grows
        by what the images decode to before any is decoded."""
        servable, name, function = resolved
        specs = function.structured_input_signature[1]
        arrays = check_inputs(inputs, specs)
        check_region_count(len(next(iter(arrays.values()))), self.max_regions)
        decoded = check_signature_regions(arrays, self.max_pixels, self.max_decoded_bytes, held)

        def call(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            # the arrays that were checked are the ones the model gets
            tensors = {key: tf.constant(value, dtype=specs[key].dtype)
                       for key, value in batch.items()}
            try:
                outputs = function(**tensors)
            except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
                raise ServingError("INVALID_ARGUMENT", op_message(exc)) from None
            return {key: value.numpy() for key, value in outputs.items()}

        with LARGE_MODEL_CALLS if decoded > LARGE_MODEL_CALL_BYTES else contextlib.nullcontext():
            batcher = self.batcher
            if batcher is None:
                return servable.version, name, call(arrays)
            try:
                return servable.version, name, batcher.submit((servable.version, name), call,
                                                              arrays)
            except QueueFullError as exc:
                raise ServingError("UNAVAILABLE", str(exc)) from None


def replay_warmup(module: Any, path: str) -> int:
    """Call the version with the warmup requests stored beside it, as TF Serving does before it
    serves a version; a request that fails fails the load. Returns how many were replayed."""
    from masktfx.warmup import WARMUP_FILE, read_warmup

    logs = read_warmup(path)
    for index, entry in enumerate(logs):
        request = entry.predict_log.request
        name = request.model_spec.signature_name or features.SERVING_SIGNATURE
        if name not in module.signatures:
            raise ValueError(f"{WARMUP_FILE} request {index}: no signature {name!r}")
        function = module.signatures[name]
        specs = function.structured_input_signature[1]
        try:
            function(**{key: tf.constant(tf.make_ndarray(proto), dtype=specs[key].dtype)
                        for key, proto in request.inputs.items()})
        except (tf.errors.OpError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{WARMUP_FILE} request {index} ({name}) failed: "
                             f"{op_message(exc)}") from None
    return len(logs)


def check_input_names(given: Any, expected: Any, where: str = "") -> None:
    """The same names as the signature's inputs, or an error listing what is missing or extra."""
    missing = sorted(set(expected) - set(given))
    unknown = sorted(set(given) - set(expected))
    if missing or unknown:
        raise ServingError("INVALID_ARGUMENT",
                           f"{where}inputs must be {', '.join(sorted(expected))}"
                           + (f"; missing {', '.join(missing)}" if missing else "")
                           + (f"; unknown {', '.join(unknown)}" if unknown else ""))


def check_inputs(inputs: dict[str, np.ndarray], specs: dict[str, tf.TensorSpec]
                 ) -> dict[str, np.ndarray]:
    """Names, dtypes and shapes against the signature, with TF Serving-like messages."""
    check_input_names(inputs, specs)
    arrays = {}
    for name, spec in specs.items():
        value = np.asarray(inputs[name], dtype=object if spec.dtype == tf.string else None)
        if value.ndim == 0 or value.shape[0] == 0:
            raise ServingError("INVALID_ARGUMENT", f"input {name!r} holds an empty batch")
        if not spec.shape.is_compatible_with(value.shape):
            raise ServingError("INVALID_ARGUMENT",
                               f"input {name!r} has shape {list(value.shape)} but the signature "
                               f"expects {spec.shape.as_list()} (None: any size)")
        if spec.dtype != tf.string:
            try:
                value = value.astype(spec.dtype.as_numpy_dtype, casting="same_kind")
            except (TypeError, ValueError) as exc:
                raise ServingError("INVALID_ARGUMENT",
                                   f"input {name!r} cannot be {spec.dtype.name}: {exc}") from None
        elif any(not isinstance(item, bytes) for item in value.flat):
            raise ServingError("INVALID_ARGUMENT",
                               f"input {name!r} cannot be string: it holds non-string values")
        arrays[name] = value
    counts = {name: len(value) for name, value in arrays.items()}
    if len(set(counts.values())) > 1:
        raise ServingError("INVALID_ARGUMENT",
                           "the inputs must agree on the number of regions: " + ", ".join(
                               f"{name} has {count}" for name, count in sorted(counts.items())))
    return arrays


# What the served graph decodes (modules/transform.py), as TF Serving would run it: TIFF, DICOM and
# NIfTI files are converted by the client (`masktfx predict` sends raster records and PNG masks).
GRAPH_FORMATS = {"images": ("png", "jpeg", "raster"), "masks": ("png", "jpeg")}
GRAPH_CANNOT_DECODE = ("is a {format}, which the served graph cannot decode; {part} go as "
                       "{formats} (`masktfx predict` converts files as ingest stores them)")


def check_signature_regions(arrays: dict[str, np.ndarray], max_pixels: int,
                            max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                            held: Any = None) -> int:
    """The region check for any signature: images and masks as tensors (predict_raw), or inside
    serialized tf.Examples (serving_default, transform_features). First every header, and what
    the whole request decodes to against `max_decoded_bytes` (and, with `held`, reserved in the
    server's budget); then each region, decoded. Returns the decoded bytes."""
    rows = signature_regions(arrays)
    total = 0
    for row, (images, masks) in enumerate(rows):
        for part, items in (("images", images), ("masks", masks)):
            for index, data in enumerate(items):
                try:
                    header = read_header(bytes(data), max_pixels, mask=part == "masks")
                    if header.format not in GRAPH_FORMATS[part]:
                        raise RegionInputError(GRAPH_CANNOT_DECODE.format(
                            format=header.format.upper(), part=part,
                            formats=", ".join(GRAPH_FORMATS[part])))
                    total += header.decoded_bytes
                except RegionInputError as exc:
                    raise ServingError("INVALID_ARGUMENT", REGION_AT.format(
                        row=row, part=part, index=index) + str(exc)) from None
    if total > max_decoded_bytes:
        raise ServingError("RESOURCE_EXHAUSTED",
                           f"the request's images and masks decode to {total / 2**20:.1f} MiB; "
                           f"the limit is {max_decoded_bytes / 2**20:g} MiB per request "
                           "(masktfx serve --max-decoded-mb); send fewer or smaller regions")
    if held is not None and total:
        from masktfx.serving.budget import model_call_cost

        held.grow(model_call_cost(total), "the model call on the request's regions")
    for row, (images, masks) in enumerate(rows):
        try:
            check_region(images, masks, max_pixels)
        except RegionCheckError as exc:
            raise ServingError("INVALID_ARGUMENT", REGION_AT.format(
                row=row, part=f"{exc.part}s", index=exc.index) + exc.reason) from None
    return total


def signature_regions(arrays: dict[str, np.ndarray]) -> list[tuple[list[bytes], list[bytes]]]:
    """Each instance's (images, masks): from the tensors of predict_raw, or parsed from the
    serialized tf.Examples of the other signatures; [] for a signature that takes neither."""
    if features.IMAGES_KEY in arrays and features.MASKS_KEY in arrays:
        images, masks = arrays[features.IMAGES_KEY], arrays[features.MASKS_KEY]
        return [(list(images[row]), list(masks[row])) for row in range(len(images))]
    if features.EXAMPLES_INPUT not in arrays:
        return []
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    rows = []
    for row, serialized in enumerate(arrays[features.EXAMPLES_INPUT].reshape(-1)):
        try:
            example = example_pb2.Example.FromString(bytes(serialized))
        except DecodeError:
            raise ServingError("INVALID_ARGUMENT",
                               f"instance {row}: not a serialized tf.Example") from None
        feature = example.features.feature
        missing = [key for key in (features.IMAGES_KEY, features.MASKS_KEY)
                   if not feature[key].bytes_list.value]
        if missing:
            raise ServingError("INVALID_ARGUMENT", f"instance {row}: the tf.Example has no "
                                                   f"{' or '.join(missing)} bytes")
        rows.append((list(feature[features.IMAGES_KEY].bytes_list.value),
                     list(feature[features.MASKS_KEY].bytes_list.value)))
    return rows


def wait_for_version(manager: ModelManager, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return manager.servable()[0].version
        except ServingError:
            time.sleep(0.1)
    raise TimeoutError(f"no version of {manager.name} became available in {timeout} s")
