"""Ingest against paths a careless or hostile manifest can name: FIFOs, huge files, files that
only look like images; and a killed or failed ingest leaves no work folder behind."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import IN_PROCESS_BEAM, patched_jpeg, square_mask, write_manifest, write_png

from masktfx import cli, features
from masktfx.images import decode_raster, max_file_bytes, sniff_format
from masktfx.ingest import WORK_PREFIX
from masktfx.records import read_examples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rejected(directory) -> dict[int, str]:
    with open(os.path.join(directory, features.REJECTED_CSV), encoding="utf-8") as handle:
        return {int(row["row"]): row["reason"] for row in csv.DictReader(handle)}


def test_fifos_huge_files_and_non_images_are_refused_without_reading_them(tmp_path):
    rng = np.random.default_rng(0)
    write_png(str(tmp_path / "good.png"), rng.integers(0, 255, (16, 16), np.uint8))
    write_png(str(tmp_path / "mask.png"), square_mask(16, 4, 10))
    os.mkfifo(tmp_path / "fifo.png")  # opening it for reading would wait for a writer forever
    with open(tmp_path / "huge.png", "wb") as handle:  # sparse: 1 GB that takes no disk
        handle.truncate(2**30)
    with open(tmp_path / "big.png", "wb") as handle:  # under the size limit, not an image
        handle.truncate(5 * 2**20)
    manifest = write_manifest(str(tmp_path / "m.csv"), ["image", "mask", "label"], [
        ["good.png", "mask.png", "1"],
        ["fifo.png", "mask.png", "1"],
        ["good.png", "fifo.png", "0"],
        ["huge.png", "mask.png", "1"],
        ["big.png", "mask.png", "0"]])
    output = tmp_path / "out"
    started = time.monotonic()
    assert cli.main(["ingest", manifest, "--output", str(output), "--no-progress",
                     "--max-pixels", "1000000", "--beam-args", *IN_PROCESS_BEAM]) == 0
    assert time.monotonic() - started < 60
    reasons = _rejected(output)
    assert "not a regular file" in reasons[2] and "not a regular file" in reasons[3]
    assert f"more than an image within max_pixels can take ({max_file_bytes(10**6)})" \
        in reasons[4]
    assert "not a PNG, JPEG or TIFF image" in reasons[5]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(WORK_PREFIX)]


def test_images_that_would_decode_to_more_than_their_pixels_or_to_what_tf_cannot_read(tmp_path):
    """TIFF headers declaring more bands than a raster may have, samples of a type no model
    reads or a volume are refused from the header; a CMYK JPEG (TensorFlow's decoder, used in
    Transform and serving, cannot read it) is refused at ingest rather than breaking the
    Transform."""
    import tifffile
    from PIL import Image

    write_png(str(tmp_path / "mask.png"), square_mask(16, 4, 10))
    tifffile.imwrite(tmp_path / "bands.tif", np.zeros((16, 16, 200), np.uint8),
                     photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "deep.tif", np.zeros((16, 16), np.uint32))
    tifffile.imwrite(tmp_path / "volume.tif", np.zeros((5, 16, 16), np.uint8), volumetric=True)
    Image.new("CMYK", (16, 16), (0, 50, 100, 0)).save(tmp_path / "cmyk.jpg", format="JPEG")
    tifffile.imwrite(tmp_path / "good.tif", np.full((16, 16), 300, np.uint16))
    tifffile.imwrite(tmp_path / "white0.tif", np.zeros((16, 16), np.uint8),
                     photometric="miniswhite")
    (tmp_path / "patched.jpg").write_bytes(patched_jpeg(16, 160))
    # RGB + near-infrared, as GDAL writes it (the 4th band is no alpha), and a real RGBA
    tifffile.imwrite(tmp_path / "rgbn.tif", np.zeros((16, 16, 4), np.uint16),
                     photometric="rgb", extrasamples=["unspecified"])
    tifffile.imwrite(tmp_path / "rgba.tif", np.full((16, 16, 4), 9, np.uint8),
                     photometric="rgb", extrasamples=["unassalpha"])
    manifest = write_manifest(str(tmp_path / "m.csv"), ["image", "mask", "label"], [
        [name, "mask.png", "1"] for name in ("bands.tif", "deep.tif", "volume.tif", "cmyk.jpg",
                                             "good.tif", "white0.tif", "patched.jpg",
                                             "rgbn.tif", "rgba.tif")])
    output = tmp_path / "out"
    assert cli.main(["ingest", manifest, "--output", str(output), "--no-progress",
                     "--beam-args", *IN_PROCESS_BEAM]) == 0
    reasons = _rejected(output)
    assert "TIFF has 200 bands, more than 64; refused before decoding" in reasons[1]
    assert "TIFF samples are 32-bit unsigned integer; images are read as 8- or 16-bit " \
        "integers or 32-bit floats" in reasons[2]
    assert "a volume of depth 5" in reasons[3]
    assert "JPEG is CMYK; convert it to RGB" in reasons[4]
    assert 5 not in reasons  # a 16-bit gray TIFF is fine
    assert "TIFF colour space is MINISWHITE" in reasons[6]
    # its header says 160x160, its data holds 16x16: TensorFlow and Pillow would fill the rest
    assert "cannot decode JPEG (truncated or corrupt)" in reasons[7], reasons[7]
    assert 8 not in reasons  # a raster of 4 bands: kept whole (tests/test_rasters.py)
    assert 9 not in reasons  # RGBA: the alpha is dropped, as documented
    stored = [ex.features.feature[features.IMAGES_KEY].bytes_list.value[0]
              for ex in read_examples(str(output / features.SHARD_GLOB))]
    assert [decode_raster(data).shape for data in stored if sniff_format(data) == "raster"] \
        == [(16, 16, 4)]


def test_a_palette_mask_is_read_by_its_colours_as_tensorflow_decodes_it():
    """Index 1 painted black is outside the region, as the served graph sees it; a palette of
    dark colours agrees with TensorFlow's decode pixel for pixel on what is inside."""
    import io

    import tensorflow as tf
    from PIL import Image

    from masktfx.images import RegionInputError, check_region, decode_mask_array, encode_png

    def palette_png(indices: np.ndarray, palette: np.ndarray) -> bytes:
        image = Image.fromarray(indices.astype(np.uint8), "P")
        image.putpalette(palette.astype(np.uint8).flatten().tolist())
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    rng = np.random.default_rng(4)
    palette = rng.integers(0, 8, (256, 3))
    indices = np.arange(256).reshape(16, 16)
    data = palette_png(indices, palette)
    decoded = tf.io.decode_image(data, channels=1, expand_animations=False).numpy()[..., 0]
    np.testing.assert_array_equal(decode_mask_array(data, 10**6), decoded != 0)

    image = encode_png(rng.integers(0, 255, (16, 16), np.uint8))
    black_inside = palette_png(square_mask(16, 4, 10), np.zeros((256, 3)))
    with pytest.raises(RegionInputError, match="mask is empty"):
        check_region([image], [black_inside], 10**6)


