"""JPEG: stored as read; decoded here by libjpeg-turbo (simplejpeg) in strict mode, so a scan
shorter than its header's size, which TensorFlow and Pillow fill in silently, is an error."""

from __future__ import annotations

import numpy as np

from masktfx.images.base import ImageHeader, ImageInfo, ImageReader, RegionInputError, region_of

# JPEG colour spaces (as libjpeg-turbo names them) -> samples per pixel
_JPEG_SAMPLES = {"Gray": 1, "YCbCr": 3, "RGB": 3, "CMYK": 4, "YCCK": 4}


def decode_jpeg(data: bytes, gray: bool) -> np.ndarray:
    import simplejpeg

    try:
        array = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "RGB", strict=True)
    except ValueError as exc:
        raise RegionInputError(f"cannot decode JPEG (truncated or corrupt): {exc}") from None
    return array[:, :, 0] if gray else array


class JpegReader(ImageReader):
    format = "jpeg"
    description = "JPEG"
    picture = True

    def sniff(self, data: bytes) -> bool:
        return data.startswith(b"\xff\xd8\xff")

    def header(self, data: bytes, max_pixels: int, mask: bool = False) -> ImageHeader:
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

    def stored(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str
               ) -> ImageInfo:
        decode_jpeg(data, gray=header.samples == 1)
        return ImageInfo(data, header.width, header.height, header.samples, 8)

    def pixels(self, data: bytes, header: ImageHeader) -> np.ndarray:
        array = decode_jpeg(data, gray=header.samples == 1)
        return array.reshape(array.shape[0], array.shape[1], -1)

    def mask(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str,
             mask_label: float | None) -> np.ndarray:
        if header.samples != 1:
            raise RegionInputError(f"mask has {header.samples} channels (JPEG colour); masks "
                                   "must be single-channel")
        return region_of(decode_jpeg(data, gray=True), mask_label)
