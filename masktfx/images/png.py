"""PNG: stored as read (TensorFlow decodes it in the graph); also the canonical form of masks and
of TIFF pictures, written by `encode_png`. Pillow decodes it here, fully, so a truncated file is
an error at ingest rather than in training."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from masktfx.images.base import (
    ImageHeader,
    ImageInfo,
    ImageReader,
    RegionInputError,
    check_channels,
    region_of,
)

# We check sizes ourselves, against the configurable limit, before any decoding.
Image.MAX_IMAGE_PIXELS = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types -> samples per pixel as decoded (a palette decodes to its colours)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
PIL_CHANNELS = {"1": 1, "L": 1, "P": 3, "I": 1, "I;16": 1, "I;16B": 1, "I;16L": 1,
                "RGB": 3, "RGBA": 4, "CMYK": 4, "LA": 2, "PA": 2, "F": 1}
_SINGLE_CHANNEL_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")


def open_pil(data: bytes, description: str) -> Image.Image:
    """Open, then decode fully to catch truncated files (the size is checked already)."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise RegionInputError(f"cannot decode {description}: {exc}") from None
    try:
        image.load()
    except Exception as exc:
        raise RegionInputError(f"cannot decode {description} (truncated or corrupt): {exc}") \
            from None
    return image


def palette_gray(image: Image.Image) -> np.ndarray:
    """The gray levels a palette image decodes to in TensorFlow's decode_png with channels=1
    (the palette's colours, then ITU-R 601 luma in 1/32768, truncated), so a palette entry that
    is black is outside the region whatever its index."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)
    weights = np.array([9798, 19235, 3735], dtype=np.uint32)
    return ((rgb @ weights) >> 15).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of an 8- or 16-bit array with 1, 2, 3 or 4 channels (deterministic bytes)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype not in (np.uint8, np.uint16):
        raise RegionInputError(f"cannot store {array.dtype} pixels as PNG")
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, channels = array.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    depth = 8 if array.dtype == np.uint8 else 16
    pixels = np.ascontiguousarray(array.astype(">u2") if depth == 16 else array)
    rows = pixels.view(np.uint8).reshape(height, -1)
    scanlines = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(scanlines, 6)) + chunk(b"IEND", b""))


class PngReader(ImageReader):
    format = "png"
    description = "PNG"
    picture = True

    def sniff(self, data: bytes) -> bool:
        return data.startswith(PNG_SIGNATURE)

    def header(self, data: bytes, max_pixels: int, mask: bool = False) -> ImageHeader:
        if len(data) < 26 or data[12:16] != b"IHDR":
            raise RegionInputError("cannot decode PNG: no IHDR chunk where the format puts it")
        width, height, bits, colour_type = struct.unpack(">IIBB", data[16:26])
        if colour_type not in _PNG_SAMPLES or bits not in (1, 2, 4, 8, 16):
            raise RegionInputError(f"cannot decode PNG: colour type {colour_type} with {bits} "
                                   "bits per sample is not in the PNG standard")
        return ImageHeader("png", width, height, _PNG_SAMPLES[colour_type],
                           2 if bits == 16 else 1)

    def stored(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str
               ) -> ImageInfo:
        image = open_pil(data, self.description)
        channels = PIL_CHANNELS.get(image.mode)
        if channels is None:
            raise RegionInputError(f"unsupported PNG pixel mode {image.mode!r}")
        check_channels(channels)
        depth = 16 if image.mode.startswith("I") else 8
        return ImageInfo(data, image.width, image.height, channels, depth)

    def pixels(self, data: bytes, header: ImageHeader) -> np.ndarray:
        # palette PNGs by their colours, alpha kept as a channel, as the graph decodes them
        image = open_pil(data, self.description)
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        array = np.asarray(image)
        return array.reshape(array.shape[0], array.shape[1], -1)

    def mask(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str,
             mask_label: float | None) -> np.ndarray:
        # a palette mask by its colours, as TensorFlow decodes it, not by its indices
        image = open_pil(data, self.description)
        if image.mode == "P":
            return region_of(palette_gray(image), mask_label)
        if image.mode not in _SINGLE_CHANNEL_MODES:
            channels = PIL_CHANNELS.get(image.mode, len(image.getbands()))
            raise RegionInputError(
                f"mask has {channels} channels ({image.mode}); masks must be single-channel")
        return region_of(np.asarray(image), mask_label)