_KILLED_INGEST = f"""
import os, signal, sys
import masktfx.ingest as ingest
def chunks_then_die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # killed once its work folder exists
ingest.shard_chunks = chunks_then_die
ingest.run_ingest(sys.argv[1], sys.argv[2], beam_args={IN_PROCESS_BEAM!r})
"""


def test_a_killed_ingest_leaves_no_work_folder_once_the_next_one_starts(tmp_path):
    rng = np.random.default_rng(1)
    write_png(str(tmp_path / "a.png"), rng.integers(0, 255, (16, 16), np.uint8))
    write_png(str(tmp_path / "m.png"), square_mask(16, 4, 10))
    manifest = write_manifest(str(tmp_path / "m.csv"), ["image", "mask", "label"],
                              [["a.png", "m.png", "1"]])
    output = tmp_path / "data" / "span-1"
    done = subprocess.run([sys.executable, "-c", _KILLED_INGEST, manifest, str(output)],
                          cwd=ROOT, timeout=300)
    assert done.returncode == -9
    parent = tmp_path / "data"
    assert [n for n in os.listdir(parent) if n.startswith(WORK_PREFIX)]  # the killed one's
    assert cli.main(["ingest", manifest, "--output", str(parent / "span-2"), "--no-progress",
                     "--beam-args", *IN_PROCESS_BEAM]) == 0
    assert sorted(os.listdir(parent)) == ["span-2"]
    assert ".owner" not in os.listdir(parent / "span-2")
