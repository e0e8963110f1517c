"""Raster records: how ingest stores a view that is no gray or RGB(A) picture (a GeoTIFF of any
number of bands, integer or float samples PNG cannot hold, a DICOM or NIfTI plane in its
modality's units). RASTER_MAGIC, a 3-byte sample type code, then a serialized TensorFlow
TensorProto of [H, W, bands]: every band, in order, the samples exactly as read. Transform and
both serving signatures parse it in the graph (`modules/transform.py`), with the sample types
defined here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from masktfx.images.base import ImageHeader, ImageInfo, ImageReader, RegionInputError, region_of

RASTER_MAGIC = b"MTFXR"
# The sample types a record may hold, by code (Transform parses each as its TensorFlow dtype).
RASTER_DTYPES = {b"u08": np.uint8, b"i08": np.int8, b"u16": np.uint16, b"i16": np.int16,
                 b"f32": np.float32}
RASTER_HEADER_BYTES = len(RASTER_MAGIC) + 3
MAX_RASTER_BANDS = 64  # config.MAX_CHANNELS, the most channels a model may take
# The raster checks, made in the graph only (they depend on the model's `channels` and `bands`).
NOT_A_RASTER = "is not a raster record; the model takes rasters of {channels} band(s)"
RASTER_LACKS_BAND = "raster has {bands} band(s); the model takes band {band} (config bands)"
RASTER_BANDS_DIFFER = "raster has {bands} band(s); the model takes {channels} (config channels)"


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


class RasterRecordReader(ImageReader):
    format = "raster"
    description = "a raster record"

    def sniff(self, data: bytes) -> bool:
        return data.startswith(RASTER_MAGIC)

    def header(self, data: bytes, max_pixels: int, mask: bool = False) -> ImageHeader:
        proto, dtype = _raster_proto(data)
        dims = [int(dim.size) for dim in proto.tensor_shape.dim]
        if len(dims) != 3 or min(dims) < 1:
            raise RegionInputError(f"raster record has shape {dims}; [height, width, bands] is "
                                   "needed")
        height, width, bands = dims
        if bands > MAX_RASTER_BANDS:
            raise RegionInputError(f"raster record has {bands} bands, more than "
                                   f"{MAX_RASTER_BANDS}")
        return ImageHeader("raster", width, height, bands, dtype.itemsize, raster=True)

    def stored(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str
               ) -> ImageInfo:
        decode_raster(data)  # a record, as ingest stores one: checked, kept as it is
        return ImageInfo(data, header.width, header.height, header.samples,
                         header.bytes_per_sample * 8)

    def pixels(self, data: bytes, header: ImageHeader) -> np.ndarray:
        return decode_raster(data)

    def mask(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str,
             mask_label: float | None) -> np.ndarray:
        array = decode_raster(data)
        if array.shape[-1] != 1:
            raise RegionInputError(f"mask is a raster of {array.shape[-1]} bands; masks must be "
                                   "single-channel")
        return region_of(array[:, :, 0], mask_label)
