"""`masktfx score`: every region of a manifest or of ingested TFRecords scored by a pushed
SavedModel, as an Apache Beam pipeline on any runner, without a model server.

Regions are read as ingest reads them (a manifest row is checked and encoded by ingest's own
`encode_region`; an ingested record is passed on as it is), scored through Beam's RunInference with
the version's `serving_default` signature, and written one row per region: its id, group and
metadata, every output the signature serves (probability, the label at the served operating
point, the out-of-distribution score, ...) and the version. A row that cannot be read, or that
the model refuses, goes to rejected.csv with its reason; the others are scored.

Everything is written into a work folder beside the output folder and moved into place only when
the job succeeded: a killed job leaves no partial output (the next job removes its work folder),
and a job over an existing output replaces it whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from masktfx import features
from masktfx.beam_args import ingest_beam_args
from masktfx.components.model_config import (
    CONFIG_FILE,
    ModelConfigError,
    read_config,
    version_folders,
)
from masktfx.config import PipelineConfig
from masktfx.example_proto import Example
from masktfx.ingest import (
    WORK_OWNER,
    RowFailure,
    encode_region,
    remove_abandoned_work_dirs,
    show_progress,
)
from masktfx.manifest import ManifestRow, read_manifest
from masktfx.tf_errors import op_message

FORMATS = ("csv", "parquet", "geojson", "tfrecord")
REJECTED_TAG = "rejected"
SUMMARY_FILE = "score_summary.json"
SHARD_PREFIX = "scores"
GEOJSON_FILE = "scores.geojson"
WORK_PREFIX = ".score-"
# Regions per RunInference batch: the signature decodes every image of a batch at once.
MAX_BATCH = 128
ROWS_PER_CHUNK = 64


class ScoreError(RuntimeError):
    """The job cannot run at all; nothing was written."""


class ModelRefusal(ValueError):
    """The model failed on a region; the message is TensorFlow's, as a user should read it."""


@dataclass(frozen=True)
class Region:
    """What a scored row carries besides the model's outputs."""

    example_id: str
    group: str
    metadata: tuple[tuple[str, str], ...]
    geometry: str = ""  # GeoJSON text, for regions that came from polygons
    geometry_crs: str = ""
    row: int = 0  # the manifest row (0: a TFRecord)
    source: str = ""  # the manifest or TFRecord file


@dataclass(frozen=True)
class Rejected:
    row: int
    example_id: str
    path: str
    reason: str


@dataclass
class ScoreResult:
    output_dir: str
    summary: dict

    def describe(self) -> str:
        found = self.summary
        labels = ", ".join(f"{count} labelled {label}"
                           for label, count in sorted(found["label_counts"].items()))
        return (f"scored {found['scored']} region(s) with {found['model']} version "
                f"{found['version']} in {found['seconds']:.1f} s ({labels or 'none'}); "
                f"{found['rejected']} rejected -> {self.output_dir}")


# -- the model


def resolve_model(model: str, version: int | None = None, label: str | None = None,
                  model_name: str = "", config_file: str = "") -> tuple[str, str, int]:
    """(model name, version folder, version) of `model`: a model's base path (numbered version
    folders) or a serving folder holding one model (or `model_name`). The newest version, unless
    `version` is given or `label` names one in the serving folder's models.config."""
    if "://" in model:
        raise ScoreError(f"{model}: give a local or mounted folder; version folders on an "
                         "object store are not listed here")
    model = os.path.abspath(model)
    if not os.path.isdir(model):
        raise ScoreError(f"{model}: no such model folder")
    base, serving_dir = model, os.path.dirname(model)
    if not version_folders(model):
        names = [name for name in sorted(os.listdir(model))
                 if version_folders(os.path.join(model, name))]
        if model_name:
            names = [name for name in names if name == model_name]
        if len(names) != 1:
            raise ScoreError(f"{model}: holds no numbered SavedModel version" if not names else
                             f"{model}: holds models {', '.join(names)}; name one (--model-name)")
        base, serving_dir = os.path.join(model, names[0]), model
    name = os.path.basename(base)
    versions = version_folders(base)
    if label:
        config_path = config_file or os.path.join(serving_dir, CONFIG_FILE)
        try:
            served = read_config(config_path).get(name)
        except ModelConfigError as exc:
            raise ScoreError(str(exc)) from None
        if served is None or label not in served.labels:
            raise ScoreError(f"{config_path}: model {name!r} has no version labelled {label!r}")
        version = served.labels[label]
    if version is None:
        version = max(versions)
    if version not in versions:
        raise ScoreError(f"{base}: no version {version} (versions: "
                         f"{', '.join(map(str, sorted(versions)))})")
    return name, versions[version], version


