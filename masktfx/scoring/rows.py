"""The regions `masktfx score` reads (manifest rows as ingest encodes them, ingested records as
they are) and the rows it writes (CSV, Parquet, GeoJSON, tf.Example)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import apache_beam as beam

from masktfx import features
from masktfx.example_proto import Example
from masktfx.ingest import RowFailure, encode_region
from masktfx.manifest import ManifestRow
from masktfx.scoring.model import ModelInputs, ScoreError

REJECTED_TAG = "rejected"
GEOJSON_FILE = "scores.geojson"


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
    return pa.schema([(name, pa.int64() if name == "version"
                       else kinds.get(outputs.get(name, ""), pa.string()))
                      for name in columns(metadata, outputs)])


def parquet_row(row: dict, schema: Any) -> dict:
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


def shard_lines(pattern: str) -> Iterator[str]:
    import glob

    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield line
        os.remove(path)


def rejected_csv(rejections: Iterable[Rejected]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "id", "path", "reason"])
    for item in sorted(rejections, key=lambda r: (r.row, r.path, r.example_id)):
        writer.writerow([item.row or "", item.example_id, item.path, item.reason])
    return buffer.getvalue()
