"""Masks: any single-channel image, or a plane of a DICOM or NIfTI label map (or a DICOM-SEG
segment), read by its format's reader as the region's pixels; stored as canonical single-channel
8-bit PNGs, 0 outside and 255 inside, of their view's size."""

from __future__ import annotations

import numpy as np

from masktfx.images.base import (
    RegionInputError,
    max_file_bytes,
    read_header,
    reader_named,
    sniff_format,
)
from masktfx.images.files import read_file
from masktfx.images.png import encode_png

# The region checks' messages, shared with the checks inside the served graph
# (modules/transform.py), so TF Serving and `masktfx serve` answer the same words.
MASK_SIZE_DIFFERS = ("mask is {width}x{height} but the image is {image_width}x{image_height} "
                     "(ingest resizes masks with nearest neighbour given --resize-masks)")
MASK_EMPTY = "mask is empty (no nonzero pixel): there is no region"


def decode_mask_array(data: bytes, max_pixels: int, plane: str = "",
                      mask_label: float | None = None) -> np.ndarray:
    """The region as bool [H, W]: nonzero pixels, or, with `mask_label`, the pixels of that
    value (a DICOM-SEG's segment number). `plane` picks a label map's slice."""
    header = read_header(data, max_pixels, mask=True)
    reader = reader_named(header.format)
    if plane.strip() and not reader.volume:
        raise RegionInputError(f"slice {plane!r} is given but the mask is a "
                               f"{header.format.upper()}, not a volume")
    return reader.mask(data, header, max_pixels, plane, mask_label)


def mask_plane(data: bytes, plane: str) -> str:
    """A volume's mask (a label map) is sliced as its images are; a 2-D mask is used whole."""
    found = sniff_format(bytes(data[:65536]))  # None: not an image; decode_mask_array says so
    return plane if found and reader_named(found).volume else ""


def resize_nearest(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to (width, height), sampling pixel centres."""
    width, height = size
    rows = ((np.arange(height) + 0.5) * region.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * region.shape[1] / width).astype(np.int64)
    return region[np.clip(rows, 0, region.shape[0] - 1)][:, np.clip(cols, 0, region.shape[1] - 1)]


def canonical_mask(region: np.ndarray, image_size: tuple[int, int], resize: bool
                   ) -> tuple[bytes, float]:
    """The stored mask of `region` on an image of (width, height), and its coverage."""
    height, width = region.shape
    if (width, height) != tuple(image_size):
        if not resize:
            raise RegionInputError(MASK_SIZE_DIFFERS.format(
                width=width, height=height, image_width=image_size[0],
                image_height=image_size[1]))
        region = resize_nearest(region, image_size)
    coverage = float(region.mean())
    if coverage == 0.0:
        raise RegionInputError(MASK_EMPTY)
    return encode_png(region.astype(np.uint8) * 255), coverage


def load_mask(path: str, image_size: tuple[int, int], resize: bool, max_pixels: int
              ) -> tuple[bytes, float]:
    """Read a mask, match it to the image (width, height), return canonical PNG and coverage."""
    region = decode_mask_array(read_file(path, max_file_bytes(max_pixels)), max_pixels)
    return canonical_mask(region, image_size, resize)