@dataclass(frozen=True)
class ModelInputs:
    """What a version serves and takes, read from saved_model.pb without loading the model."""

    outputs: dict[str, str]  # serving_default's outputs: name -> dtype ('float32', ...)
    views: int  # images per region
    masks: int  # masks per region (1: shared by the views)

    @classmethod
    def read(cls, saved_model_dir: str) -> ModelInputs:
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as handle:
            proto.ParseFromString(handle.read())
        signatures = proto.meta_graphs[0].signature_def
        if features.SERVING_SIGNATURE not in signatures or \
                features.RAW_SIGNATURE not in signatures:
            raise ScoreError(f"{saved_model_dir}: not a MaskTFX model (no "
                             f"{features.SERVING_SIGNATURE} and {features.RAW_SIGNATURE} "
                             "signatures)")
        raw = signatures[features.RAW_SIGNATURE].inputs
        return cls({name: tf.dtypes.as_dtype(spec.dtype).name for name, spec in
                    sorted(signatures[features.SERVING_SIGNATURE].outputs.items())},
                   raw[features.IMAGES_KEY].tensor_shape.dim[1].size,
                   raw[features.MASKS_KEY].tensor_shape.dim[1].size)

    def mismatch(self, views: int, masks: int) -> str:
        """Why regions of `views` images and `masks` masks are not this model's ('' if they
        are)."""
        if views == self.views and masks == self.masks:
            return ""
        shared = "a shared mask" if self.masks == 1 else f"{self.masks} masks"
        return (f"{views} image(s) and {masks} mask(s) per region; the model takes "
                f"{self.views} image(s) and {shared}")


class _LoadedSignature:
    """The signature with the loaded object that owns its variables (which must stay alive)."""

    def __init__(self, path: str):
        import tensorflow as tf

        self.module = tf.saved_model.load(path)
        self.signature = self.module.signatures[features.SERVING_SIGNATURE]


class SavedModelHandler(ModelHandler[bytes, dict, _LoadedSignature]):
    """RunInference's handler for a pushed version: serialized tf.Examples in, each region's
    outputs of `serving_default` (name -> value) out."""

    def __init__(self, path: str, max_batch_size: int = MAX_BATCH):
        super().__init__()
        self._path = path
        self._max_batch_size = max_batch_size

    def load_model(self) -> _LoadedSignature:
        return _LoadedSignature(self._path)

    def run_inference(self, batch: Sequence[bytes], model: _LoadedSignature,
                      inference_args: dict | None = None) -> Iterable[dict]:
        import tensorflow as tf

        try:
            outputs = model.signature(**{features.EXAMPLES_INPUT: tf.constant(list(batch))})
        except tf.errors.OpError as exc:
            raise ModelRefusal(op_message(exc)) from None
        arrays = {name: value.numpy() for name, value in outputs.items()}
        return [{name: values[index] for name, values in arrays.items()}
                for index in range(len(batch))]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}

    def share_model_across_processes(self) -> bool:
        return False


# -- reading regions


def _manifest_region(row: ManifestRow, source: str) -> Region:
    return Region(row.example_id, row.group, row.metadata, row.geometry, row.geometry_crs,
                  row.row, source)


class EncodeRowsFn(beam.DoFn):
    """Manifest rows -> (Region, serialized example), as ingest encodes them; a row whose files
    cannot be read -> Rejected."""

    def __init__(self, max_pixels: int, resize_masks: bool, source: str):
        self._max_pixels = max_pixels
        self._resize_masks = resize_masks
        self._source = source

    def process(self, rows: list[ManifestRow]):
        for row in rows:
            try:
                serialized, _ = encode_region(row, self._max_pixels, self._resize_masks)
            except RowFailure as failure:
                yield beam.pvalue.TaggedOutput(REJECTED_TAG, Rejected(
                    row.row, row.example_id, failure.path, failure.reason))
            else:
                yield _manifest_region(row, self._source), serialized


