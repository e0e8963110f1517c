"""What the readers of medical volumes (DICOM, NIfTI) share: the `slice` column that picks a plane,
the limit on a whole volume's bytes checked from its header, and the checks of a plane's values,
which are stored as float32 raster records in the modality's units."""

from __future__ import annotations

import numpy as np

from masktfx.images.base import (
    ImageHeader,
    ImageInfo,
    ImageReader,
    RegionInputError,
    check_pixels,
    max_decoded_image_bytes,
    region_of,
)
from masktfx.images.raster import encode_raster

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


def check_volume_bytes(name: str, volume_bytes: int, max_pixels: int) -> None:
    """The whole volume is held to MAX_VOLUME_PLANES planes' bytes, before anything is decoded."""
    limit = max_decoded_image_bytes(max_pixels) * MAX_VOLUME_PLANES
    if volume_bytes > limit:
        raise RegionInputError(f"{name} volume decodes to {volume_bytes} bytes, above the "
                               f"limit of {limit} (max_pixels x 8 bytes a plane, "
                               f"{MAX_VOLUME_PLANES} planes); refused before decoding")


def checked_plane(name: str, values: np.ndarray, max_pixels: int) -> np.ndarray:
    """A decoded plane as float32 [H, W], finite and within `max_pixels`."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise RegionInputError(f"{name} plane has shape {values.shape}; 2-D is needed")
    if not np.isfinite(values).all():
        raise RegionInputError(f"{name} plane holds NaN or infinite values")
    check_pixels(values.shape[1], values.shape[0], max_pixels)
    return values


def stored_plane(values: np.ndarray, header: ImageHeader) -> ImageInfo:
    """What a record stores for a plane: a float32 raster record of one band."""
    return ImageInfo(encode_raster(values), values.shape[1], values.shape[0], 1,
                     header.bytes_per_sample * 8)


class VolumeReader(ImageReader):
    """A format of planes in the modality's units: a view stores one plane as a float32 raster
    record; a label map's plane is a mask. Subclasses read the plane."""

    volume = True

    def plane(self, data: bytes, max_pixels: int, plane: str) -> np.ndarray:
        """The plane `plane` names (the only one of a 2-D file), float32 [H, W], checked."""
        raise NotImplementedError

    def stored(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str
               ) -> ImageInfo:
        return stored_plane(self.plane(data, max_pixels, plane), header)

    def mask(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str,
             mask_label: float | None) -> np.ndarray:
        return region_of(self.plane(data, max_pixels, plane), mask_label)
