"""TIFF and GeoTIFF, which TensorFlow cannot decode. Gray, RGB and RGBA pictures at 8 or 16 bits
are stored re-encoded losslessly as PNG; any other band count, or integer and float samples PNG
cannot hold, make a raster, read with rasterio (GDAL) and stored as a raster record with every
band. A GeoTIFF's geotransform and CRS place polygon masks on its grid (images/geometry.py)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from masktfx.images.base import (
    ImageHeader,
    ImageInfo,
    ImageReader,
    RegionInputError,
    check_channels,
    region_of,
)
from masktfx.images.png import encode_png
from masktfx.images.raster import MAX_RASTER_BANDS, RASTER_DTYPES, encode_raster

# TIFF photometric interpretations whose samples are what the image shows: MINISBLACK, RGB (others,
# such as MINISWHITE, PALETTE, SEPARATED (CMYK) or YCBCR, would be read as the wrong colours)
_TIFF_PHOTOMETRIC = (1, 2)
_TIFF_ALPHA = (1, 2)  # ExtraSamples: associated and unassociated alpha
# TIFF SampleFormat and bits -> the raster record's sample type
_RASTER_SAMPLES = {(1, 8): b"u08", (2, 8): b"i08", (1, 16): b"u16", (2, 16): b"i16",
                   (3, 32): b"f32"}
_TIFF_SAMPLE_KINDS = {1: "unsigned integer", 2: "signed integer", 3: "float"}


def decode_tiff(data: bytes) -> np.ndarray:
    import tifffile

    try:
        array = tifffile.imread(io.BytesIO(data), key=0)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise RegionInputError(f"cannot decode TIFF: {exc}") from None
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3):
        raise RegionInputError(f"TIFF has shape {array.shape}; expected a 2-D image")
    return array


@contextlib.contextmanager
def raster_dataset(data: bytes) -> Iterator[Any]:
    """A (Geo)TIFF in memory, opened with rasterio; a plain TIFF without a geotransform is fine
    (its pixels are what is read), so rasterio's warning about it is silenced."""
    import rasterio
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with MemoryFile(data) as memory, memory.open() as dataset:
            yield dataset


def _read_raster(data: bytes, header: ImageHeader) -> np.ndarray:
    """Every band of a (Geo)TIFF as [H, W, bands], read with rasterio (GDAL)."""
    import rasterio

    try:
        with raster_dataset(data) as dataset:
            shape = (dataset.width, dataset.height, dataset.count)
            array = dataset.read() if shape == (header.width, header.height,
                                                header.samples) else None
    except rasterio.errors.RasterioError as exc:
        # GDAL's own words are on the cause; its in-memory file name means nothing here
        detail = str(exc.__cause__ or exc).split(".tif, ", 1)[-1]
        raise RegionInputError(f"cannot decode raster (truncated or corrupt): {detail}") \
            from None
    if array is None:
        raise RegionInputError(f"raster is {shape[0]}x{shape[1]} with {shape[2]} bands but its "
                               f"TIFF header says {header.width}x{header.height} with "
                               f"{header.samples}")
    return np.moveaxis(array, 0, -1)


class TiffReader(ImageReader):
    format = "tiff"
    description = "TIFF"
    picture = True

    def sniff(self, data: bytes) -> bool:
        return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

    def header(self, data: bytes, max_pixels: int, mask: bool = False) -> ImageHeader:
        """The first page's header. Refused before decoding: a volume, a colour space that is
        not gray or RGB, samples that are neither, more bands than a raster may have. A mask is
        single-channel, of any sample type (only nonzero matters)."""
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages[0]
                width, height = int(page.imagewidth), int(page.imagelength)
                samples, bits = int(page.samplesperpixel), int(page.bitspersample)
                depth = int(getattr(page, "imagedepth", 1) or 1)
                photometric = int(page.photometric)
                photometric_name = getattr(page.photometric, "name", str(photometric))
                extras = [int(kind) for kind in (page.extrasamples or ())]
                sample_format = int(page.sampleformat)
        except Exception as exc:
            raise RegionInputError(f"cannot read TIFF header: {exc}") from None
        if depth > 1:
            raise RegionInputError(f"TIFF page is a volume of depth {depth}; a 2-D image is "
                                   "needed; refused before decoding")
        if photometric not in _TIFF_PHOTOMETRIC:
            raise RegionInputError(f"TIFF colour space is {photometric_name}; only gray (black "
                                   "is 0) and RGB are read as they are; convert it first")
        if mask:
            if samples > 4:
                raise RegionInputError(f"mask TIFF has {samples} samples per pixel; masks must "
                                       "be single-channel; refused before decoding")
            return ImageHeader("tiff", width, height, samples, -(-bits // 8))
        only_alpha = all(kind in _TIFF_ALPHA for kind in extras)
        if sample_format == 1 and bits in (8, 16) and only_alpha and samples <= 4:
            return ImageHeader("tiff", width, height, samples, bits // 8)
        # a raster: RGB + near-infrared, Sentinel-2's 13 bands, a float elevation model
        code = _RASTER_SAMPLES.get((sample_format, bits))
        if code is None:
            kind = _TIFF_SAMPLE_KINDS.get(sample_format, f"sample format {sample_format}")
            raise RegionInputError(f"TIFF samples are {bits}-bit {kind}; images are read as 8- "
                                   "or 16-bit integers or 32-bit floats; refused before decoding")
        if samples > MAX_RASTER_BANDS:
            raise RegionInputError(f"TIFF has {samples} bands, more than {MAX_RASTER_BANDS}; "
                                   "refused before decoding")
        return ImageHeader("tiff", width, height, samples,
                           np.dtype(RASTER_DTYPES[code]).itemsize, raster=True)

    def stored(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str
               ) -> ImageInfo:
        if header.raster:
            array = _read_raster(data, header)
            return ImageInfo(encode_raster(array), header.width, header.height, header.samples,
                             header.bytes_per_sample * 8)
        array = decode_tiff(data)
        if array.dtype not in (np.uint8, np.uint16):
            raise RegionInputError(
                f"TIFF pixels are {array.dtype}; images must be 8- or 16-bit unsigned integers")
        channels = 1 if array.ndim == 2 else array.shape[-1]
        check_channels(channels)
        return ImageInfo(encode_png(array), array.shape[1], array.shape[0], channels,
                         array.dtype.itemsize * 8)

    def mask(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str,
             mask_label: float | None) -> np.ndarray:
        return region_of(decode_tiff(data), mask_label)

    def grid(self, data: bytes) -> tuple[Any, Any]:
        import rasterio

        try:
            with raster_dataset(data) as dataset:
                return dataset.transform, dataset.crs
        except rasterio.errors.RasterioError as exc:
            raise RegionInputError(f"cannot read the image's grid: {exc}") from None
