"""Write the bad-input corpus: files, a manifest that uses them, and a corrupted TFRecord shard.

    python tests/data/make_bad_corpus.py [OUTPUT_DIR]     # default tests/data/bad/

Every item is listed in CASES with what each entry point must do with it: `reject` (a clear error
that contains the given words, every other row kept) or `accept` (valid input whose handling is
documented: a mask of all ones is the whole image, 0/1 and 16-bit masks count any nonzero pixel).
The tests in tests/test_bad_inputs.py send every item through ingest, the pipeline, the server
(REST and gRPC) and `masktfx predict`.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from masktfx.images import encode_png  # noqa: E402

SIZE = 32
NON_UTF8_NAME = b"caf\xe9-latin1.png"  # a Latin-1 file name: not valid UTF-8


@dataclass(frozen=True)
class Case:
    id: str
    image: str  # manifest path, relative to the corpus folder
    mask: str
    label: str
    expect: str  # "accept" or "reject"
    reason: str = ""  # words the error must contain (reject)
    bad_part: str = ""  # "image" or "mask": what a server request carries the bad bytes in


CASES = [
    Case("good-1", "good-1.png", "mask-good.png", "1", "accept"),
    Case("good-2", "good-2.png", "mask-good.png", "0", "accept"),
    Case("good-3", "good-3.png", "mask-good.png", "yes", "accept"),
    Case("truncated-png", "truncated.png", "mask-good.png", "1", "reject",
         "truncated or corrupt", "image"),
    Case("zero-byte", "empty.png", "mask-good.png", "1", "reject", "empty file", "image"),
    Case("text-as-png", "text.png", "mask-good.png", "1", "reject", "not a PNG, JPEG or TIFF",
         "image"),
    Case("lying-header", "lying-header.png", "mask-good.png", "1", "reject",
         "truncated or corrupt", "image"),
    Case("one-pixel", "one-pixel.png", "mask-one-pixel.png", "1", "reject",
         "at least 2x2 pixels", "image"),
    Case("huge-header", "huge-header.png", "mask-good.png", "1", "reject",
         "refused before decoding", "image"),
    Case("mask-all-zeros", "good-1.png", "mask-zeros.png", "1", "reject", "mask is empty",
         "mask"),
    Case("mask-all-ones", "good-2.png", "mask-ones.png", "1", "accept"),
    Case("mask-0-1-values", "good-3.png", "mask-0-1.png", "0", "accept"),
    Case("mask-rgba", "good-1.png", "mask-rgba.png", "1", "reject", "single-channel", "mask"),
    Case("mask-16-bit", "good-2.png", "mask-16bit.png", "1", "accept"),
    Case("label-2", "good-1.png", "mask-good.png", "2", "reject", "label"),
    Case("label-empty", "good-2.png", "mask-good.png", "", "accept"),  # an unlabeled region
    Case("good-1", "good-3.png", "mask-good.png", "0", "reject", "duplicate id"),
    Case("non-utf8-name", NON_UTF8_NAME.decode("utf-8", "surrogateescape"), "mask-good.png",
         "1", "accept"),
    Case("non-utf8-missing", "gone-\udce9.png", "mask-good.png", "1", "reject",
         "file not found"),
    Case("traversal", "../../etc/passwd", "mask-good.png", "1", "reject",
         "outside the manifest's folder"),
    Case("absolute-outside", "/etc/passwd", "mask-good.png", "1", "reject",
         "outside the manifest's folder"),
]

MANIFEST = "manifest.csv"  # written with a UTF-8 BOM, as spreadsheet programs do
MISSING_COLUMN_MANIFEST = "manifest-missing-label.csv"
CORRUPT_DATA_ROOT = "corrupt-tfrecords"  # span-1/ holds a shard with damaged bytes


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def _with_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR (size) rewritten and a valid CRC: the header lies."""
    header = bytearray(png[16:29])
    header[0:8] = struct.pack(">II", width, height)
    return png[:8] + _chunk(b"IHDR", bytes(header)) + png[33:]


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)


def write_corpus(output: str) -> str:
    """Write every item under `output`; returns the manifest's path."""
    os.makedirs(output, exist_ok=True)
    region = np.zeros((SIZE, SIZE), np.uint8)
    region[8:24, 8:24] = 255
    files = {
        "good-1.png": encode_png(_image(1)),
        "good-2.png": encode_png(_image(2)),
        "good-3.png": encode_png(_image(3)),
        "mask-good.png": encode_png(region),
        "truncated.png": encode_png(_image(4))[:300],
        "empty.png": b"",
        "text.png": b"name,value\nthis is a text file with a .png name\n",
        "lying-header.png": _with_size(encode_png(_image(5)), SIZE * 2, SIZE * 2),
        "one-pixel.png": encode_png(np.full((1, 1), 128, np.uint8)),
        "mask-one-pixel.png": encode_png(np.full((1, 1), 255, np.uint8)),
        "huge-header.png": _with_size(encode_png(_image(6)), 40000, 40000),
        "mask-zeros.png": encode_png(np.zeros((SIZE, SIZE), np.uint8)),
        "mask-ones.png": encode_png(np.full((SIZE, SIZE), 255, np.uint8)),
        "mask-0-1.png": encode_png((region > 0).astype(np.uint8)),
        "mask-rgba.png": encode_png(np.dstack([region] * 4)),
        "mask-16bit.png": encode_png((region > 0).astype(np.uint16) * 1000),
    }
    for name, data in files.items():
        with open(os.path.join(output, name), "wb") as handle:
            handle.write(data)
    with open(os.path.join(os.fsencode(output), NON_UTF8_NAME), "wb") as handle:
        handle.write(encode_png(_image(7)))

    lines = ["id,image,mask,label,site"]
    for case in CASES:
        lines.append(f"{case.id},{case.image},{case.mask},{case.label},corpus")
    with open(os.path.join(output, MANIFEST), "wb") as handle:
        handle.write(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8", "surrogateescape")
                     + b"\n")
    with open(os.path.join(output, MISSING_COLUMN_MANIFEST), "w", encoding="utf-8") as handle:
        handle.write("id,image,mask\ngood-1,good-1.png,mask-good.png\n")
    _write_corrupt_shard(os.path.join(output, CORRUPT_DATA_ROOT, "span-1"), files)
    return os.path.join(output, MANIFEST)


def _write_corrupt_shard(folder: str, files: dict[str, bytes]) -> None:
    """A gzipped TFRecord shard of good examples whose middle bytes are then overwritten."""
    import gzip

    from masktfx.records import make_example

    os.makedirs(folder, exist_ok=True)
    records = []
    for index in range(40):
        example = make_example([files[f"good-{index % 3 + 1}.png"]], [files["mask-good.png"]],
                               label=index % 2, example_id=f"r{index}", group=f"g{index % 8}")
        payload = example.SerializeToString()
        length = struct.pack("<Q", len(payload))
        records.append(length + struct.pack("<I", _masked_crc(length)) + payload
                       + struct.pack("<I", _masked_crc(payload)))
    data = bytearray(gzip.compress(b"".join(records)))
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    with open(os.path.join(folder, "data-00000-of-00001.tfrecord.gz"), "wb") as handle:
        handle.write(bytes(data))


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32-C."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c(data: bytes) -> int:
    table = _CRC32C_TABLE
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _make_crc32c_table() -> list[int]:
    table = []
    for index in range(256):
        crc = index
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _make_crc32c_table()


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "bad")
    print(write_corpus(target))
