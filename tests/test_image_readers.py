"""Every image reader keeps the same contract: the registry picks it by the file's signature; its
header says the size before decoding; what it stores decodes back to the same pixels; a mask
gives the region's pixels; a truncated file is refused with the format named. One case per
reader below; format-specific behaviour (colour spaces, volumes, geotransforms) is in
test_ingest, test_rasters, test_medical and test_polygons. The last test runs the worked
example of docs/data.md, a new reader added in one module."""

from __future__ import annotations

import importlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from masktfx import images
from masktfx.images import base

MAX_PIXELS = 10**6
SQUARE = np.zeros((20, 24), np.uint8)
SQUARE[5:12, 6:15] = 200


def _package_file(package: str, *parts: str) -> str:
    return os.path.join(os.path.dirname(importlib.import_module(package).__file__), *parts)


def _png() -> bytes:
    return images.encode_png(SQUARE)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(SQUARE).save(buffer, format="JPEG", quality=100)
    return buffer.getvalue()


def _tiff_picture() -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, SQUARE)
    return buffer.getvalue()


def _tiff_raster() -> bytes:
    import tifffile

    buffer = io.BytesIO()
    bands = np.stack([SQUARE.astype(np.float32) * scale for scale in (1.0, 0.5, 0.25, 2.0, -1.0)],
                     axis=-1)
    tifffile.imwrite(buffer, bands, planarconfig="contig")
    return buffer.getvalue()


def _raster_record() -> bytes:
    return images.encode_raster(SQUARE.astype(np.int16)[:, :, None] - 100)


def _file(path: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb") as handle:
            return handle.read()
    return read


@dataclass(frozen=True)
class Case:
    reader: str
    make: Callable[[], bytes]
    size: tuple[int, int]  # width, height
    channels: int
    kept_as_read: bool  # a record stores the file's own bytes
    mask: bool = True  # usable as a mask here (gray, single band)


CASES = [
    Case("png", _png, (24, 20), 1, True),
    Case("jpeg", _jpeg, (24, 20), 1, True),
    Case("tiff", _tiff_picture, (24, 20), 1, False),
    Case("tiff", _tiff_raster, (24, 20), 5, False, mask=False),
    Case("raster", _raster_record, (24, 20), 1, True),
    Case("dicom", _file(_package_file("pydicom", "data", "test_files", "CT_small.dcm")),
         (128, 128), 1, False),
    Case("nifti", _file(_package_file("nibabel", "tests", "data", "anatomical.nii")),
         (33, 41), 1, False, mask=False),  # a volume: the slice column picks a plane
]
IDS = [f"{case.reader}-{case.make.__name__}" for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_each_reader_is_found_by_signature_and_reads_its_header(case):
    data = case.make()
    assert images.sniff_format(data[:base.HEADER_BYTES]) == case.reader
    header = images.read_header(data, MAX_PIXELS)
    assert header.format == case.reader
    assert (header.width, header.height) == case.size or case.reader == "nifti"
    assert header.samples == case.channels


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_what_a_reader_stores_decodes_to_the_same_pixels(case):
    data = case.make()
    plane = "0:10" if case.reader == "nifti" else ""
    stored = images.check_image_bytes(data, MAX_PIXELS, plane)
    assert (stored.encoded == data) == case.kept_as_read
    assert stored.channels == case.channels
    pixels = images.decode_pixels(stored.encoded, MAX_PIXELS)
    assert pixels.shape == (stored.height, stored.width, case.channels)
    if case.reader in ("png", "tiff", "raster") and case.channels == 1:
        expected = SQUARE if case.reader != "raster" else SQUARE.astype(np.int16) - 100
        np.testing.assert_array_equal(pixels[:, :, 0], expected)


@pytest.mark.parametrize("case", [case for case in CASES if case.mask],
                         ids=[i for i, case in zip(IDS, CASES) if case.mask])
def test_a_mask_in_each_format_gives_the_regions_pixels(case):
    region = images.decode_mask_array(case.make(), MAX_PIXELS)
    assert region.dtype == np.bool_ and region.shape == case.size[::-1]
    if case.reader in ("png", "tiff"):
        np.testing.assert_array_equal(region, SQUARE > 0)
    elif case.reader == "raster":
        np.testing.assert_array_equal(region, SQUARE.astype(np.int16) - 100 != 0)
    elif case.reader == "jpeg":  # lossy: the square, give or take its edge
        assert abs(int(region.sum()) - int((SQUARE > 0).sum())) <= 2 * (7 + 9)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_truncated_file_is_refused_naming_its_format(case):
    data = case.make()
    cut = data[:len(data) // 2]
    plane = "0:10" if case.reader == "nifti" else ""
    with pytest.raises(images.RegionInputError) as refused:
        images.check_image_bytes(cut, MAX_PIXELS, plane)
    words = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF|raster", "raster": "raster record",
             "dicom": "DICOM", "nifti": "NIfTI"}[case.reader]
    assert re.search(words, str(refused.value)), refused.value


def test_an_unknown_signature_lists_every_registered_format():
    with pytest.raises(images.RegionInputError) as refused:
        images.read_header(b"GIF89a" + bytes(64), MAX_PIXELS)
    message = str(refused.value)
    assert message.startswith("not a PNG, JPEG or TIFF image nor a raster record")
    assert "DICOM" in message and "NIfTI" in message


def _docs_example() -> str:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                        "data.md")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    section = text[text.index("## Adding a format"):]
    return section[section.index("```python\n") + 10:section.index("```\n", section.index(
        "```python\n") + 10)]


def _pgm(array: np.ndarray) -> bytes:
    return f"P5\n{array.shape[1]} {array.shape[0]}\n255\n".encode() + array.tobytes()


def test_the_docs_worked_example_adds_a_format_in_one_module(tmp_path, monkeypatch):
    namespace: dict = {"__name__": "masktfx.images.pgm"}
    exec(compile(_docs_example(), "docs/data.md", "exec"), namespace)  # noqa: S102
    (tmp_path / "view.pgm").write_bytes(_pgm(SQUARE))
    (tmp_path / "mask.pgm").write_bytes(_pgm((SQUARE > 0).astype(np.uint8)))
    paths = [str(tmp_path / "view.pgm")], [str(tmp_path / "mask.pgm")]
    with pytest.raises(images.RegionFileError, match="unrecognised file signature"):
        images.load_region(*paths, MAX_PIXELS)
    # registered (the line in masktfx/images/__init__.py), for this test only
    monkeypatch.setattr(base, "_READERS", dict(base._READERS))
    images.register(namespace["PgmReader"]())
    region = images.load_region(*paths, MAX_PIXELS)
    np.testing.assert_array_equal(images.decode_pixels(region.images[0].encoded,
                                                       MAX_PIXELS)[:, :, 0], SQUARE)
    assert region.coverages == [pytest.approx(float((SQUARE > 0).mean()))]
    with pytest.raises(images.RegionInputError, match="maxval 65535"):
        images.read_header(b"P5\n24 20\n65535\n" + bytes(960), MAX_PIXELS)
