"""NIfTI-1 and NIfTI-2 (nibabel), plain or gzipped: a 2-D image, or a 3-D volume whose plane the
`slice` column picks (`axis:index`), in its units through scl_slope and scl_inter, stored as a
float32 raster record. A label map is a mask: `mask_label` picks the label."""

from __future__ import annotations

import io
import zlib
from typing import Any

import numpy as np

from masktfx.images.base import ImageHeader, RegionInputError
from masktfx.images.volumes import (
    MEDICAL_BYTES_PER_SAMPLE,
    VolumeReader,
    check_volume_bytes,
    checked_plane,
    parse_plane,
)

NAME = "NIFTI"


def _image(data: bytes) -> Any:
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


def _shape(image: Any) -> tuple[int, ...]:
    shape = tuple(int(size) for size in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise RegionInputError(f"NIfTI is a {len(shape)}-D volume of shape {shape}; a 2-D image "
                               "or a 3-D volume is read")
    if len(shape) < 2:
        raise RegionInputError(f"NIfTI has shape {shape}; at least 2-D is needed")
    return shape


class NiftiReader(VolumeReader):
    format = "nifti"
    description = "a NIfTI file"

    def sniff(self, data: bytes) -> bool:
        """A single-file NIfTI-1 or NIfTI-2 header, plain or gzipped."""
        head = data[:544]
        if data[:2] == b"\x1f\x8b":
            try:
                head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 544)
            except zlib.error:
                return False
        return head[344:348] == b"n+1\x00" or head[4:8] == b"n+2\x00"

    def header(self, data: bytes, max_pixels: int, mask: bool = False) -> ImageHeader:
        """The header of the largest plane a slice can be."""
        shape = _shape(_image(data))
        height, width = sorted(shape)[-2:]
        check_volume_bytes(NAME, int(np.prod(shape)) * MEDICAL_BYTES_PER_SAMPLE, max_pixels)
        return ImageHeader("nifti", width, height, 1, MEDICAL_BYTES_PER_SAMPLE)

    def plane(self, data: bytes, max_pixels: int, plane: str) -> np.ndarray:
        image = _image(data)
        shape = _shape(image)
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
        return checked_plane(NAME, values, max_pixels)

