"""The manifest: the CSV users write, one region per row.

Whole-file problems (unreadable file, missing column) raise `ManifestError` before anything is
written. Row problems that need no file access (bad label, duplicate id, a path outside the
manifest's folder, an empty view) become `Rejection`s; the rows that pass go on to ingest, which
opens their files.

Polygon masks: a `geometry` column (WKT, or GeoJSON text) instead of `mask`, or a `mask` that
names a GeoJSON file (`.geojson`, `.json`). A file of several polygons gives one region each: its
id from the property `id_field` names (else the feature's own id, else the row's id and the
polygon's number), its label from the row (or, when the row's label is empty, from the polygon's
`label` property), its other properties as metadata columns. Ingest rasterizes each polygon onto
the grid of the row's first view.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from masktfx import features

LABEL_VALUES = {
    "1": 1, "true": 1, "yes": 1, "present": 1,
    "0": 0, "false": 0, "no": 0, "absent": 0,
}
_FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ManifestError(ValueError):
    """The manifest as a whole cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ManifestRow:
    row: int  # 1 is the first line after the header
    example_id: str
    label: int | None  # None: not labelled yet (read_manifest's labels_optional only)
    images: tuple[str, ...]  # resolved paths, in view order
    masks: tuple[str, ...]  # one shared mask, or one per view
    group: str
    metadata: tuple[tuple[str, str], ...]
    geometry: str = ""  # a polygon mask as GeoJSON (masks then names where it came from)
    geometry_crs: str = ""  # the CRS a GeoJSON file declares ("": the image's, or pixels)
    plane: str = ""  # a volume's slice (`axis:index`, or a frame's index), for every view
    mask_label: float | None = None  # the label map value that is the region (None: nonzero)


GEOMETRY_COLUMN = "geometry"
SLICE_COLUMN = "slice"  # NIfTI volumes and multi-frame DICOM: the 2-D plane of the region
MASK_LABEL_COLUMN = "mask_label"  # label maps: the value inside the region
GEOJSON_SUFFIXES = (".geojson", ".json")
MAX_GEOJSON_BYTES = 256 * 2**20


REGION_GEOMETRIES = ("Polygon", "MultiPolygon")


def parse_geometry(text: str) -> dict:
    """A GeoJSON geometry from GeoJSON (a geometry or a Feature) or WKT text; a region is a
    Polygon or a MultiPolygon."""
    text = text.strip()
    if text.startswith("{"):
        try:
            geometry = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"geometry is not valid GeoJSON: {exc}") from None
        if isinstance(geometry, dict) and geometry.get("type") == "Feature":
            geometry = geometry.get("geometry")
    else:
        import shapely.geometry
        import shapely.wkt

        try:
            geometry = shapely.geometry.mapping(shapely.wkt.loads(text))
        except Exception as exc:  # noqa: BLE001 - shapely raises GEOSException and others
            raise ValueError(f"geometry is not valid WKT: {exc}") from None
    return check_geometry(geometry)


def check_geometry(geometry: Any) -> dict:
    import shapely.geometry

    kind = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
    if kind not in REGION_GEOMETRIES:
        raise ValueError(f"geometry is a {kind}; a region needs a Polygon or MultiPolygon")
    try:
        shape = shapely.geometry.shape(geometry)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"geometry cannot be read: {exc}") from None
    if shape.is_empty:
        raise ValueError("geometry is an empty polygon")
    return dict(shapely.geometry.mapping(shape))


@dataclass(frozen=True)
class Rejection:
    row: int
    path: str
    reason: str


@dataclass
class Manifest:
    path: str
    views: tuple[str, ...]  # view names ("" for the single `image` column)
    shared_mask: bool
    metadata_columns: tuple[str, ...]
    rows: list[ManifestRow] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def parse_label(text: str) -> int:
    value = LABEL_VALUES.get(text.strip().lower())
    if value is None:
        shown = "empty label" if not text.strip() else f"label {text!r} is not binary"
        raise ValueError(f"{shown}; use 0/1, true/false, yes/no or present/absent")
    return value