class RecordRefused(ValueError):
    def __init__(self, example_id: str, reason: str):
        super().__init__(reason)
        self.example_id = example_id


def record_region(path: str, record: bytes, model: ModelInputs) -> tuple[Region, bytes]:
    """An ingested record -> (Region, the record); RecordRefused when it is no region of
    `model`'s."""
    try:
        example = Example.FromString(record)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and others
        raise RecordRefused("", f"not a tf.Example: {exc}") from None
    feature = example.features.feature

    def text(name: str) -> str:
        values = feature[name].bytes_list.value if name in feature else []
        return values[0].decode("utf-8", "replace") if values else ""

    mismatch = model.mismatch(len(feature[features.IMAGES_KEY].bytes_list.value),
                              len(feature[features.MASKS_KEY].bytes_list.value))
    if mismatch:
        raise RecordRefused(text(features.ID_KEY), mismatch)
    metadata = tuple(sorted((name, text(name)) for name in feature
                            if name not in features.RESERVED_KEYS
                            and feature[name].HasField("bytes_list")))
    return Region(text(features.ID_KEY), text(features.GROUP_KEY), metadata, source=path), record


class RecordRegionFn(beam.DoFn):
    def __init__(self, model: ModelInputs):
        self._model = model

    def process(self, item: tuple[str, bytes]):
        path, record = item
        try:
            yield record_region(path, record, self._model)
        except RecordRefused as exc:
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, Rejected(0, exc.example_id, path,
                                                                  str(exc)))


def record_files(data: str) -> list[str]:
    """The TFRecord files `data` names: a file, a glob pattern, or a folder (ingest's shards in
    it, else every file in it)."""
    import glob

    if os.path.isdir(data):
        found = sorted(glob.glob(os.path.join(data, features.SHARD_GLOB)))
        found = found or sorted(path for path in glob.glob(os.path.join(data, "*"))
                                if os.path.isfile(path) and not path.endswith((".json", ".csv")))
    else:
        found = sorted(glob.glob(data))
    if not found:
        raise ScoreError(f"{data}: no TFRecord files there")
    return found


# -- writing rows


def output_row(region: Region, outputs: dict, version: int) -> dict:
    """One region's row: id, group, metadata, the model's outputs (as Python numbers), version."""
    row: dict[str, Any] = {"id": region.example_id, "group": region.group}
    row.update(region.metadata)
    for name, value in outputs.items():
        item = value.item() if hasattr(value, "item") else value
        row[name] = int(item) if isinstance(item, bool) else item
    row["version"] = version
    return row


def columns(metadata: Sequence[str], outputs: dict[str, str]) -> list[str]:
    """The output's columns, in order: id, group, metadata, probability, label, the other
    outputs, version."""
    first = [name for name in (features.PROBABILITY_OUTPUT, features.PREDICTED_LABEL_OUTPUT)
             if name in outputs]
    return ["id", "group", *metadata, *first,
            *(name for name in outputs if name not in first), "version"]


def csv_line(row: dict, names: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([row.get(name, "") for name in names])
    return buffer.getvalue()


def geojson_line(region: Region, row: dict) -> str:
    """The region as a GeoJSON Feature (its polygon, or no geometry) with the row as properties,
    wrapped with its CRS: `{"crs": ..., "feature": ...}`, one per line."""
    geometry = json.loads(region.geometry) if region.geometry else None
    feature = {"type": "Feature", "id": region.example_id, "geometry": geometry,
               "properties": row}
    return json.dumps({"crs": region.geometry_crs, "feature": feature}, sort_keys=True)


def tf_example(row: dict, names: Sequence[str]) -> bytes:
    example = Example()
    feature = example.features.feature
    for name in names:
        value = row.get(name, "")
        if isinstance(value, float):
            feature[name].float_list.value.append(value)
        elif isinstance(value, int):
            feature[name].int64_list.value.append(value)
        else:
            feature[name].bytes_list.value.append(str(value).encode("utf-8"))
    return example.SerializeToString()


def parquet_schema(metadata: Sequence[str], outputs: dict[str, str]) -> Any:
    import pyarrow as pa

    kinds = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(),
             "int32": pa.int32(), "bool": pa.int64()}
    fields = [(name, kinds.get(outputs.get(name, ""), pa.string()))
              for name in columns(metadata, outputs)]
    return pa.schema([(name, pa.int64() if name == "version" else kind)
                      for name, kind in fields])


