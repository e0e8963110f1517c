"""DICOM (pydicom): one gray plane, in the modality's units through its modality LUT (rescale
slope and intercept: Hounsfield units for CT; RT Dose's dose grid scaling: Gy), stored as a
float32 raster record. A multi-frame file is a volume whose frame the `slice` column picks. A
DICOM-SEG (Segmentation Storage) is a mask whose frames belong to segments: `mask_label` names
the segment."""

from __future__ import annotations

import io
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

# DICOM-SEG (Segmentation Storage): its frames are per segment, not planes of one image.
_DICOM_SEG = "1.2.840.10008.5.1.4.1.1.66.4"
NAME = "DICOM"


def _dataset(data: bytes, pixels: bool) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except Exception as exc:  # noqa: BLE001 - pydicom raises InvalidDicomError and others
        raise RegionInputError(f"cannot read DICOM: {exc}") from None


def _frames(dataset: Any) -> int:
    return int(dataset.get("NumberOfFrames", 1) or 1)


class DicomReader(VolumeReader):
    format = "dicom"
    description = "a DICOM file"

    def sniff(self, data: bytes) -> bool:
        return data[128:132] == b"DICM"

    def header(self, data: bytes, max_pixels: int, mask: bool = False) -> ImageHeader:
        dataset = _dataset(data, pixels=False)
        try:
            rows, columns = int(dataset.Rows), int(dataset.Columns)
            frames = _frames(dataset)
            samples = int(dataset.get("SamplesPerPixel", 1))
        except (AttributeError, TypeError, ValueError) as exc:
            raise RegionInputError(f"DICOM has no readable image size: {exc}") from None
        segmentation = str(dataset.get("SOPClassUID", "")) == _DICOM_SEG
        if segmentation and not mask:
            raise RegionInputError("is a DICOM-SEG segmentation: give it as the mask, with "
                                   "mask_label naming the segment")
        if samples != 1:
            raise RegionInputError(f"DICOM has {samples} samples per pixel; gray (1) is read")
        header = ImageHeader("dicom", columns, rows, 1, MEDICAL_BYTES_PER_SAMPLE,
                             segmentation=segmentation)
        check_volume_bytes(NAME, header.decoded_bytes * frames, max_pixels)
        return header

    def plane(self, data: bytes, max_pixels: int, plane: str) -> np.ndarray:
        """One frame as float32 in the modality's units (its header checked already)."""
        from pydicom.pixels import apply_modality_lut, pixel_array

        dataset = _dataset(data, pixels=True)
        frames = _frames(dataset)
        index = None
        if plane.strip():
            _axis, index = parse_plane(plane, (frames,), "DICOM frames")
        elif frames > 1:
            raise RegionInputError(f"DICOM holds {frames} frames; give the slice column (the "
                                   "frame's index)")
        try:
            values = apply_modality_lut(pixel_array(dataset, index=index), dataset)
            if dataset.get("Modality") == "RTDOSE" and "DoseGridScaling" in dataset:
                # RT Dose keeps its scale apart from the modality LUT: the values in Gy
                values = values * float(dataset.DoseGridScaling)
        except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError and others
            raise RegionInputError(f"cannot decode DICOM pixels (truncated or corrupt): "
                                   f"{exc}") from None
        return checked_plane(NAME, values, max_pixels)

    def mask(self, data: bytes, header: ImageHeader, max_pixels: int, plane: str,
             mask_label: float | None) -> np.ndarray:
        if header.segmentation:
            return _segment_mask(data, plane, mask_label)
        return super().mask(data, header, max_pixels, plane, mask_label)


def _segment_mask(data: bytes, plane: str, mask_label: float | None) -> np.ndarray:
    """One frame of a DICOM-SEG: of the segment `mask_label` numbers (the only one, if the file
    holds one), the `plane`-th of its frames when it has several."""
    from pydicom.pixels import pixel_array

    dataset = _dataset(data, pixels=True)
    frames = _frames(dataset)
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