def derive_id(images: tuple[str, ...], masks: tuple[str, ...]) -> str:
    """Stable under reordering of the manifest, distinct for two regions of one image."""
    digest = hashlib.sha1("\0".join(images + masks).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def _view_columns(header: list[str], prefix: str) -> list[tuple[str, str]]:
    return [(name, name[len(prefix) + 1:]) for name in header
            if name.startswith(prefix + "_") and len(name) > len(prefix) + 1]


def _layout(path: str, header: list[str], labels_optional: bool = False
            ) -> tuple[list[tuple[str, str]], list[str], bool]:
    """Which columns hold the views and the masks; raises on a layout that cannot be read."""
    if features.LABEL_KEY not in header and not labels_optional:
        raise ManifestError(f"{path}: missing required column 'label'")
    multi = _view_columns(header, "image")
    if "image" in header and multi:
        raise ManifestError(f"{path}: use either one 'image' column or 'image_<view>' columns, "
                            f"not both (found 'image' and {multi[0][0]!r})")
    if "image" in header:
        views = [("image", "")]
    elif multi:
        views = multi
    else:
        raise ManifestError(f"{path}: missing required column 'image' (or 'image_<view>' columns)")
    per_view = [(name, view) for name, view in _view_columns(header, "mask")
                if name != MASK_LABEL_COLUMN]
    if GEOMETRY_COLUMN in header:
        if "mask" in header or per_view:
            raise ManifestError(f"{path}: use either a 'geometry' column or mask columns, not "
                                "both")
        return views, [], True
    if "mask" in header and per_view:
        raise ManifestError(f"{path}: use either one 'mask' column or 'mask_<view>' columns, "
                            f"not both")
    if "mask" in header:
        return views, ["mask"], True
    if not per_view:
        raise ManifestError(f"{path}: missing required column 'mask' (or 'mask_<view>' columns)")
    names = [view for _, view in views]
    mask_views = [view for _, view in per_view]
    if sorted(mask_views) != sorted(names) or views == [("image", "")]:
        raise ManifestError(
            f"{path}: mask columns {', '.join(c for c, _ in per_view)} do not match the views "
            f"{', '.join(c for c, _ in views)}; give one 'mask' column or one 'mask_<view>' "
            "per 'image_<view>'")
    return views, [f"mask_{view}" for view in names], False


def resolve_path(base: str, value: str, allow_outside: bool) -> str:
    """Paths are relative to the manifest's folder and may not leave it unless allowed."""
    candidate = os.path.normpath(os.path.join(base, value))
    if not allow_outside:
        real_base = os.path.realpath(base)
        real = os.path.realpath(candidate)
        if os.path.commonpath([real_base, real]) != real_base:
            raise ValueError("path is outside the manifest's folder "
                             "(pass --allow-outside-paths to permit it)")
    return candidate


def read_manifest(path: str, allow_outside: bool = False, id_field: str = "",
                  labels_optional: bool = False, empty_labels: bool = False) -> Manifest:
    """Parse and check the manifest; rows that cannot be used are listed in `rejected`.
    `id_field` names the property that holds each polygon's id in GeoJSON mask files. With
    `labels_optional` (new data scored before anyone labels it) the `label` column may be
    missing or empty, and such rows get label None; with `empty_labels` (ingest) the column is
    required but may be empty: such rows are unlabeled regions, label None."""
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            lines = list(csv.reader(handle))
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a directory; expected a CSV manifest") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.strerror or exc}") from None
    except csv.Error as exc:
        raise ManifestError(f"{path}: not a readable CSV file: {exc}") from None
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise ManifestError(f"{path}: manifest is empty; expected a header row")
    header = [cell.strip() for cell in lines[0]]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise ManifestError(f"{path}: duplicate column(s) {', '.join(duplicated)}")
    views, mask_columns, shared = _layout(path, header, labels_optional)
    used = {features.LABEL_KEY, features.ID_KEY, features.GROUP_KEY, GEOMETRY_COLUMN,
            SLICE_COLUMN, MASK_LABEL_COLUMN}
    used.update(column for column, _ in views)
    used.update(mask_columns)
    metadata_columns = [name for name in header if name not in used]
    for name in metadata_columns:
        if not _FEATURE_NAME.match(name) or name in features.RESERVED_KEYS:
            raise ManifestError(f"{path}: column {name!r} cannot be a metadata feature name; use "
                                "letters, digits and '_' (not starting with a digit)")

    manifest = Manifest(path, tuple(view for _, view in views), shared, tuple(metadata_columns))
    base = os.path.dirname(os.path.abspath(path))
    first_row_of_id: dict[str, int] = {}
    for number, cells in enumerate(lines[1:], start=1):
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) != len(header):
            manifest.rejected.append(Rejection(
                number, "", f"row has {len(cells)} fields but the header has {len(header)}"))
            continue
        values = dict(zip(header, cells))
        try:
            rows, bad_polygons = _parse_row(number, values, views, mask_columns,
                                            metadata_columns, base, allow_outside,
                                            first_row_of_id, id_field,
                                            labels_optional or empty_labels)
            manifest.rows.extend(rows)
            manifest.rejected.extend(bad_polygons)
        except _RowRejected as exc:
            manifest.rejected.append(Rejection(number, exc.path, exc.reason))
    return _with_property_columns(manifest)


