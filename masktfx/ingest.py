"""`masktfx ingest`: manifest -> gzipped TFRecord shards, as an Apache Beam pipeline.

The row work (read, check, encode, write) is fused into one Beam stage after a reshuffle of the
small manifest rows, so no image bytes cross a shuffle: memory stays flat in the number of rows and
any Beam runner spreads the work. Shards are written beside the target folder and renamed into place
only when the run succeeded, so ImportExampleGen never reads a half-written span.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import NamedTuple, TextIO

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from masktfx import features
from masktfx import images as imageio
from masktfx.beam_args import beam_flags, ingest_beam_args, runs_on_this_machine
from masktfx.config import PipelineConfig
from masktfx.fork_server import INGEST_PRELOAD, fork_server_for
from masktfx.manifest import ManifestRow, Rejection, read_manifest
from masktfx.progress import (
    STALL_NOTICE_S,
    ProgressCounter,
    current_umask,
    progress_bar,
    stall_notice,
)
from masktfx.records import write_tfrecord

COVERAGE_BINS = 20
UNLABELED_COUNT = "unlabeled"  # the stats' key of rows whose label is empty
# Rows per output shard: enough shards for every worker, few enough that each is worth a file.
MAX_ROWS_PER_SHARD = 256
MIN_ROWS_PER_SHARD = 16


class ShardResult(NamedTuple):
    """What a worker reports of one shard it wrote: its stats accumulator and its rejections."""

    stats: dict
    rejections: list[Rejection]


class IngestError(RuntimeError):
    """Ingest could not run at all; nothing was written."""


@dataclass
class IngestResult:
    output_dir: str
    report: dict
    published: bool

    @property
    def written(self) -> int:
        return int(self.report["examples_written"])

    @property
    def rejected(self) -> int:
        return int(self.report["rejected"])

    def describe(self) -> str:
        """What `masktfx ingest` and `masktfx run` print after ingesting."""
        text = (f"ingested {self.written} of {self.report['rows']} rows into {self.output_dir}"
                f" ({self.rejected} rejected)")
        if self.report.get("unlabeled"):
            text += (f"\n{self.report['unlabeled']} of them unlabeled (empty label): training "
                     "may use them (`unlabeled_training`), no metric counts them")
        if self.rejected:
            text += (f"\nrejected rows and reasons: "
                     f"{os.path.join(self.output_dir, features.REJECTED_CSV)}")
        return text


def encode_region(row: ManifestRow, max_pixels: int, resize_masks: bool
                  ) -> tuple[bytes, dict]:
    """Read and check every file of one row; returns the serialized example and its stats.

    Raises `RowFailure` naming the file at fault.
    """
    from masktfx.records import make_example

    try:
        region = imageio.load_region(row.images, row.masks, max_pixels, resize_masks,
                                     row.geometry, row.geometry_crs, row.plane, row.mask_label)
    except imageio.RegionFileError as exc:
        raise RowFailure(exc.path, f"{exc.part}: {exc.reason}") from None
    infos, masks, coverages = region.images, region.masks, region.coverages
    example = make_example([info.encoded for info in infos], masks,
                           features.UNLABELED if row.label is None else row.label,
                           row.example_id, row.group, row.metadata)
    serialized = example.SerializeToString()
    stats = {
        "label": UNLABELED_COUNT if row.label is None else row.label,
        "size": f"{infos[0].width}x{infos[0].height}",
        "channels": infos[0].channels,
        "bit_depth": max(info.bit_depth for info in infos),
        "coverage": sum(coverages) / len(coverages),
        "group": row.group,
        "bytes": len(serialized),
    }
    return serialized, stats


class RowFailure(Exception):
    def __init__(self, path: str, reason: str):
        super().__init__(reason)
        self.path = path
        self.reason = reason


def shard_chunks(rows: list[ManifestRow], rows_per_shard: int, seed: int = 0
                 ) -> list[tuple[int, int, list]]:
    """(index, count, rows) per shard, the rows in a seeded random order.

    Manifests come sorted (by site, subject, class); ImportExampleGen writes records in the order
    it reads them, so shards in manifest order would hand the Trainer's shuffle buffer one site
    at a time.
    """
    rows = random.Random(seed).sample(rows, len(rows))
    chunks = [rows[start:start + rows_per_shard]
              for start in range(0, len(rows), rows_per_shard)]
    return [(index, len(chunks), chunk) for index, chunk in enumerate(chunks)]


class WriteShardFn(beam.DoFn):
    """Encodes a chunk of rows and writes them as one gzipped TFRecord shard itself.

    The encoded images never cross the runner (with the DirectRunner, moving them between
    processes cost as much as encoding them); only one stats accumulator per shard and the
    rejections do. A retried bundle rewrites the same shard, so retries are harmless.
    """

    def __init__(self, work_dir: str, max_pixels: int, resize_masks: bool,
                 progress_dir: str | None):
        self._work_dir = work_dir
        self._max_pixels = max_pixels
        self._resize_masks = resize_masks
        self._progress = ProgressCounter(progress_dir)

    def setup(self):
        self._progress.start()

    def process(self, chunk: tuple[int, int, list[ManifestRow]]):
        index, count, rows = chunk
        path = os.path.join(self._work_dir, f"{features.SHARD_PREFIX}-{index:05d}-of-"
                                            f"{count:05d}{features.SHARD_SUFFIX}")
        combine = IngestStatsFn()
        stats = combine.create_accumulator()
        rejections = []
        with FileSystems.create(path, compression_type=CompressionTypes.GZIP) as handle:
            for row in rows:
                try:
                    serialized, row_stats = encode_region(row, self._max_pixels,
                                                          self._resize_masks)
                except RowFailure as failure:
                    rejections.append(Rejection(row.row, failure.path, failure.reason))
                else:
                    write_tfrecord(handle, serialized)
                    stats = combine.add_input(stats, row_stats)
                self._progress.add()
        # One output per shard, no tagged outputs: Beam's DaskRunner sends every tag of a
        # multi-output DoFn to every consumer.
        yield ShardResult(stats, rejections)

    def finish_bundle(self):
        self._progress.write()


class IngestStatsFn(beam.CombineFn):
    """Counts and histograms with constant memory, whatever the number of rows."""

    def create_accumulator(self):
        return {"examples": 0, "labels": {"0": 0, "1": 0, UNLABELED_COUNT: 0}, "sizes": {},
                "channels": {}, "bit_depths": {}, "coverage_sum": 0.0, "coverage_min": None,
                "coverage_max": None, "coverage_hist": [0] * COVERAGE_BINS, "groups": {},
                "bytes": 0}

    def add_input(self, acc, stats):
        acc["examples"] += 1
        acc["labels"][str(stats["label"])] += 1
        for key, name in (("sizes", "size"), ("channels", "channels"),
                          ("bit_depths", "bit_depth")):
            value = str(stats[name])
            acc[key][value] = acc[key].get(value, 0) + 1
        coverage = stats["coverage"]
        acc["coverage_sum"] += coverage
        acc["coverage_min"] = coverage if acc["coverage_min"] is None else min(
            acc["coverage_min"], coverage)
        acc["coverage_max"] = coverage if acc["coverage_max"] is None else max(
            acc["coverage_max"], coverage)
        acc["coverage_hist"][min(int(coverage * COVERAGE_BINS), COVERAGE_BINS - 1)] += 1
        acc["groups"][stats["group"]] = acc["groups"].get(stats["group"], 0) + 1
        acc["bytes"] += stats["bytes"]
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            merged["examples"] += acc["examples"]
            merged["bytes"] += acc["bytes"]
            merged["coverage_sum"] += acc["coverage_sum"]
            for key in ("labels", "sizes", "channels", "bit_depths", "groups"):
                for value, count in acc[key].items():
                    merged[key][value] = merged[key].get(value, 0) + count
            for key, pick in (("coverage_min", min), ("coverage_max", max)):
                values = [v for v in (merged[key], acc[key]) if v is not None]
                merged[key] = pick(values) if values else None
            merged["coverage_hist"] = [a + b for a, b in zip(merged["coverage_hist"],
                                                             acc["coverage_hist"])]
        return merged

    def extract_output(self, acc):
        return acc


def _write_text(path: str, text: str) -> None:
    """Valid UTF-8 always: a file name that is not UTF-8 shows its bytes as \\xNN."""
    printable = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    with FileSystems.create(path) as handle:
        handle.write(printable.encode("utf-8"))


def _rejections_csv(rejections: list[Rejection]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "path", "reason"])
    for item in sorted(rejections, key=lambda r: (r.row, r.path)):
        writer.writerow([item.row, item.path, item.reason])
    return buffer.getvalue()


def build_report(stats: dict, rejections: list[Rejection], manifest_path: str,
                 views: tuple[str, ...], shared_mask: bool, metadata_columns: tuple[str, ...],
                 span: int | None) -> dict:
    examples = stats["examples"]
    labelled = examples - stats["labels"][UNLABELED_COUNT]
    return {
        "manifest": os.path.abspath(manifest_path),
        "span": span,
        "rows": examples + len(rejections),
        "examples_written": examples,
        "rejected": len(rejections),
        "label_balance": {"0": stats["labels"]["0"], "1": stats["labels"]["1"],
                          "positive_fraction": (stats["labels"]["1"] / labelled) if labelled
                          else None},
        # rows whose label is empty: written with label -1 (features.UNLABELED)
        "unlabeled": stats["labels"][UNLABELED_COUNT],
        "views": [view or "image" for view in views],
        "num_views": len(views),
        "shared_mask": shared_mask,
        "metadata_columns": list(metadata_columns),
        "groups": len(stats["groups"]),
        "image_sizes": stats["sizes"],
        "channels": stats["channels"],
        "bit_depths": stats["bit_depths"],
        "mask_coverage": {
            "min": stats["coverage_min"],
            "mean": (stats["coverage_sum"] / examples) if examples else None,
            "max": stats["coverage_max"],
            "histogram": {"bin_edges": [i / COVERAGE_BINS for i in range(COVERAGE_BINS + 1)],
                          "counts": stats["coverage_hist"]},
        },
        "total_bytes": stats["bytes"],
    }


class MergeIngestStatsFn(IngestStatsFn):
    """Combines the per-shard accumulators of WriteShardFn."""

    def add_input(self, acc, partial):
        return self.merge_accumulators([acc, partial])


def _finalize(stats_list, rejected_list, manifest_rejections, out_dir, report_fields):
    rejections = list(manifest_rejections) + list(rejected_list)
    stats = stats_list[0] if stats_list else IngestStatsFn().create_accumulator()
    report = build_report(stats, rejections, **report_fields)
    _write_text(os.path.join(out_dir, features.REJECTED_CSV), _rejections_csv(rejections))
    _write_text(os.path.join(out_dir, features.INGEST_REPORT), json.dumps(report, indent=2))


def target_dir(output: str, span: int | None) -> str:
    return output if span is None else os.path.join(
        output, features.SPAN_DIR_TEMPLATE.format(span=span))


def _existing_shards(directory: str) -> list[str]:
    return FileSystems.match([os.path.join(directory, features.SHARD_GLOB)])[0].metadata_list


def run_ingest(manifest_path: str, output: str, span: int | None = None,
               beam_args: list[str] | None = None, resize_masks: bool = False,
               max_pixels: int | None = None, allow_outside_paths: bool = False,
               strict: bool = False, overwrite: bool = False,
               progress: bool | None = None, fork_server: bool = True,
               progress_stream: TextIO | None = None, id_field: str = "") -> IngestResult:
    """Ingest one manifest; shards are published only if at least one row is good (and, with
    `strict`, none is rejected). The report and rejected.csv are always written. The progress
    bar goes to `progress_stream` (default stderr), shown by default when that is a terminal."""
    if max_pixels is None:
        max_pixels = PipelineConfig().max_pixels
    manifest = read_manifest(manifest_path, allow_outside=allow_outside_paths, id_field=id_field,
                             empty_labels=True)
    rows_per_shard = min(MAX_ROWS_PER_SHARD,
                         max(MIN_ROWS_PER_SHARD, -(-len(manifest.rows) // 8)))
    final_dir = target_dir(output, span)
    local = "://" not in final_dir
    if FileSystems.exists(final_dir) and _existing_shards(final_dir) and not overwrite:
        raise IngestError(f"{final_dir} already holds TFRecord shards; pass --overwrite to "
                          "replace them, or ingest into another --span")
    if local:
        parent = os.path.dirname(os.path.abspath(final_dir)) or "."
        os.makedirs(parent, exist_ok=True)
        remove_abandoned_work_dirs(parent)
        work_dir = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=parent)
        # mkdtemp's 0700 would hide the span from others
        os.chmod(work_dir, 0o777 & ~current_umask())
        claim_work_dir(work_dir)
    else:
        work_dir = final_dir

    beam_args = ingest_beam_args(beam_args or [])
    runner = beam_flags(beam_args, {"runner": "DirectRunner"})["runner"]
    stalled = "" if runs_on_this_machine(beam_args) else stall_notice(runner, STALL_NOTICE_S)
    progress_stream = progress_stream or sys.stderr
    # Workers on this machine (the DirectRunner's, a local worker pool's) count into the bar's
    # folder; on other runners the bar also says when nothing has started
    shown = (progress if progress is not None else progress_stream.isatty()) and \
        bool(manifest.rows)
    report_fields = dict(manifest_path=manifest_path, views=manifest.views,
                         shared_mask=manifest.shared_mask,
                         metadata_columns=manifest.metadata_columns, span=span)
    try:
        with progress_bar(shown, len(manifest.rows), progress_stream,
                          stalled=stalled) as progress_dir, \
                fork_server_for(beam_args, INGEST_PRELOAD, fork_server) as run_args, \
                beam.Pipeline(options=PipelineOptions(run_args)) as pipeline:
            results = (
                pipeline
                | "Chunks" >> beam.Create(shard_chunks(manifest.rows, rows_per_shard,
                                                       seed=span or 0))
                | "Spread" >> beam.Reshuffle()
                | "EncodeAndWrite" >> beam.ParDo(WriteShardFn(work_dir, max_pixels,
                                                              resize_masks, progress_dir)))
            stats = (results | "ShardStats" >> beam.Map(lambda shard: shard.stats)
                     | "Stats" >> beam.CombineGlobally(MergeIngestStatsFn()))
            rejected = (results | "ShardRejections" >> beam.FlatMap(
                lambda shard: shard.rejections) | "Rejected" >> beam.combiners.ToList())
            _ = (pipeline | "Finalize" >> beam.Create([None])
                 | beam.Map(lambda _, s, r: _finalize(s, r, manifest.rejected, work_dir,
                                                      report_fields),
                            s=beam.pvalue.AsList(stats), r=beam.pvalue.AsSingleton(rejected)))
    except BaseException:  # a failure or an interrupt: nothing half-written stays behind
        if local:
            shutil.rmtree(work_dir, ignore_errors=True)
        raise

    with FileSystems.open(os.path.join(work_dir, features.INGEST_REPORT)) as handle:
        report = json.loads(handle.read().decode("utf-8"))
    publish = report["examples_written"] > 0 and not (strict and report["rejected"] > 0)
    if not local:
        return IngestResult(final_dir, report, publish)
    os.remove(os.path.join(work_dir, WORK_OWNER))  # finished: no longer a killed run's leftover
    if not publish:
        for meta in _existing_shards(work_dir):
            os.remove(meta.path)
    if publish or not os.path.exists(final_dir):
        _replace_dir(work_dir, final_dir)
        return IngestResult(final_dir, report, publish)
    return IngestResult(work_dir, report, publish)


WORK_PREFIX = ".ingest-"
WORK_OWNER = ".owner"  # "HOST PID" of the ingest writing the folder


def claim_work_dir(work_dir: str) -> None:
    """Name this process as the folder's owner: once it is gone, the next job removes it."""
    with open(os.path.join(work_dir, WORK_OWNER), "w", encoding="ascii") as handle:
        handle.write(f"{socket.gethostname()} {os.getpid()}\n")


def remove_abandoned_work_dirs(parent: str, prefix: str = WORK_PREFIX) -> list[str]:
    """Remove work folders (named `prefix`...) of jobs that were killed (their process is gone),
    so a killed job leaves nothing behind once the next one into the same folder starts. A
    folder of a live job, or of one on another host, is left alone."""
    removed = []
    host = socket.gethostname()
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if not name.startswith(prefix) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, WORK_OWNER), encoding="ascii") as handle:
                owner_host, pid = handle.read().split()
        except (OSError, ValueError):
            continue  # no owner yet (just created) or not ours: leave it
        if owner_host != host or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _replace_dir(source: str, target: str) -> None:
    """Move the new span in. A new folder is renamed into place in one step; an existing one
    (only with --overwrite) loses its old shards and report, and nothing else it holds."""
    if not os.path.exists(target):
        os.rename(source, target)
        return
    for meta in _existing_shards(target):
        os.remove(meta.path)
    for name in os.listdir(source):
        os.replace(os.path.join(source, name), os.path.join(target, name))
    os.rmdir(source)
