"""Reading, checking and encoding the images and masks of one region, at ingest and in serving.

Images keep the bytes they were read with (PNG, JPEG), so records stay small and Transform decodes
exactly what the user gave; TIFF, which TensorFlow cannot decode, is re-encoded losslessly as PNG
when it is gray, RGB or RGBA at 8 or 16 bits. Masks are always stored as canonical single-channel
8-bit PNGs, 0 outside and 255 inside.

Channels: 1 (grayscale), 3 (RGB) and 4 (RGBA; the alpha channel is dropped when decoded) are
accepted, at 8 or 16 bits; Transform converts them to `config.channels`.

Rasters: a TIFF (GeoTIFF) with any other number of bands, or with 8/16-bit integer or float32
samples that PNG cannot hold, is read with rasterio and stored as a raster record (RASTER_MAGIC,
then a dtype code, then a TensorFlow TensorProto of [H, W, bands]): every band, in order, the
samples exactly as read. Transform and both serving signatures parse it in the graph
(`tf.io.parse_tensor`); `config.bands` selects and orders the bands.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# We check sizes ourselves, against the configurable limit, before any decoding.
Image.MAX_IMAGE_PIXELS = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# The region checks' messages, shared with the checks inside the served graph
# (modules/transform.py), so TF Serving and `masktfx serve` answer the same words.
VIEWS_DISAGREE = ("view {view} is {width}x{height} but view 1 is {first_width}x{first_height}; "
                  "the views of a region must be co-registered")
MASK_SIZE_DIFFERS = ("mask is {width}x{height} but the image is {image_width}x{image_height} "
                     "(ingest resizes masks with nearest neighbour given --resize-masks)")
MASK_EMPTY = "mask is empty (no nonzero pixel): there is no region"
# The raster checks, made in the graph only (they depend on the model's `channels` and `bands`).
NOT_A_RASTER = "is not a raster record; the model takes rasters of {channels} band(s)"
RASTER_LACKS_BAND = "raster has {bands} band(s); the model takes band {band} (config bands)"
RASTER_BANDS_DIFFER = "raster has {bands} band(s); the model takes {channels} (config channels)"
# Where in a request: `part` is images or masks, `index` its position in the instance's list.
REGION_AT = "instance {row}, {part}[{index}]: "


class RegionInputError(ValueError):
    """One image or mask cannot be used; the message says why (the caller adds which file)."""


@dataclass(frozen=True)
class ImageInfo:
    encoded: bytes  # bytes to store: as read, or PNG re-encoded from TIFF
    width: int
    height: int
    channels: int
    bit_depth: int


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read before anything is decoded."""

    format: str  # png, jpeg, tiff or raster (a raster record)
    width: int
    height: int
    samples: int  # per pixel, as decoded (bands, for a raster)
    bytes_per_sample: int
    raster: bool = False  # read as a raster (every band kept), not as a gray/RGB(A) picture
    segmentation: bool = False  # a DICOM-SEG: a mask whose frames belong to segments

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * self.samples * self.bytes_per_sample


# A raster record: this magic, a 3-byte dtype code, a serialized TensorProto of [H, W, bands].
RASTER_MAGIC = b"MTFXR"
RASTER_DTYPES = {b"u08": np.uint8, b"i08": np.int8, b"u16": np.uint16, b"i16": np.int16,
                 b"f32": np.float32}
RASTER_HEADER_BYTES = len(RASTER_MAGIC) + 3
MAX_RASTER_BANDS = 64  # config.MAX_CHANNELS, the most channels a model may take


def sniff_format(data: bytes) -> str | None:
    if data.startswith(RASTER_MAGIC):
        return "raster"
    if data[128:132] == b"DICM":
        return "dicom"
    if _is_nifti(data):
        return "nifti"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


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


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes. Anything but a regular file (a FIFO, a device, a socket) is refused
    without being opened; a file over `max_bytes`, or one whose first bytes are not an image's,
    is refused before the rest is read."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise RegionInputError("is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise RegionInputError("not a regular file (a FIFO, device or socket); refused "
                                   "without opening it")
        if max_bytes is not None and info.st_size > max_bytes:
            raise RegionInputError(f"file is {info.st_size} bytes, more than an image within "
                                   f"max_pixels can take ({max_bytes}); refused before reading")
        # O_NONBLOCK: should the path have become a FIFO since the check, opening cannot hang
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise RegionInputError("not a regular file; refused")
            head = handle.read(HEADER_BYTES)
            _check_format(head)
            return head + handle.read()
    except FileNotFoundError:
        raise RegionInputError("file not found") from None
    except PermissionError:
        raise RegionInputError("permission denied") from None
    except OSError as exc:
        raise RegionInputError(f"cannot read file: {exc.strerror or exc}") from None