def _with_property_columns(manifest: Manifest) -> Manifest:
    """Every row gets every metadata column: the polygons' properties join the manifest's
    columns, empty where a polygon lacks one."""
    columns = list(manifest.metadata_columns)
    for row in manifest.rows:
        columns.extend(name for name, _ in row.metadata if name not in columns)
    if columns == list(manifest.metadata_columns):
        return manifest
    manifest.metadata_columns = tuple(columns)
    manifest.rows = [dataclasses.replace(row, metadata=tuple(
        (name, dict(row.metadata).get(name, "")) for name in columns)) for row in manifest.rows]
    return manifest


class _RowRejected(Exception):
    def __init__(self, path: str, reason: str):
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _parse_row(number: int, values: dict[str, str], views: list[tuple[str, str]],
               mask_columns: list[str], metadata_columns: list[str], base: str,
               allow_outside: bool, first_row_of_id: dict[str, int], id_field: str = "",
               labels_optional: bool = False) -> tuple[list[ManifestRow], list[Rejection]]:
    """The row's region, or one region per polygon of the GeoJSON file its mask names (and a
    rejection for each polygon that cannot be a region: the others go on)."""
    label_text = values.get(features.LABEL_KEY, "")

    def resolve(column: str) -> str:
        value = values[column].strip()
        if not value:
            raise _RowRejected("", f"column {column!r} is empty: every row needs every view")
        try:
            return resolve_path(base, value, allow_outside)
        except ValueError as exc:
            raise _RowRejected(value, str(exc)) from None

    images = tuple(resolve(column) for column, _ in views)
    masks = tuple(resolve(column) for column in mask_columns)
    metadata = tuple((name, values[name].strip()) for name in metadata_columns)
    polygons: list[tuple[str, dict, str, tuple[tuple[str, str], ...]]] = []  # id, geom, label
    geometry_crs = ""
    bad_polygons: list[Rejection] = []
    if GEOMETRY_COLUMN in values:
        try:
            geometry = parse_geometry(values[GEOMETRY_COLUMN])
        except ValueError as exc:
            raise _RowRejected("", f"column 'geometry': {exc}") from None
        polygons.append(("", geometry, label_text, ()))
    elif len(masks) == 1 and masks[0].lower().endswith(GEOJSON_SUFFIXES):
        geometry_crs, found, refused = _read_polygons(masks[0], id_field, label_text)
        polygons.extend(found)
        bad_polygons.extend(Rejection(number, masks[0], reason) for reason in refused)
        if not polygons:
            raise _RowRejected(masks[0], "; ".join(refused) or "mask: no polygon")
    clashing = sorted({name for *_, properties in polygons for name, _ in properties}
                      & set(metadata_columns))
    if clashing:
        raise _RowRejected(masks[0], f"mask: polygon property {clashing[0]!r} is also a column "
                                     "of the manifest; rename one of them")

    plane = values.get(SLICE_COLUMN, "").strip()
    mask_label = None
    if values.get(MASK_LABEL_COLUMN, "").strip():
        try:
            mask_label = float(values[MASK_LABEL_COLUMN])
        except ValueError:
            raise _RowRejected("", f"column 'mask_label': {values[MASK_LABEL_COLUMN]!r} is not "
                                   "a number") from None
    row_id = values.get(features.ID_KEY, "").strip() or derive_id(
        images + ((plane,) if plane else ()),
        masks + ((str(mask_label),) if mask_label is not None else ()))
    rows = []
    for index, (polygon_id, geometry, polygon_label, properties) in enumerate(
            polygons or [("", {}, label_text, ())]):
        try:
            label = (None if labels_optional and not polygon_label.strip()
                     else parse_label(polygon_label))
        except ValueError as exc:
            raise _RowRejected(masks[0] if masks else "", str(exc)) from None
        example_id = row_id
        if len(polygons) > 1 or (polygons and polygon_id):
            example_id = polygon_id or f"{row_id}-{index + 1}"
        if example_id in first_row_of_id:
            raise _RowRejected("", f"duplicate id {example_id!r} (first used on row "
                                   f"{first_row_of_id[example_id]})")
        if features.GROUP_KEY in values:
            group = values[features.GROUP_KEY].strip()
            if not group:
                raise _RowRejected("", "column 'group' is empty")
        else:
            group = example_id
        rows.append(ManifestRow(number, example_id, label, images, masks, group,
                                metadata + properties,
                                json.dumps(geometry, sort_keys=True) if geometry else "",
                                geometry_crs, plane, mask_label))
    for row in rows:  # only once the whole row is good
        first_row_of_id[row.example_id] = number
    return rows, bad_polygons