def _parquet_row(row: dict, schema: Any) -> dict:
    import pyarrow as pa

    return {name: row.get(name, "" if pa.types.is_string(schema.field(name).type) else None)
            for name in schema.names}


def write_geojson(work_dir: str, lines: Iterable[str]) -> dict[str, str]:
    """The wrapped features of `lines` as one FeatureCollection per CRS, streamed (the rows are
    never all in memory): `scores.geojson` when they share one CRS, else one file per CRS.
    Returns file name -> CRS."""
    handles: dict[str, TextIO] = {}
    files: dict[str, str] = {}
    count: dict[str, int] = {}
    for line in lines:
        wrapped = json.loads(line)
        crs = wrapped["crs"]
        if crs not in handles:
            name = f"scores-{len(handles) + 1}.geojson"
            handle = open(os.path.join(work_dir, name), "w", encoding="utf-8")  # noqa: SIM115
            header: dict[str, Any] = {"type": "FeatureCollection"}
            if crs:  # the 2008 GeoJSON spec's named CRS, as GDAL reads and writes it
                header["crs"] = {"type": "name", "properties": {"name": crs}}
            handle.write(json.dumps(header)[:-1] + ', "features": [\n')
            handles[crs], files[name], count[crs] = handle, crs, 0
        handles[crs].write((",\n" if count[crs] else "") + json.dumps(wrapped["feature"]))
        count[crs] += 1
    for handle in handles.values():
        handle.write("\n]}\n")
        handle.close()
    if len(files) == 1:
        (only, crs), = files.items()
        os.rename(os.path.join(work_dir, only), os.path.join(work_dir, GEOJSON_FILE))
        return {GEOJSON_FILE: crs}
    return files


def _shard_lines(pattern: str) -> Iterator[str]:
    import glob

    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield line
        os.remove(path)


# -- the job


class _Progress(beam.DoFn):
    """Counts scored regions into a file per worker, which the terminal's progress bar sums."""

    def __init__(self, progress_dir: str | None):
        self._progress_dir = progress_dir
        self._file = None
        self._done = 0

    def setup(self):
        import uuid

        if self._progress_dir and os.path.isdir(self._progress_dir):
            self._file = os.path.join(self._progress_dir, uuid.uuid4().hex)

    def process(self, element):
        self._done += 1
        if self._file and self._done % 32 == 0:
            self._write()
        yield element

    def finish_bundle(self):
        if self._file:
            self._write()

    def _write(self):
        with open(self._file, "w", encoding="ascii") as handle:
            handle.write(str(self._done))


class CountFn(beam.CombineFn):
    def create_accumulator(self):
        return {"scored": 0, "label_counts": {}}

    def add_input(self, acc, row):
        acc["scored"] += 1
        label = str(row.get(features.PREDICTED_LABEL_OUTPUT, ""))
        acc["label_counts"][label] = acc["label_counts"].get(label, 0) + 1
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            merged["scored"] += acc["scored"]
            for label, count in acc["label_counts"].items():
                merged["label_counts"][label] = merged["label_counts"].get(label, 0) + count
        return merged

    def extract_output(self, acc):
        return acc


def rejected_csv(rejections: Iterable[Rejected]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "id", "path", "reason"])
    for item in sorted(rejections, key=lambda r: (r.row, r.path, r.example_id)):
        writer.writerow([item.row or "", item.example_id, item.path, item.reason])
    return buffer.getvalue()


def _refused(batch_and_error) -> Iterator[tuple[Region, bytes]]:
    """A batch the model failed on, element by element (scored again one at a time)."""
    batch, _ = batch_and_error
    yield from batch


def _refusal(element_and_error) -> Rejected:
    """A region the model failed on alone; the error is Beam's dead letter (exception type,
    repr, formatted traceback), whose last line holds the message."""
    (region, _), (kind, _, formatted) = element_and_error
    last = formatted[-1].strip() if formatted else kind.__name__
    message = " ".join((last.split(": ", 1)[1] if ": " in last else last).split())
    prefix = "" if kind is ModelRefusal else f"{kind.__name__}: "
    return Rejected(region.row, region.example_id, region.source,
                    f"the model refused it: {prefix}{message}")