def _check_format(data: bytes) -> str:
    if not data:
        raise RegionInputError("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise RegionInputError("not a PNG, JPEG or TIFF image nor a raster record "
                               "(unrecognised file signature)")
    return fmt


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width < 2 or height < 2:
        raise RegionInputError(f"image is {width}x{height}; at least 2x2 pixels are needed")
    if width * height > max_pixels:
        raise RegionInputError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} (config max_pixels); refused before decoding")


def _decode_tiff(data: bytes) -> np.ndarray:
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


# TIFF photometric interpretations whose samples are what the image shows: MINISBLACK, RGB (others,
# such as MINISWHITE, PALETTE, SEPARATED (CMYK) or YCBCR, would be read as the wrong colours)
_TIFF_PHOTOMETRIC = (1, 2)
_TIFF_ALPHA = (1, 2)  # ExtraSamples: associated and unassociated alpha


# TIFF SampleFormat and bits -> the dtype a raster's samples are stored as
_RASTER_SAMPLES = {(1, 8): np.uint8, (2, 8): np.int8, (1, 16): np.uint16, (2, 16): np.int16,
                   (3, 32): np.float32}
_TIFF_SAMPLE_KINDS = {1: "unsigned integer", 2: "signed integer", 3: "float"}


def _tiff_header(data: bytes, mask: bool = False) -> ImageHeader:
    """The first page's header. Gray, RGB and RGBA (alpha as the only extra band) at 8 or 16
    bits are pictures; any other band count, or integer and float samples PNG cannot hold, make
    a raster, whose every band is kept. A mask is single-channel and read as a picture.
    Refused from the header, before decoding: a volume, a colour space that is not gray or RGB,
    samples that are neither, more bands than a raster may have."""
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
        raise RegionInputError(f"TIFF colour space is {photometric_name}; only gray (black is 0) "
                               "and RGB are read as they are; convert it first")
    if mask:
        if samples > 4:
            raise RegionInputError(f"mask TIFF has {samples} samples per pixel; masks must be "
                                   "single-channel; refused before decoding")
        return ImageHeader("tiff", width, height, samples, -(-bits // 8))
    only_alpha = all(kind in _TIFF_ALPHA for kind in extras)
    if sample_format == 1 and bits in (8, 16) and only_alpha and samples <= 4:
        return ImageHeader("tiff", width, height, samples, bits // 8)
    # a raster: RGB + near-infrared, Sentinel-2's 13 bands, a float elevation model
    dtype = _RASTER_SAMPLES.get((sample_format, bits))
    if dtype is None:
        kind = _TIFF_SAMPLE_KINDS.get(sample_format, f"sample format {sample_format}")
        raise RegionInputError(f"TIFF samples are {bits}-bit {kind}; images are read as 8- or "
                               "16-bit integers or 32-bit floats; refused before decoding")
    if samples > MAX_RASTER_BANDS:
        raise RegionInputError(f"TIFF has {samples} bands, more than {MAX_RASTER_BANDS}; "
                               "refused before decoding")
    return ImageHeader("tiff", width, height, samples, np.dtype(dtype).itemsize, raster=True)


def encode_raster(array: np.ndarray) -> bytes:
    """A raster record of [H, W, bands] (or [H, W]) samples, kept exactly."""
    import tensorflow as tf

    codes = {np.dtype(dtype): code for code, dtype in RASTER_DTYPES.items()}
    code = codes.get(array.dtype)
    if code is None:
        raise RegionInputError(f"cannot store {array.dtype} samples in a raster record")
    if array.ndim == 2:
        array = array[:, :, None]
    proto = tf.make_tensor_proto(np.ascontiguousarray(array))
    return RASTER_MAGIC + code + proto.SerializeToString()


def _raster_proto(data: bytes) -> tuple[Any, np.dtype]:
    from tensorflow.core.framework import tensor_pb2

    code = data[len(RASTER_MAGIC):RASTER_HEADER_BYTES]
    if code not in RASTER_DTYPES:
        raise RegionInputError(f"raster record has an unknown sample type {code!r}")
    try:
        proto = tensor_pb2.TensorProto.FromString(data[RASTER_HEADER_BYTES:])
    except Exception as exc:  # protobuf's DecodeError
        raise RegionInputError(f"cannot read raster record: {exc}") from None
    return proto, np.dtype(RASTER_DTYPES[code])


def _raster_record_header(data: bytes) -> ImageHeader:
    proto, dtype = _raster_proto(data)
    dims = [int(dim.size) for dim in proto.tensor_shape.dim]
    if len(dims) != 3 or min(dims) < 1:
        raise RegionInputError(f"raster record has shape {dims}; [height, width, bands] is "
                               "needed")
    height, width, bands = dims
    if bands > MAX_RASTER_BANDS:
        raise RegionInputError(f"raster record has {bands} bands, more than {MAX_RASTER_BANDS}")
    return ImageHeader("raster", width, height, bands, dtype.itemsize, raster=True)


def decode_raster(data: bytes) -> np.ndarray:
    """A raster record's [H, W, bands] samples; a record whose samples do not fill its shape, or
    whose type differs from its code, is an error."""
    import tensorflow as tf

    proto, dtype = _raster_proto(data)
    try:
        array = tf.make_ndarray(proto)
    except Exception as exc:  # noqa: BLE001 - numpy and TF raise several types
        raise RegionInputError(f"cannot decode raster record: {exc}") from None
    if array.dtype != dtype or array.ndim != 3:
        raise RegionInputError(f"raster record holds {array.dtype} of shape {list(array.shape)}, "
                               f"not {dtype} [height, width, bands]")
    return array


@contextlib.contextmanager
def _raster_dataset(data: bytes) -> Iterator[Any]:
    """A (Geo)TIFF in memory, opened with rasterio; a plain TIFF without a geotransform is fine
    (its pixels are what is read), so rasterio's warning about it is silenced."""
    import rasterio
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with MemoryFile(data) as memory, memory.open() as dataset:
            yield dataset


def _read_raster_tiff(data: bytes, header: ImageHeader) -> np.ndarray:
    """Every band of a (Geo)TIFF as [H, W, bands], read with rasterio (GDAL)."""
    import rasterio

    try:
        with _raster_dataset(data) as dataset:
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


def _is_nifti(data: bytes) -> bool:
    """A single-file NIfTI-1 or NIfTI-2 header, plain or gzipped."""
    head = data[:544]
    if data[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 544)
        except zlib.error:
            return False
    return head[344:348] == b"n+1\x00" or head[4:8] == b"n+2\x00"


# A volume (NIfTI, multi-frame DICOM) may hold this many planes' worth of an image's bytes; one
# plane (the `slice` column) is decoded from it.
MAX_VOLUME_PLANES = 1024
MEDICAL_BYTES_PER_SAMPLE = 4  # stored as float32, in the modality's units


def parse_plane(spec: str, shape: tuple[int, ...], kind: str) -> tuple[int, int]:
    """`slice` column text (`axis:index`, or `index` along the last axis) -> (axis, index)."""
    text = spec.strip()
    try:
        axis_text, _, index_text = text.rpartition(":")
        axis = int(axis_text) if axis_text else len(shape) - 1
        index = int(index_text)
    except ValueError:
        raise RegionInputError(f"slice {spec!r} is not `axis:index` or `index`") from None
    if not 0 <= axis < len(shape):
        raise RegionInputError(f"slice {spec!r}: the {kind} has axes 0 to {len(shape) - 1}")
    if not 0 <= index < shape[axis]:
        raise RegionInputError(f"slice index {index} is out of range: axis {axis} of the "
                               f"{kind} of shape {shape} has {shape[axis]} slices")
    return axis, index


def _dicom(data: bytes, pixels: bool) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except Exception as exc:  # noqa: BLE001 - pydicom raises InvalidDicomError and others
        raise RegionInputError(f"cannot read DICOM: {exc}") from None


# DICOM-SEG (Segmentation Storage): its frames are per segment, not planes of one image.
_DICOM_SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def _dicom_header(data: bytes, mask: bool = False) -> tuple[ImageHeader, int]:
    dataset = _dicom(data, pixels=False)
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError) as exc:
        raise RegionInputError(f"DICOM has no readable image size: {exc}") from None
    segmentation = str(dataset.get("SOPClassUID", "")) == _DICOM_SEG
    if segmentation and not mask:
        raise RegionInputError("is a DICOM-SEG segmentation: give it as the mask, with "
                               "mask_label naming the segment")
    if samples != 1:
        raise RegionInputError(f"DICOM has {samples} samples per pixel; gray (1) is read")
    return ImageHeader("dicom", columns, rows, 1, MEDICAL_BYTES_PER_SAMPLE,
                       segmentation=segmentation), frames


def _nifti_image(data: bytes) -> Any:
    import gzip

    import nibabel

    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == b"\x1f\x8b" \
        else io.BytesIO(data)
    holder = nibabel.FileHolder(fileobj=stream)
    try:
        head = stream.read(8)
        stream.seek(0)
        kind = nibabel.Nifti2Image if head[4:8] == b"n+2\x00" else nibabel.Nifti1Image
        return kind.from_file_map({"header": holder, "image": holder})
    except Exception as exc:  # noqa: BLE001 - nibabel's HeaderDataError and others
        raise RegionInputError(f"cannot read NIfTI: {exc}") from None


def _nifti_shape(image: Any) -> tuple[int, ...]:
    shape = tuple(int(size) for size in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise RegionInputError(f"NIfTI is a {len(shape)}-D volume of shape {shape}; a 2-D image "
                               "or a 3-D volume is read")
    if len(shape) < 2:
        raise RegionInputError(f"NIfTI has shape {shape}; at least 2-D is needed")
    return shape


def _medical_header(data: bytes, fmt: str, max_pixels: int, mask: bool = False) -> ImageHeader:
    """The header of the largest plane; the whole volume is held to MAX_VOLUME_PLANES planes'
    bytes, from the header, before anything is decoded."""
    if fmt == "dicom":
        header, frames = _dicom_header(data, mask)
        volume = header.decoded_bytes * frames
    else:
        shape = _nifti_shape(_nifti_image(data))
        height, width = sorted(shape)[-2:]  # the largest plane a slice can be
        header = ImageHeader("nifti", width, height, 1, MEDICAL_BYTES_PER_SAMPLE)
        volume = int(np.prod(shape)) * MEDICAL_BYTES_PER_SAMPLE
    limit = max_decoded_image_bytes(max_pixels) * MAX_VOLUME_PLANES
    if volume > limit:
        raise RegionInputError(f"{fmt.upper()} volume decodes to {volume} bytes, above the "
                               f"limit of {limit} (max_pixels x 8 bytes a plane, "
                               f"{MAX_VOLUME_PLANES} planes); refused before decoding")
    return header


def read_medical_plane(data: bytes, max_pixels: int, plane: str = "") -> np.ndarray:
    """One 2-D plane of a DICOM or NIfTI file as float32 in the modality's units: DICOM through
    its modality LUT (rescale slope and intercept: Hounsfield units for CT; RT Dose's dose grid
    scaling: Gy), NIfTI through its scl_slope and scl_inter. A volume (multi-frame DICOM, 3-D
    NIfTI) needs `plane`. Called after `read_header` has checked the file's header."""
    fmt = sniff_format(data)
    if fmt == "dicom":
        # its header was read and checked by read_header, as every caller does first
        dataset = _dicom(data, pixels=True)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        from pydicom.pixels import apply_modality_lut, pixel_array

        index = None
        if plane.strip():
            _axis, index = parse_plane(plane, (frames,), "DICOM frames")
        elif frames > 1:
            raise RegionInputError(f"DICOM holds {frames} frames; give the slice column (the "
                                   "frame's index)")
        try:
            pixels = pixel_array(dataset, index=index)
            values = apply_modality_lut(pixels, dataset)
            if dataset.get("Modality") == "RTDOSE" and "DoseGridScaling" in dataset:
                # RT Dose keeps its scale apart from the modality LUT: the values in Gy
                values = values * float(dataset.DoseGridScaling)
        except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError and others
            raise RegionInputError(f"cannot decode DICOM pixels (truncated or corrupt): "
                                   f"{exc}") from None
    elif fmt == "nifti":
        image = _nifti_image(data)
        shape = _nifti_shape(image)
        if len(shape) == 3:
            if not plane.strip():
                raise RegionInputError(f"NIfTI is a volume of shape {shape}; give the slice "
                                       "column (axis:index)")
            axis, index = parse_plane(plane, shape, "volume")
            where = tuple(index if position == axis else slice(None) for position in range(3))
        else:
            where = (slice(None), slice(None))
        try:
            values = np.asarray(image.dataobj[where + (0,) * (len(image.shape) - len(shape))],
                                dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - a short file: nibabel, numpy, gzip errors
            raise RegionInputError(f"cannot decode NIfTI voxels (truncated or corrupt): "
                                   f"{exc}") from None
    else:
        raise RegionInputError("not a DICOM or NIfTI file")
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise RegionInputError(f"{fmt.upper()} plane has shape {values.shape}; 2-D is needed")
    if not np.isfinite(values).all():
        raise RegionInputError(f"{fmt.upper()} plane holds NaN or infinite values")
    _check_pixels(values.shape[1], values.shape[0], max_pixels)
    return values


# PNG colour types -> samples per pixel as decoded (a palette decodes to its colours)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _png_header(data: bytes) -> ImageHeader:
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise RegionInputError("cannot decode PNG: no IHDR chunk where the format puts it")
    width, height, bits, colour_type = struct.unpack(">IIBB", data[16:26])
    if colour_type not in _PNG_SAMPLES or bits not in (1, 2, 4, 8, 16):
        raise RegionInputError(f"cannot decode PNG: colour type {colour_type} with {bits} bits "
                               "per sample is not in the PNG standard")
    return ImageHeader("png", width, height, _PNG_SAMPLES[colour_type], 2 if bits == 16 else 1)


# JPEG colour spaces (as libjpeg-turbo names them) -> samples per pixel
_JPEG_SAMPLES = {"Gray": 1, "YCbCr": 3, "RGB": 3, "CMYK": 4, "YCCK": 4}


def _jpeg_header(data: bytes) -> ImageHeader:
    import simplejpeg

    try:
        height, width, colour_space, _subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise RegionInputError(f"cannot read JPEG header: {exc}") from None
    if colour_space in ("CMYK", "YCCK"):
        # TensorFlow's decode_jpeg, which Transform and the served graph use, cannot read it
        raise RegionInputError(f"JPEG is {colour_space}; convert it to RGB (or gray) first")
    if colour_space not in _JPEG_SAMPLES:
        raise RegionInputError(f"JPEG colour space {colour_space!r} is not supported")
    return ImageHeader("jpeg", width, height, _JPEG_SAMPLES[colour_space], 1)


def read_header(data: bytes, max_pixels: int, mask: bool = False) -> ImageHeader:
    """What an image decodes to, from its header alone (nothing is decoded), refused when over
    `max_pixels` or, with its bands, over `max_decoded_image_bytes`. With `mask`, a TIFF of any
    sample type (float, 64-bit) is fine: only nonzero matters."""
    fmt = _check_format(data)
    if fmt == "png":
        header = _png_header(data)
    elif fmt == "jpeg":
        header = _jpeg_header(data)
    elif fmt == "raster":
        header = _raster_record_header(data)
    elif fmt in ("dicom", "nifti"):
        header = _medical_header(data, fmt, max_pixels, mask)
    else:
        header = _tiff_header(data, mask=mask)
    _check_pixels(header.width, header.height, max_pixels)
    limit = max_decoded_image_bytes(max_pixels)
    if header.decoded_bytes > limit:
        raise RegionInputError(
            f"image is {header.width}x{header.height} with {header.samples} bands of "
            f"{header.bytes_per_sample} bytes = {header.decoded_bytes} bytes decoded, above the "
            f"limit of {limit} (config max_pixels x 8 bytes); refused before decoding")
    return header


def _decode_jpeg(data: bytes, gray: bool) -> np.ndarray:
    """Strict decoding: libjpeg-turbo's warnings (a scan shorter than the header's size, which
    TensorFlow and Pillow fill in silently) are errors."""
    import simplejpeg

    try:
        array = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "RGB", strict=True)
    except ValueError as exc:
        raise RegionInputError(f"cannot decode JPEG (truncated or corrupt): {exc}") from None
    return array[:, :, 0] if gray else array


def _open_pil(data: bytes, fmt: str) -> Image.Image:
    """Open, then decode fully to catch truncated files (the size is checked already)."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise RegionInputError(f"cannot decode {fmt.upper()}: {exc}") from None
    try:
        image.load()
    except Exception as exc:
        raise RegionInputError(f"cannot decode {fmt.upper()} (truncated or corrupt): {exc}") \
            from None
    return image


_PIL_CHANNELS = {"1": 1, "L": 1, "P": 3, "I": 1, "I;16": 1, "I;16B": 1, "I;16L": 1,
                 "RGB": 3, "RGBA": 4, "CMYK": 4, "LA": 2, "PA": 2, "F": 1}


def load_image(path: str, max_pixels: int) -> ImageInfo:
    """Read and fully check one image; returns the bytes to store."""
    data = read_file(path, max_file_bytes(max_pixels))
    return check_image_bytes(data, max_pixels)


def check_image_bytes(data: bytes, max_pixels: int, plane: str = "") -> ImageInfo:
    """Read and fully check one image; `plane` picks a volume's slice (DICOM frames, NIfTI)."""
    header = read_header(data, max_pixels)
    if header.format in ("dicom", "nifti"):
        values = read_medical_plane(data, max_pixels, plane)
        return ImageInfo(encode_raster(values), values.shape[1], values.shape[0], 1, 32)
    if plane.strip():
        raise RegionInputError(f"slice {plane!r} is given but the image is a "
                               f"{header.format.upper()}, not a volume")
    if header.format == "raster":  # a raster record, as ingest stores one: kept as it is
        decode_raster(data)
        return ImageInfo(data, header.width, header.height, header.samples,
                         header.bytes_per_sample * 8)
    if header.raster:
        array = _read_raster_tiff(data, header)
        return ImageInfo(encode_raster(array), header.width, header.height, header.samples,
                         header.bytes_per_sample * 8)
    if header.format == "tiff":
        array = _decode_tiff(data)
        if array.dtype not in (np.uint8, np.uint16):
            raise RegionInputError(
                f"TIFF pixels are {array.dtype}; images must be 8- or 16-bit unsigned integers")
        channels = 1 if array.ndim == 2 else array.shape[-1]
        _check_channels(channels)
        return ImageInfo(encode_png(array), array.shape[1], array.shape[0], channels,
                         array.dtype.itemsize * 8)
    if header.format == "jpeg":
        _decode_jpeg(data, gray=header.samples == 1)
        return ImageInfo(data, header.width, header.height, header.samples, 8)
    image = _open_pil(data, header.format)
    channels = _PIL_CHANNELS.get(image.mode)
    if channels is None:
        raise RegionInputError(f"unsupported {header.format.upper()} pixel mode {image.mode!r}")
    _check_channels(channels)
    depth = 16 if image.mode.startswith("I") else 8
    return ImageInfo(data, image.width, image.height, channels, depth)


def decode_pixels(data: bytes, max_pixels: int) -> np.ndarray:
    """A stored image's samples as [H, W, C] in their own type: what ingest writes (PNG, JPEG or
    a raster record) decoded as the model's graph decodes it (palette PNGs by their colours,
    alpha kept as a channel)."""
    header = read_header(data, max_pixels)
    if header.format == "raster":
        return decode_raster(data)
    if header.format == "jpeg":
        array = _decode_jpeg(data, gray=header.samples == 1)
    elif header.format == "png":
        image = _open_pil(data, header.format)
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        array = np.asarray(image)
    else:
        raise RegionInputError(f"a stored image is PNG, JPEG or a raster record, not "
                               f"{header.format.upper()}")
    return array.reshape(array.shape[0], array.shape[1], -1)


def _check_channels(channels: int) -> None:
    if channels not in (1, 3, 4):
        raise RegionInputError(
            f"image has {channels} channels; 1 (gray), 3 (RGB) or 4 (RGBA) are supported")


def decode_mask_array(data: bytes, max_pixels: int, plane: str = "",
                      mask_label: float | None = None) -> np.ndarray:
    """Any single-channel image, or a plane of a DICOM or NIfTI label map; nonzero pixels are
    inside the region, or, with `mask_label`, the pixels of that value. Returns bool [H, W].
    A palette mask is read by its colours, as TensorFlow decodes it, not by its indices."""
    header = read_header(data, max_pixels, mask=True)
    if plane.strip() and header.format not in ("dicom", "nifti"):
        raise RegionInputError(f"slice {plane!r} is given but the mask is a "
                               f"{header.format.upper()}, not a volume")
    if header.segmentation:
        return _segment_mask(data, plane, mask_label)
    if header.format in ("dicom", "nifti"):
        array = read_medical_plane(data, max_pixels, plane)
    elif header.format == "raster":
        array = decode_raster(data)
        if array.shape[-1] != 1:
            raise RegionInputError(f"mask is a raster of {array.shape[-1]} bands; masks must be "
                                   "single-channel")
        array = array[:, :, 0]
    elif header.format == "tiff":
        array = _decode_tiff(data)
    elif header.format == "jpeg":
        if header.samples != 1:
            raise RegionInputError(f"mask has {header.samples} channels (JPEG "
                                   "colour); masks must be single-channel")
        array = _decode_jpeg(data, gray=True)
    else:
        image = _open_pil(data, header.format)
        if image.mode == "P":
            array = _palette_gray(image)
        elif image.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
            array = np.asarray(image)
        else:
            channels = _PIL_CHANNELS.get(image.mode, len(image.getbands()))
            raise RegionInputError(
                f"mask has {channels} channels ({image.mode}); masks must be single-channel")
    if array.ndim != 2:
        raise RegionInputError(
            f"mask has {array.shape[-1]} channels; masks must be single-channel")
    if mask_label is not None:
        return array == mask_label
    return array != 0


def _segment_mask(data: bytes, plane: str, mask_label: float | None) -> np.ndarray:
    """One frame of a DICOM-SEG: of the segment `mask_label` numbers (the only one, if the file
    holds one), the `plane`-th of its frames when it has several."""
    from pydicom.pixels import pixel_array

    dataset = _dicom(data, pixels=True)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    groups = list(dataset.get("PerFrameFunctionalGroupsSequence") or [])[:frames]
    try:
        segment_of = [int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                      for group in groups] if len(groups) == frames else [
            int(dataset.SegmentSequence[0].SegmentNumber)] * frames
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise RegionInputError(f"DICOM-SEG frames name no segment: {exc}") from None
    segments = sorted(set(segment_of))
    if mask_label is None:
        if len(segments) > 1:
            raise RegionInputError(f"DICOM-SEG holds segments {segments}; give mask_label (the "
                                   "segment's number)")
        wanted = segments[0]
    else:
        wanted = int(mask_label)
    candidates = [index for index, segment in enumerate(segment_of) if segment == wanted]
    if not candidates:
        raise RegionInputError(f"DICOM-SEG has no frame of segment {wanted} (segments "
                               f"{segments})")
    if plane.strip():
        frame = candidates[parse_plane(plane, (len(candidates),), "segment's frames")[1]]
    elif len(candidates) > 1:
        raise RegionInputError(f"segment {wanted} has {len(candidates)} frames; give the slice "
                               "column (the frame among them)")
    else:
        frame = candidates[0]
    try:
        pixels = pixel_array(dataset, index=frame if frames > 1 else None)
    except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError and others
        raise RegionInputError(f"cannot decode DICOM-SEG pixels (truncated or corrupt): "
                               f"{exc}") from None
    return np.asarray(pixels) != 0


def _palette_gray(image: Image.Image) -> np.ndarray:
    """The gray levels a palette image decodes to in TensorFlow's decode_png with channels=1
    (the palette's colours, then ITU-R 601 luma in 1/32768, truncated), so a palette entry that
    is black is outside the region whatever its index."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)
    weights = np.array([9798, 19235, 3735], dtype=np.uint32)
    return ((rgb @ weights) >> 15).astype(np.uint8)


def load_mask(path: str, image_size: tuple[int, int], resize: bool, max_pixels: int
              ) -> tuple[bytes, float]:
    """Read a mask, match it to the image (width, height), return canonical PNG and coverage."""
    region = decode_mask_array(read_file(path, max_file_bytes(max_pixels)), max_pixels)
    return canonical_mask(region, image_size, resize)


def canonical_mask(region: np.ndarray, image_size: tuple[int, int], resize: bool
                   ) -> tuple[bytes, float]:
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
            region = decode_mask_array(bytes(data), max_pixels, _mask_plane(data, plane),
                                       mask_label)
            mask, coverage = canonical_mask(region, (target.width, target.height),
                                            resize_masks)
        except RegionInputError as exc:
            raise RegionCheckError("mask", index, str(exc)) from None
        encoded.append(mask)
        coverages.append(coverage)
    return CheckedRegion(infos, encoded, coverages)


# Polygon masks (GeoJSON; masktfx/manifest.py reads them from WKT too), rasterized onto view 1's
# grid with its geotransform.
def rasterize_geometry(geometry: dict, image: bytes, max_pixels: int, crs: str = "") -> bytes:
    """The canonical mask PNG of `geometry` on `image`'s grid: in the image's CRS through its
    geotransform (reprojected from `crs` when that names another), or, for an image without one,
    in pixel coordinates (x to the right, y down, from the top-left corner)."""
    import rasterio
    import rasterio.features
    import rasterio.warp
    import shapely.geometry
    from affine import Affine
    from rasterio.transform import array_bounds

    header = read_header(image, max_pixels)
    transform, image_crs = Affine.identity(), None
    if header.format == "tiff":
        try:
            with _raster_dataset(image) as dataset:
                transform, image_crs = dataset.transform, dataset.crs
        except rasterio.errors.RasterioError as exc:
            raise RegionInputError(f"cannot read the image's grid: {exc}") from None
    if crs:
        if image_crs is None:
            raise RegionInputError(f"the polygon is in {crs} but the image has no CRS; give "
                                   "its coordinates in pixels")
        try:
            geometry = rasterio.warp.transform_geom(crs, image_crs, geometry)
        except Exception as exc:  # noqa: BLE001 - rasterio's CRSError and GDAL's errors
            raise RegionInputError(f"cannot reproject the polygon from {crs}: {exc}") from None
    shape = (header.height, header.width)
    mask = rasterio.features.rasterize([(geometry, 1)], out_shape=shape, transform=transform,
                                       fill=0, dtype="uint8")
    if not mask.any():
        footprint = shapely.geometry.box(*array_bounds(*shape, transform))
        polygon = shapely.geometry.shape(geometry)
        where = "in pixels" if image_crs is None else f"in {image_crs}"
        if not polygon.intersects(footprint):
            raise RegionInputError(
                f"polygon lies outside the image: its bounds {_bounds(polygon.bounds)}, the "
                f"image's {_bounds(footprint.bounds)} ({where})")
        raise RegionInputError(MASK_EMPTY + " (the polygon covers no pixel centre)")
    return encode_png(mask * np.uint8(255))


def _bounds(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{value:.6g}" for value in bounds) + ")"


def _mask_plane(data: bytes, plane: str) -> str:
    """A volume's mask (a label map) is sliced as its images are; a 2-D mask is used whole."""
    return plane if sniff_format(bytes(data[:65536])) in ("dicom", "nifti") else ""


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


def resize_nearest(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to (width, height), sampling pixel centres."""
    width, height = size
    rows = ((np.arange(height) + 0.5) * region.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * region.shape[1] / width).astype(np.int64)
    return region[np.clip(rows, 0, region.shape[0] - 1)][:, np.clip(cols, 0, region.shape[1] - 1)]


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