def _read_polygons(path: str, id_field: str, row_label: str
                   ) -> tuple[str, list[tuple[str, dict, str, tuple[tuple[str, str], ...]]],
                              list[str]]:
    """The CRS a GeoJSON file declares, (id, geometry, label, properties) per polygon, and why
    each polygon that cannot be a region is refused."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _RowRejected(path, "mask: not a regular file; refused without opening it")
        if info.st_size > MAX_GEOJSON_BYTES:
            raise _RowRejected(path, f"mask: GeoJSON of {info.st_size} bytes, more than "
                                     f"{MAX_GEOJSON_BYTES}")
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise _RowRejected(path, "mask: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _RowRejected(path, f"mask: not a readable GeoJSON file: {exc}") from None
    if not isinstance(document, dict):
        raise _RowRejected(path, "mask: not a GeoJSON object")
    crs = ""
    declared = document.get("crs")
    if isinstance(declared, dict):  # the 2008 GeoJSON spec's named CRS, as GDAL writes it
        crs = str((declared.get("properties") or {}).get("name", ""))
    kind = document.get("type")
    if kind == "FeatureCollection":
        items = document.get("features") or []
    elif kind == "Feature":
        items = [document]
    else:
        items = [{"type": "Feature", "geometry": document, "properties": {}}]
    if not items:
        raise _RowRejected(path, "mask: the GeoJSON file holds no polygon")
    polygons, refused = [], []
    for index, item in enumerate(items, start=1):
        where = f"mask: polygon {index}"
        properties = item.get("properties") or {} if isinstance(item, dict) else {}
        try:
            geometry = check_geometry(item.get("geometry") if isinstance(item, dict) else None)
        except ValueError as exc:
            refused.append(f"{where}: {exc}")
            continue
        if id_field:
            if properties.get(id_field) in (None, ""):
                refused.append(f"{where} has no property {id_field!r} (id_field)")
                continue
            polygon_id = str(properties[id_field])
        else:
            polygon_id = str(item.get("id", "")) if item.get("id") is not None else ""
        label = row_label
        if not label.strip() and features.LABEL_KEY in properties:
            label = str(properties[features.LABEL_KEY])
        kept = []
        for name, value in properties.items():
            if name == id_field or name in features.RESERVED_KEYS:
                continue
            if not _FEATURE_NAME.match(name):
                raise _RowRejected(path, f"{where}: property {name!r} cannot be a metadata "
                                         "feature name; use letters, digits and '_'")
            kept.append((name, "" if value is None else str(value)))
        polygons.append((polygon_id, geometry, label, tuple(sorted(kept))))
    return crs, polygons, refused
