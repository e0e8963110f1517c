"""The manifest: the CSV users write, one region per row.

Whole-file problems (unreadable file, missing column) raise `ManifestError` before anything is
written. Row problems that need no file access (bad label, duplicate id, a path outside the
manifest's folder, an empty view) become `Rejection`s; the rows that pass go on to ingest, which
opens their files.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field

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
    label: int
    images: tuple[str, ...]  # resolved paths, in view order
    masks: tuple[str, ...]  # one shared mask, or one per view
    group: str
    metadata: tuple[tuple[str, str], ...]


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


def _layout(path: str, header: list[str]) -> tuple[list[tuple[str, str]], list[str], bool]:
    """Which columns hold the views and the masks; raises on a layout that cannot be read."""
    if features.LABEL_KEY not in header:
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
    per_view = _view_columns(header, "mask")
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


def read_manifest(path: str, allow_outside: bool = False) -> Manifest:
    """Parse and check the manifest; rows that cannot be used are listed in `rejected`."""
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
    views, mask_columns, shared = _layout(path, header)
    used = {features.LABEL_KEY, features.ID_KEY, features.GROUP_KEY}
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
            manifest.rows.append(_parse_row(number, values, views, mask_columns, metadata_columns,
                                            base, allow_outside, first_row_of_id))
        except _RowRejected as exc:
            manifest.rejected.append(Rejection(number, exc.path, exc.reason))
    return manifest


class _RowRejected(Exception):
    def __init__(self, path: str, reason: str):
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _parse_row(number: int, values: dict[str, str], views: list[tuple[str, str]],
               mask_columns: list[str], metadata_columns: list[str], base: str,
               allow_outside: bool, first_row_of_id: dict[str, int]) -> ManifestRow:
    try:
        label = parse_label(values[features.LABEL_KEY])
    except ValueError as exc:
        raise _RowRejected("", str(exc)) from None

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
    example_id = values.get(features.ID_KEY, "").strip() or derive_id(images, masks)
    if example_id in first_row_of_id:
        raise _RowRejected("", f"duplicate id {example_id!r} (first used on row "
                               f"{first_row_of_id[example_id]})")
    if features.GROUP_KEY in values:
        group = values[features.GROUP_KEY].strip()
        if not group:
            raise _RowRejected("", "column 'group' is empty")
    else:
        group = example_id
    first_row_of_id[example_id] = number
    metadata = tuple((name, values[name].strip()) for name in metadata_columns)
    return ManifestRow(number, example_id, label, images, masks, group, metadata)