def score(data: str, model: str, output: str, output_format: str = "csv",
          version: int | None = None, label: str | None = None, model_name: str = "",
          config_file: str = "", beam_args: Sequence[str] | None = None,
          max_pixels: int | None = None, resize_masks: bool = False,
          allow_outside_paths: bool = False, id_field: str = "",
          progress: bool | None = None, progress_stream: TextIO | None = None) -> ScoreResult:
    """Score every region of `data` (a manifest CSV, or ingested TFRecords) with a pushed
    version of `model` and write them to the `output` folder in `output_format`."""
    started = time.perf_counter()
    if output_format not in FORMATS:
        raise ScoreError(f"format {output_format!r}: use one of {', '.join(FORMATS)}")
    if "://" in output:
        raise ScoreError(f"{output}: give a local or mounted folder (the output is moved into "
                         "place when the job is done)")
    name, model_dir, chosen = resolve_model(model, version, label, model_name, config_file)
    inputs = ModelInputs.read(model_dir)
    outputs = inputs.outputs
    max_pixels = max_pixels or PipelineConfig().max_pixels
    manifest = None
    if data.lower().endswith(".csv"):
        manifest = read_manifest(data, allow_outside=allow_outside_paths, id_field=id_field,
                                 labels_optional=True)
        mismatch = inputs.mismatch(len(manifest.views), 1 if manifest.shared_mask
                                   else len(manifest.views))
        if mismatch:
            raise ScoreError(f"{data}: {mismatch} ({name} version {chosen})")
        metadata = list(manifest.metadata_columns)
        total: int | None = len(manifest.rows)
    else:
        files = record_files(data)
        metadata = _record_metadata(data)
        total = None
    names = columns(metadata, outputs)

    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    remove_abandoned_work_dirs(parent, WORK_PREFIX)
    work_dir = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=parent)
    _claim(work_dir)
    beam_args = ingest_beam_args(beam_args or [])
    direct = any(arg in ("--runner=DirectRunner", "--runner=direct") for arg in beam_args)
    progress_stream = progress_stream or sys.stderr
    show = (progress if progress is not None else progress_stream.isatty()) and direct
    progress_dir = tempfile.mkdtemp(prefix="masktfx-progress-") if show else None
    stop = threading.Event()
    watcher = None
    if progress_dir:
        watcher = threading.Thread(target=show_progress, args=(
            progress_dir, total, stop, progress_stream, "score", "region"), daemon=True)
        watcher.start()
    prefix = os.path.join(work_dir, SHARD_PREFIX)
    try:
        with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
            if manifest is not None:
                chunks = [manifest.rows[start:start + ROWS_PER_CHUNK]
                          for start in range(0, len(manifest.rows), ROWS_PER_CHUNK)]
                read = (pipeline | "Rows" >> beam.Create(chunks) | "Spread" >> beam.Reshuffle()
                        | "Encode" >> beam.ParDo(EncodeRowsFn(max_pixels, resize_masks,
                                                              os.path.abspath(data)))
                        .with_outputs(REJECTED_TAG, main="regions"))
            else:
                read = (pipeline | "Files" >> beam.Create(files)
                        | "Read" >> beam.io.ReadAllFromTFRecord(with_filename=True)
                        | "Regions" >> beam.ParDo(RecordRegionFn(inputs))
                        .with_outputs(REJECTED_TAG, main="regions"))
            handler = KeyedModelHandler(SavedModelHandler(model_dir))
            scored, failed = (read.regions | "Score" >> RunInference(handler)
                              .with_exception_handling())
            alone, refused = (failed.failed_inferences | "OneByOne" >> beam.FlatMap(_refused)
                              | "ScoreAlone" >> RunInference(KeyedModelHandler(
                                  SavedModelHandler(model_dir, max_batch_size=1)))
                              .with_exception_handling())
            pairs = ((scored, alone) | "Scored" >> beam.Flatten()
                     | "Progress" >> beam.ParDo(_Progress(progress_dir)))
            rows = pairs | "Format" >> beam.MapTuple(
                lambda region, outputs: (region, output_row(region, outputs, chosen)))
            _write(rows, output_format, prefix, names, metadata, outputs)
            counted = (rows | "Values" >> beam.Values()
                       | "Count" >> beam.CombineGlobally(CountFn()))
            rejections = ((read[REJECTED_TAG], refused.failed_inferences
                           | "Refusals" >> beam.FlatMap(
                               lambda batch_error: [_refusal((element, batch_error[1]))
                                                    for element in batch_error[0]]))
                          | "AllRejected" >> beam.Flatten()
                          | "Rejected" >> beam.combiners.ToList())
            _ = (counted | "Finish" >> beam.Map(
                _write_summary, rejections=beam.pvalue.AsSingleton(rejections),
                manifest_rejections=[Rejected(r.row, "", r.path, r.reason)
                                     for r in (manifest.rejected if manifest else [])],
                work_dir=work_dir, fields={"data": os.path.abspath(data), "model": name,
                                           "model_dir": model_dir, "version": chosen,
                                           "format": output_format, "columns": names}))
    except BaseException:  # a failure or an interrupt: no partial output stays behind
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    finally:
        stop.set()
        if watcher:
            watcher.join()
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
    with open(os.path.join(work_dir, SUMMARY_FILE), encoding="utf-8") as handle:
        summary = json.load(handle)
    if output_format == "geojson":
        summary["geojson_files"] = write_geojson(work_dir, _shard_lines(prefix + "-*.jsonl"))
    summary["seconds"] = round(time.perf_counter() - started, 2)
    with open(os.path.join(work_dir, SUMMARY_FILE), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(summary, indent=2) + "\n")
    os.remove(os.path.join(work_dir, WORK_OWNER))
    _replace(work_dir, output)
    return ScoreResult(output, summary)


