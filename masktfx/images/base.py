"""What every image reader shares: the interface, the registry that picks a reader by the file's
signature, the size limits checked before decoding, and the error every reader raises.

A reader (one per format, in this package) answers three questions about a file's bytes: what its
header declares (`header`, nothing decoded), what ingest stores for it as a view (`stored`), and
which pixels are inside the region when it is a mask (`mask`). Formats a record may hold as a
view (PNG, JPEG, raster records) also decode back to the model's samples (`pixels`). Adding a
format is one new module with a reader and a `register` call (docs/data.md shows one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class RegionInputError(ValueError):
    """One image or mask cannot be used; the message says why (the caller adds which file)."""


@dataclass(frozen=True)
class ImageInfo:
    encoded: bytes  # bytes to store: as read, or re-encoded (PNG from TIFF, a raster record)
    width: int
    height: int
    channels: int
    bit_depth: int


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read before anything is decoded."""

    format: str  # the reader's name: png, jpeg, tiff, raster, dicom, nifti
    width: int
    height: int
    samples: int  # per pixel, as decoded (bands, for a raster)
    bytes_per_sample: int
    raster: bool = False  # read as a raster (every band kept), not as a gray/RGB(A) picture
    segmentation: bool = False  # a DICOM-SEG: a mask whose frames belong to segments

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * self.samples * self.bytes_per_sample


class ImageReader:
    """One format. Subclasses set `format` and `description` and implement `sniff`, `header`,
    `stored` and `mask`; those whose bytes a record stores as they are implement `pixels`."""

    format = ""
    description = ""  # for messages: "PNG", "a raster record", "a DICOM file"
    picture = False  # a picture format (PNG, JPEG, TIFF): named first in messages
    volume = False  # holds several planes, one of which the `slice` column picks

    def sniff(self, data: bytes) -> bool:
        """Whether `data` starts like this format (at most HEADER_BYTES are given)."""
        raise NotImplementedError

    def header(self, data: bytes, max_pixels: int, mask: bool = False) -> ImageHeader:
        """The header, checked for what the format can hold; `mask`: read as a mask."""
        raise NotImplementedError

    def stored(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str
               ) -> ImageInfo:
        """Decode fully (a corrupt or truncated file is an error) and return what a record
        stores for this view."""
        raise NotImplementedError

    def pixels(self, data: bytes, header: ImageHeader) -> np.ndarray:
        """A stored view's samples as [H, W, C], as the model's graph decodes them."""
        raise RegionInputError(f"a stored image is {stored_formats()}, not {self.description}")

    def mask(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str,
             mask_label: float | None) -> np.ndarray:
        """The region as bool [H, W]: nonzero pixels, or those equal to `mask_label`."""
        raise NotImplementedError

    def grid(self, data: bytes) -> tuple[Any, Any] | None:
        """The image's geotransform and CRS (rasterio's), or None: its grid is its pixels."""
        return None


_READERS: dict[str, ImageReader] = {}


def register(reader: ImageReader) -> ImageReader:
    """Add a reader; formats are sniffed in the order they were registered."""
    if reader.format in _READERS:
        raise ValueError(f"an image reader for {reader.format!r} is registered already")
    _READERS[reader.format] = reader
    return reader


def reader_named(name: str) -> ImageReader:
    return _READERS[name]


def sniff_format(data: bytes) -> str | None:
    """The registered format whose signature `data` starts with."""
    for reader in _READERS.values():
        if reader.sniff(data):
            return reader.format
    return None


def _listed(names: list[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


def stored_formats() -> str:
    """The formats a record stores views in, for messages."""
    return _listed([reader.description for reader in _READERS.values()
                    if type(reader).pixels is not ImageReader.pixels])


def reader_for(data: bytes) -> ImageReader:
    """The reader of `data`'s format; an empty file or an unknown signature is refused."""
    if not data:
        raise RegionInputError("empty file (0 bytes)")
    found = sniff_format(data)
    if found is None:
        pictures = [r.description for r in _READERS.values() if r.picture]
        others = [r.description for r in _READERS.values() if not r.picture]
        raise RegionInputError(f"not a {_listed(pictures)} image nor {_listed(others)} "
                               "(unrecognised file signature)")
    return _READERS[found]


# Enough for any format's signature; a file that does not start like an image is refused after
# reading only this much.
HEADER_BYTES = 64 * 1024


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image within `max_pixels` can be: its decoded bytes (at most
    `max_decoded_image_bytes`), stored uncompressed, plus room for headers and metadata."""
    return max_decoded_image_bytes(max_pixels) + 2**20


def max_decoded_image_bytes(max_pixels: int) -> int:
    """What one image may decode to: `max_pixels` pixels of 4 channels of 16 bits. A raster of
    many bands or float samples gets the same bytes, so fewer pixels."""
    return max_pixels * 4 * 2


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width < 2 or height < 2:
        raise RegionInputError(f"image is {width}x{height}; at least 2x2 pixels are needed")
    if width * height > max_pixels:
        raise RegionInputError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} (config max_pixels); refused before decoding")


def check_channels(channels: int) -> None:
    if channels not in (1, 3, 4):
        raise RegionInputError(
            f"image has {channels} channels; 1 (gray), 3 (RGB) or 4 (RGBA) are supported")


def region_of(array: np.ndarray, mask_label: float | None) -> np.ndarray:
    """A single-channel mask's region: its nonzero pixels, or those equal to `mask_label`."""
    if array.ndim != 2:
        raise RegionInputError(
            f"mask has {array.shape[-1]} channels; masks must be single-channel")
    return array == mask_label if mask_label is not None else array != 0


def read_header(data: bytes, max_pixels: int, mask: bool = False) -> ImageHeader:
    """What an image decodes to, from its header alone (nothing is decoded), refused when over
    `max_pixels` or, with its bands, over `max_decoded_image_bytes`. With `mask`, a TIFF of any
    sample type (float, 64-bit) is fine: only nonzero matters."""
    header = reader_for(data).header(data, max_pixels, mask)
    check_pixels(header.width, header.height, max_pixels)
    limit = max_decoded_image_bytes(max_pixels)
    if header.decoded_bytes > limit:
        raise RegionInputError(
            f"image is {header.width}x{header.height} with {header.samples} bands of "
            f"{header.bytes_per_sample} bytes = {header.decoded_bytes} bytes decoded, above the "
            f"limit of {limit} (config max_pixels x 8 bytes); refused before decoding")
    return header
