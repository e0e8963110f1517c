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

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from masktfx import features
from masktfx.beam_args import ingest_beam_args
from masktfx.config import PipelineConfig
from masktfx.config_values import SCORE_FORMATS as FORMATS
from masktfx.ingest import WORK_OWNER, claim_work_dir, remove_abandoned_work_dirs
from masktfx.manifest import read_manifest
from masktfx.progress import ProgressCounter, progress_bar
from masktfx.scoring.model import (
    ModelInputs,
    ModelRefusal,
    SavedModelHandler,
    ScoreError,
    resolve_model,
)
from masktfx.scoring.rows import (
    REJECTED_TAG,
    EncodeRowsFn,
    RecordRegionFn,
    Region,
    Rejected,
    columns,
    csv_line,
    geojson_line,
    output_row,
    parquet_row,
    parquet_schema,
    record_files,
    rejected_csv,
    shard_lines,
    tf_example,
    write_geojson,
)

SUMMARY_FILE = "score_summary.json"
SHARD_PREFIX = "scores"
WORK_PREFIX = ".score-"
ROWS_PER_CHUNK = 64


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


class _Progress(beam.DoFn):
    """Counts regions scored or rejected for the terminal's progress bar (ingest's
    ProgressCounter)."""

    def __init__(self, progress_dir: str | None):
        self._progress = ProgressCounter(progress_dir, every=32)

    def setup(self):
        self._progress.start()

    def process(self, element):
        self._progress.add()
        yield element

    def finish_bundle(self):
        self._progress.write()


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
          config_file: str = "", **options: Any) -> ScoreResult:
    """Score every region of `data` (a manifest CSV, or ingested TFRecords) with a pushed
    version of `model` (`resolve_model`) and write them to the `output` folder in
    `output_format`; `options` as `score_version` takes them."""
    started = time.perf_counter()
    name, model_dir, chosen = resolve_model(model, version, label, model_name, config_file)
    return score_version(data, model_dir, name, chosen, output, output_format,
                         started=started, **options)


def score_version(data: str, model_dir: str, name: str, chosen: int, output: str,
                  output_format: str = "csv", beam_args: Sequence[str] | None = None,
                  max_pixels: int | None = None, resize_masks: bool = False,
                  allow_outside_paths: bool = False, id_field: str = "",
                  progress: bool | None = None, progress_stream: TextIO | None = None,
                  started: float | None = None) -> ScoreResult:
    """Score every region of `data` with the SavedModel in `model_dir`, version `chosen` of
    model `name`, into the `output` folder (see the module's docstring)."""
    started = time.perf_counter() if started is None else started
    if output_format not in FORMATS:
        raise ScoreError(f"format {output_format!r}: use one of {', '.join(FORMATS)}")
    if "://" in output:
        raise ScoreError(f"{output}: give a local or mounted folder (the output is moved into "
                         "place when the job is done)")
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
    claim_work_dir(work_dir)
    # In one process unless told otherwise: the model's call already uses every core, and each
    # worker process of the multi-processing mode would load TensorFlow and the model again.
    beam_args = ingest_beam_args(beam_args or [], running_mode="in_memory")
    direct = any(arg in ("--runner=DirectRunner", "--runner=direct") for arg in beam_args)
    progress_stream = progress_stream or sys.stderr
    shown = (progress if progress is not None else progress_stream.isatty()) and direct
    prefix = os.path.join(work_dir, SHARD_PREFIX)
    try:
        with progress_bar(shown, total, progress_stream, "score", "region") as progress_dir, \
                beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
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
                          | "RejectedProgress" >> beam.ParDo(_Progress(progress_dir))
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
    with open(os.path.join(work_dir, SUMMARY_FILE), encoding="utf-8") as handle:
        summary = json.load(handle)
    if output_format == "geojson":
        summary["geojson_files"] = write_geojson(work_dir, shard_lines(prefix + "-*.jsonl"))
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
        _ = (rows | "Records" >> beam.MapTuple(lambda _, row: parquet_row(row, schema))
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


def _replace(work_dir: str, output: str) -> None:
    """Move the finished work folder into place; an existing output is replaced whole (moved
    aside first, so there is never a moment with half of each)."""
    if os.path.exists(output):
        old = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=os.path.dirname(output))
        claim_work_dir(old)
        os.rename(output, os.path.join(old, "replaced"))
        os.rename(work_dir, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(work_dir, output)