def _write(rows, output_format: str, prefix: str, names: list[str], metadata: list[str],
           outputs: dict[str, str]) -> None:
    if output_format == "csv":
        _ = (rows | "Lines" >> beam.MapTuple(lambda _, row: csv_line(row, names))
             | "WriteCsv" >> beam.io.WriteToText(prefix, file_name_suffix=".csv",
                                                 header=",".join(names)))
    elif output_format == "parquet":
        schema = parquet_schema(metadata, outputs)
        _ = (rows | "Records" >> beam.MapTuple(lambda _, row: _parquet_row(row, schema))
             | "WriteParquet" >> beam.io.WriteToParquet(prefix, schema,
                                                        file_name_suffix=".parquet"))
    elif output_format == "tfrecord":
        _ = (rows | "Examples" >> beam.MapTuple(lambda _, row: tf_example(row, names))
             | "WriteRecords" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=".tfrecord.gz"))
    else:
        _ = (rows | "Features" >> beam.MapTuple(geojson_line)
             | "WriteFeatures" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))


def _write_summary(counted: dict, rejections: list[Rejected], manifest_rejections: list,
                   work_dir: str, fields: dict) -> None:
    every = [*manifest_rejections, *rejections]
    with open(os.path.join(work_dir, features.REJECTED_CSV), "w", encoding="utf-8",
              newline="") as handle:
        handle.write(rejected_csv(every))
    summary = {**fields, "scored": counted["scored"], "rejected": len(every),
               "label_counts": counted["label_counts"]}
    with open(os.path.join(work_dir, SUMMARY_FILE), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(summary, indent=2) + "\n")


def _record_metadata(data: str) -> list[str]:
    """The metadata columns ingest wrote, from its report beside the records (else none: each
    record's own metadata still goes to the formats that carry any field)."""
    folder = data if os.path.isdir(data) else os.path.dirname(data)
    try:
        with open(os.path.join(folder, features.INGEST_REPORT), encoding="utf-8") as handle:
            return list(json.load(handle).get("metadata_columns", []))
    except (OSError, ValueError):
        return []


def _claim(work_dir: str) -> None:
    """Name this process as the folder's owner: once it is gone, the next job removes it."""
    import socket

    with open(os.path.join(work_dir, WORK_OWNER), "w", encoding="ascii") as handle:
        handle.write(f"{socket.gethostname()} {os.getpid()}\n")


def _replace(work_dir: str, output: str) -> None:
    """Move the finished work folder into place; an existing output is replaced whole (moved
    aside first, so there is never a moment with half of each)."""
    if os.path.exists(output):
        old = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=os.path.dirname(output))
        _claim(old)
        os.rename(output, os.path.join(old, "replaced"))
        os.rename(work_dir, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(work_dir, output)
