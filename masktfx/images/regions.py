"""One region's images and masks checked together: the one check ingest, `masktfx predict` and
the server make, each view read by its format's reader, the views co-registered, each mask of
its view's size and not empty."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from masktfx.images.base import (
    ImageInfo,
    RegionInputError,
    max_file_bytes,
    read_header,
    reader_named,
)
from masktfx.images.files import read_file
from masktfx.images.geometry import rasterize_geometry
from masktfx.images.masks import canonical_mask, decode_mask_array, mask_plane

# The region checks' messages, shared with the checks inside the served graph
# (modules/transform.py), so TF Serving and `masktfx serve` answer the same words.
VIEWS_DISAGREE = ("view {view} is {width}x{height} but view 1 is {first_width}x{first_height}; "
                  "the views of a region must be co-registered")
# Where in a request: `part` is images or masks, `index` its position in the instance's list.
REGION_AT = "instance {row}, {part}[{index}]: "


def check_image_bytes(data: bytes, max_pixels: int, plane: str = "") -> ImageInfo:
    """Read and fully check one image; `plane` picks a volume's slice (DICOM frames, NIfTI)."""
    header = read_header(data, max_pixels)
    reader = reader_named(header.format)
    if plane.strip() and not reader.volume:
        raise RegionInputError(f"slice {plane!r} is given but the image is a "
                               f"{header.format.upper()}, not a volume")
    return reader.stored(data, header, max_pixels, plane)


def load_image(path: str, max_pixels: int) -> ImageInfo:
    """Read and fully check one image; returns the bytes to store."""
    return check_image_bytes(read_file(path, max_file_bytes(max_pixels)), max_pixels)


def decode_pixels(data: bytes, max_pixels: int) -> np.ndarray:
    """A stored image's samples as [H, W, C] in their own type: what ingest writes (PNG, JPEG or
    a raster record) decoded as the model's graph decodes it."""
    header = read_header(data, max_pixels)
    return reader_named(header.format).pixels(data, header)


@dataclass(frozen=True)
class CheckedRegion:
    """One region's inputs after `check_region`: what ingest stores and the model is fed."""

    images: list[ImageInfo]  # per view; `encoded` is as read, TIFF re-encoded as PNG
    masks: list[bytes]  # canonical single-channel PNGs, 0 outside and 255 inside
    coverages: list[float]  # per mask, the share of the image inside the region


class RegionCheckError(RegionInputError):
    """A region's input is unusable; `part` ("image" or "mask") and `index` say which one, so
    each caller can name it its own way (a file path, `instance 3, masks[0]`)."""

    def __init__(self, part: str, index: int, reason: str):
        super().__init__(reason)
        self.part = part
        self.index = index
        self.reason = reason


def check_region(images: Sequence[bytes], masks: Sequence[bytes], max_pixels: int,
                 resize_masks: bool = False, plane: str = "",
                 mask_label: float | None = None) -> CheckedRegion:
    """The one check of a region's views and masks, used by ingest, `masktfx predict` and the
    server: every image readable and under the pixel limit, the views co-registered, each mask
    single-channel, of its view's size (resized with `resize_masks`) and not empty."""
    infos: list[ImageInfo] = []
    for index, data in enumerate(images):
        try:
            infos.append(check_image_bytes(bytes(data), max_pixels, plane))
        except RegionInputError as exc:
            raise RegionCheckError("image", index, str(exc)) from None
        first, last = infos[0], infos[-1]
        if (last.width, last.height) != (first.width, first.height):
            raise RegionCheckError("image", index, VIEWS_DISAGREE.format(
                view=index + 1, width=last.width, height=last.height, first_width=first.width,
                first_height=first.height))
    encoded, coverages = [], []
    for index, data in enumerate(masks):
        target = infos[min(index, len(infos) - 1)]
        try:
            region = decode_mask_array(bytes(data), max_pixels, mask_plane(data, plane),
                                       mask_label)
            mask, coverage = canonical_mask(region, (target.width, target.height),
                                            resize_masks)
        except RegionInputError as exc:
            raise RegionCheckError("mask", index, str(exc)) from None
        encoded.append(mask)
        coverages.append(coverage)
    return CheckedRegion(infos, encoded, coverages)


class RegionFileError(RegionInputError):
    """A file of a region is unusable; `path` names it, `part` is "image" or "mask"."""

    def __init__(self, path: str, part: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.part = part
        self.reason = reason


def load_region(image_paths: Sequence[str], mask_paths: Sequence[str], max_pixels: int,
                resize_masks: bool = False, geometry: str = "", geometry_crs: str = "",
                plane: str = "", mask_label: float | None = None) -> CheckedRegion:
    """Read a region's files and `check_region` them; errors name the file at fault. With
    `geometry` (GeoJSON), the mask is that polygon on view 1's grid and `mask_paths` only
    names where it came from."""
    paths = {"image": list(image_paths), "mask": [] if geometry else list(mask_paths)}
    contents: dict[str, list[bytes]] = {part: [] for part in paths}
    for part, files in paths.items():
        for path in files:
            try:
                contents[part].append(read_file(path, max_file_bytes(max_pixels)))
            except RegionInputError as exc:
                raise RegionFileError(path, part, str(exc)) from None
    if geometry:
        source = mask_paths[0] if mask_paths else "geometry"
        paths["mask"] = [source]
        try:
            contents["mask"] = [rasterize_geometry(json.loads(geometry), contents["image"][0],
                                                   max_pixels, geometry_crs)]
        except RegionInputError as exc:
            raise RegionFileError(source, "mask", str(exc)) from None
    try:
        return check_region(contents["image"], contents["mask"], max_pixels, resize_masks,
                            plane, mask_label)
    except RegionCheckError as exc:
        raise RegionFileError(paths[exc.part][exc.index], exc.part, exc.reason) from None
