"""Reading, checking and encoding the images and masks of one region, at ingest and in serving.

One reader per format (this package's modules), chosen by the file's signature (`base.py`):
PNG and JPEG are stored as read, so records stay small and Transform decodes exactly what the
user gave; TIFF pictures are re-encoded losslessly as PNG; GeoTIFF rasters, DICOM and NIfTI
planes become raster records (`raster.py`), which the graph parses. Masks (`masks.py`, polygons
in `geometry.py`) are stored as canonical single-channel PNGs, 0 outside and 255 inside.
`regions.py` checks a region's views and masks together.
"""

from masktfx.images.base import (
    HEADER_BYTES,
    ImageHeader,
    ImageInfo,
    ImageReader,
    RegionInputError,
    max_decoded_image_bytes,
    max_file_bytes,
    read_header,
    reader_for,
    reader_named,
    register,
    sniff_format,
)
from masktfx.images.dicom import DicomReader
from masktfx.images.files import read_file
from masktfx.images.geometry import rasterize_geometry
from masktfx.images.jpeg import JpegReader
from masktfx.images.masks import (
    MASK_EMPTY,
    MASK_SIZE_DIFFERS,
    canonical_mask,
    decode_mask_array,
    load_mask,
    resize_nearest,
)
from masktfx.images.nifti import NiftiReader
from masktfx.images.png import PNG_SIGNATURE, PngReader, encode_png
from masktfx.images.raster import (
    MAX_RASTER_BANDS,
    NOT_A_RASTER,
    RASTER_BANDS_DIFFER,
    RASTER_DTYPES,
    RASTER_HEADER_BYTES,
    RASTER_LACKS_BAND,
    RASTER_MAGIC,
    RasterRecordReader,
    decode_raster,
    encode_raster,
)
from masktfx.images.regions import (
    REGION_AT,
    VIEWS_DISAGREE,
    CheckedRegion,
    RegionCheckError,
    RegionFileError,
    check_image_bytes,
    check_region,
    decode_pixels,
    load_image,
    load_region,
)
from masktfx.images.tiff import TiffReader
from masktfx.images.volumes import MAX_VOLUME_PLANES, parse_plane

# Sniffed in this order: the record and the medical formats, whose signatures sit past byte 0
# or inside gzip, before the pictures.
for _reader in (RasterRecordReader(), DicomReader(), NiftiReader(), PngReader(), JpegReader(),
                TiffReader()):
    register(_reader)

__all__ = [
    "HEADER_BYTES", "MASK_EMPTY", "MASK_SIZE_DIFFERS", "MAX_RASTER_BANDS", "MAX_VOLUME_PLANES",
    "NOT_A_RASTER", "PNG_SIGNATURE", "RASTER_BANDS_DIFFER", "RASTER_DTYPES",
    "RASTER_HEADER_BYTES", "RASTER_LACKS_BAND", "RASTER_MAGIC", "REGION_AT", "VIEWS_DISAGREE",
    "CheckedRegion", "ImageHeader", "ImageInfo", "ImageReader", "RegionCheckError",
    "RegionFileError", "RegionInputError", "canonical_mask", "check_image_bytes", "check_region",
    "decode_mask_array", "decode_pixels", "decode_raster", "encode_png", "encode_raster",
    "load_image", "load_mask", "load_region", "max_decoded_image_bytes", "max_file_bytes",
    "parse_plane", "rasterize_geometry", "read_file", "read_header", "reader_for",
    "reader_named", "register", "resize_nearest", "sniff_format",
]
