"""`masktfx ingest` on real files: round trip, layouts, spans and every kind of bad row."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import tifffile
from conftest import IN_PROCESS_BEAM, square_mask, write_manifest, write_png

from masktfx import cli, features
from masktfx.demo_data import write_synthetic
from masktfx.fork_server import LOG_ENV
from masktfx.images import decode_mask_array
from masktfx.ingest import IngestError, run_ingest, shard_chunks
from masktfx.manifest import ManifestError, read_manifest
from masktfx.records import read_examples


def _read_rejected(directory: str) -> dict[int, tuple[str, str]]:
    with open(os.path.join(directory, features.REJECTED_CSV), encoding="utf-8") as handle:
        return {int(r["row"]): (r["path"], r["reason"]) for r in csv.DictReader(handle)}


def _by_id(directory: str) -> dict[str, object]:
    examples = read_examples(os.path.join(directory, features.SHARD_GLOB))
    return {ex.features.feature[features.ID_KEY].bytes_list.value[0].decode(): ex
            for ex in examples}


def test_synthetic_round_trip_is_byte_identical(tmp_path):
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=24, views=2, size=32)
    result = run_ingest(manifest, str(tmp_path / "out"), beam_args=IN_PROCESS_BEAM)
    assert result.published and result.written == 24 and result.rejected == 0
    examples = _by_id(result.output_dir)
    with open(manifest, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(examples) == sorted(row["id"] for row in rows)
    base = os.path.dirname(manifest)
    for row in rows:
        feature = examples[row["id"]].features.feature
        stored = list(feature[features.IMAGES_KEY].bytes_list.value)
        for view, column in enumerate(["image_t1", "image_t2"]):
            with open(os.path.join(base, row[column]), "rb") as handle:
                assert stored[view] == handle.read()
        assert feature[features.LABEL_KEY].int64_list.value[0] == int(row["label"])
        assert feature[features.GROUP_KEY].bytes_list.value[0].decode() == row["group"]
        assert feature["site"].bytes_list.value[0].decode() == row["site"]
        (mask,) = feature[features.MASKS_KEY].bytes_list.value
        with open(os.path.join(base, row["mask"]), "rb") as handle:
            original = decode_mask_array(handle.read(), 10**6)
        np.testing.assert_array_equal(decode_mask_array(mask, 10**6), original)
    report = json.loads(open(os.path.join(result.output_dir, features.INGEST_REPORT)).read())
    assert report["examples_written"] == 24
    assert report["num_views"] == 2 and report["views"] == ["t1", "t2"]
    assert report["label_balance"]["0"] + report["label_balance"]["1"] == 24
    assert report["image_sizes"] == {"32x32": 24}
    assert 0 < report["mask_coverage"]["min"] <= report["mask_coverage"]["max"] < 1
    assert sum(report["mask_coverage"]["histogram"]["counts"]) == 24


def test_per_view_masks_and_16_bit_tiff(tmp_path, rng):
    for index in range(3):
        t1 = (rng.integers(0, 65535, (20, 20))).astype(np.uint16)
        tifffile.imwrite(tmp_path / f"t1_{index}.tif", t1)
        write_png(str(tmp_path / f"t2_{index}.png"), rng.integers(0, 255, (20, 20), np.uint8))
        write_png(str(tmp_path / f"m1_{index}.png"), square_mask(20, 2, 8))
        write_png(str(tmp_path / f"m2_{index}.png"), square_mask(20, 5, 15))
    manifest = write_manifest(
        str(tmp_path / "manifest.csv"),
        ["image_t1", "image_t2", "mask_t1", "mask_t2", "label", "scanner"],
        [[f"t1_{i}.tif", f"t2_{i}.png", f"m1_{i}.png", f"m2_{i}.png", ["yes", "no", "present"][i],
          "A"] for i in range(3)])
    result = run_ingest(manifest, str(tmp_path / "out"), beam_args=IN_PROCESS_BEAM)
    assert result.written == 3
    examples = read_examples(os.path.join(result.output_dir, features.SHARD_GLOB))
    import tensorflow as tf

    labels = sorted(ex.features.feature[features.LABEL_KEY].int64_list.value[0]
                    for ex in examples)
    assert labels == [0, 1, 1]
    for example in examples:
        feature = example.features.feature
        assert len(feature[features.MASKS_KEY].bytes_list.value) == 2
        tiff_as_png = feature[features.IMAGES_KEY].bytes_list.value[0]
        decoded = tf.io.decode_png(tiff_as_png, dtype=tf.uint16).numpy()[:, :, 0]
        originals = [tifffile.imread(tmp_path / f"t1_{i}.tif") for i in range(3)]
        assert any(np.array_equal(decoded, original) for original in originals)
        # the id was derived from the row, and group defaults to it
        group = feature[features.GROUP_KEY].bytes_list.value
        assert group == feature[features.ID_KEY].bytes_list.value


def test_each_bad_row_is_rejected_with_its_reason_and_good_rows_are_kept(tmp_path, rng):
    size = 16
    image = rng.integers(0, 255, (size, size), np.uint8)
    write_png(str(tmp_path / "good.png"), image)
    write_png(str(tmp_path / "mask.png"), square_mask(size, 4, 10))
    write_png(str(tmp_path / "mask2.png"), square_mask(size, 8, 14))
    write_png(str(tmp_path / "small_mask.png"), square_mask(8, 2, 5))
    write_png(str(tmp_path / "empty_mask.png"), np.zeros((size, size), np.uint8))
    write_png(str(tmp_path / "rgb_mask.png"), np.zeros((size, size, 3), np.uint8) + 255)
    write_png(str(tmp_path / "other_size.png"), rng.integers(0, 255, (12, 12), np.uint8))
    (tmp_path / "text.png").write_text("this is not an image")
    rows = [
        ["good.png", "good.png", "mask.png", "1"],  # 1 good
        ["missing.png", "good.png", "mask.png", "0"],  # 2 missing file
        ["text.png", "good.png", "mask.png", "0"],  # 3 undecodable
        ["good.png", "good.png", "small_mask.png", "1"],  # 4 mask size mismatch
        ["good.png", "good.png", "empty_mask.png", "0"],  # 5 empty mask
        ["good.png", "good.png", "rgb_mask.png", "0"],  # 6 multi-channel mask
        ["good.png", "good.png", "mask.png", "2"],  # 7 label not binary
        ["good.png", "other_size.png", "mask.png", "1"],  # 8 views differ
        ["good.png", "", "mask.png", "1"],  # 9 missing view
        ["good.png", "good.png", "mask2.png", "absent"],  # 10 good: another region
        ["good.png", "good.png", "mask.png", "0"],  # 11 the same region as row 1
    ]
    manifest = write_manifest(str(tmp_path / "manifest.csv"),
                              ["image_a", "image_b", "mask", "label"], rows)
    result = run_ingest(manifest, str(tmp_path / "out"), beam_args=IN_PROCESS_BEAM)
    assert result.published and result.written == 2 and result.rejected == 9
    rejected = _read_rejected(result.output_dir)
    expectations = {
        2: ("missing.png", "file not found"),
        3: ("text.png", "not a PNG, JPEG or TIFF"),
        4: ("small_mask.png", "mask is 8x8 but the image is 16x16"),
        5: ("empty_mask.png", "mask is empty"),
        6: ("rgb_mask.png", "single-channel"),
        7: ("", "label '2' is not binary"),
        8: ("other_size.png", "co-registered"),
        9: ("", "'image_b' is empty"),
        11: ("", "duplicate id"),
    }
    assert sorted(rejected) == sorted(expectations)
    for row, (path_end, reason) in expectations.items():
        path, message = rejected[row]
        assert path.endswith(path_end), (row, path)
        assert reason in message, (row, message)
    assert len(_by_id(result.output_dir)) == 2

    # --resize-masks accepts the smaller mask, resized with nearest neighbour
    resized = run_ingest(manifest, str(tmp_path / "resized"), beam_args=IN_PROCESS_BEAM,
                         resize_masks=True)
    assert 4 not in _read_rejected(resized.output_dir) and resized.written == 3


def test_manifest_level_errors_write_nothing(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        run_ingest(str(tmp_path / "nope.csv"), str(tmp_path / "out"))
    manifest = write_manifest(str(tmp_path / "m.csv"), ["image", "mask"], [["a.png", "b.png"]])
    with pytest.raises(ManifestError, match="missing required column 'label'"):
        run_ingest(manifest, str(tmp_path / "out"))
    manifest = write_manifest(str(tmp_path / "m2.csv"), ["image", "label"], [["a.png", "1"]])
    with pytest.raises(ManifestError, match="missing required column 'mask'"):
        read_manifest(manifest)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ingest")] == []


def test_spans_layout_refuses_to_overwrite_and_cli_exit_codes(tmp_path, capsys):
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=6, size=16)
    out = str(tmp_path / "out")
    args = ["ingest", manifest, "--output", out, "--no-progress", "--beam-args",
            *IN_PROCESS_BEAM]
    assert cli.main(["ingest", manifest, "--output", out, "--span", "1", "--no-progress",
                     "--beam-args", *IN_PROCESS_BEAM]) == 0
    assert cli.main(["ingest", manifest, "--output", out, "--span", "2", "--no-progress",
                     "--beam-args", *IN_PROCESS_BEAM]) == 0
    for span in (1, 2):
        shards = list((tmp_path / "out" / f"span-{span}").glob(features.SHARD_GLOB))
        assert shards, span
    with pytest.raises(IngestError, match="already holds TFRecord shards"):
        run_ingest(manifest, os.path.join(out), span=1, beam_args=IN_PROCESS_BEAM)
    assert cli.main(["ingest", manifest, "--output", out, "--span", "1", "--no-progress",
                     "--overwrite", "--beam-args", *IN_PROCESS_BEAM]) == 0

    # a manifest whose every row is bad: exit 1, no shards, rejected.csv says why
    bad = write_manifest(str(tmp_path / "data" / "bad.csv"), ["image", "mask", "label"],
                         [["nope.png", "nope.png", "1"]])
    bad_out = str(tmp_path / "bad_out")
    assert cli.main(["ingest", bad, "--output", bad_out, "--no-progress", "--beam-args",
                     *IN_PROCESS_BEAM]) == 1
    assert not list((tmp_path / "bad_out").glob(features.SHARD_GLOB))
    assert "file not found" in _read_rejected(bad_out)[1][1]
    # --strict with one bad row among good ones: exit 1 and nothing published
    mixed = write_manifest(str(tmp_path / "data" / "mixed.csv"), ["image", "mask", "label"],
                           [["images/ex000000_v1.png", "masks/ex000000.png", "1"],
                            ["nope.png", "masks/ex000000.png", "1"]])
    assert cli.main(["ingest", mixed, "--output", str(tmp_path / "strict"), "--strict",
                     "--no-progress", "--beam-args", *IN_PROCESS_BEAM]) == 1
    assert not list((tmp_path / "strict").glob(features.SHARD_GLOB))
    # a missing manifest: exit 2 with the file named
    assert cli.main(args[:1] + [str(tmp_path / "missing.csv")] + args[2:]) == 2
    assert "missing.csv: manifest not found" in capsys.readouterr().err


def test_multiprocessing_runner_through_the_cli(tmp_path, monkeypatch):
    """The default runner (DirectRunner, multi-processing) as a user runs it: its workers come
    from the fork server, unless told otherwise, and the records are the same either way."""
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=40, size=16)
    log = tmp_path / "forks.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    assert cli.main(["ingest", manifest, "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    assert len(_by_id(str(tmp_path / "out"))) == 40
    assert "forked Beam worker" in log.read_text()  # one line per worker
    log.unlink()
    assert cli.main(["ingest", manifest, "--output", str(tmp_path / "cold"), "--no-progress",
                     "--no-fork-server"]) == 0
    assert not log.exists()
    assert _by_id(str(tmp_path / "cold")) == _by_id(str(tmp_path / "out"))


def test_progress_bar_counts_every_row(tmp_path, capsys):
    manifest = write_synthetic(str(tmp_path / "data"), num_examples=20, size=16)
    result = run_ingest(manifest, str(tmp_path / "out"), beam_args=IN_PROCESS_BEAM,
                        progress=True)
    assert result.written == 20
    err = capsys.readouterr().err
    assert "ingest" in err and "20/20" in err


def test_a_bar_that_counts_nothing_says_once_why_it_may_be_waiting(tmp_path):
    """On a runner whose workers cannot start, Beam waits minutes without a word: the bar says
    what it waits for; a bar that counts says nothing of the kind."""
    import io
    import threading

    from masktfx.progress import show_progress, stall_notice

    notice = stall_notice("PortableRunner", 0.3)
    for counted in (False, True):
        folder = tmp_path / f"counted-{counted}"
        folder.mkdir()
        if counted:
            (folder / "worker").write_text("3")
        stream, stop = io.StringIO(), threading.Event()
        watcher = threading.Thread(target=show_progress, args=(
            str(folder), 10, stop, stream, "ingest", "row", notice, 0.3))
        watcher.start()
        threading.Event().wait(1.5)
        stop.set()
        watcher.join()
        said = stream.getvalue().count("waiting for its workers to start")
        assert said == (0 if counted else 1), stream.getvalue()


def test_jpeg_rgb_and_rgba_png_are_kept_as_read(tmp_path, rng):
    from PIL import Image

    rgb = rng.integers(0, 255, (24, 24, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=90)
    write_png(str(tmp_path / "rgba.png"), rng.integers(0, 255, (24, 24, 4), np.uint8))
    write_png(str(tmp_path / "mask.png"), square_mask(24, 4, 16))
    manifest = write_manifest(str(tmp_path / "manifest.csv"), ["id", "image", "mask", "label"],
                              [["jpg", "photo.jpg", "mask.png", "1"],
                               ["png", "rgba.png", "mask.png", "0"]])
    result = run_ingest(manifest, str(tmp_path / "out"), beam_args=IN_PROCESS_BEAM)
    assert result.written == 2
    examples = _by_id(result.output_dir)
    for example_id, name in (("jpg", "photo.jpg"), ("png", "rgba.png")):
        stored = examples[example_id].features.feature[features.IMAGES_KEY].bytes_list.value[0]
        assert stored == (tmp_path / name).read_bytes()
    assert result.report["channels"] == {"3": 1, "4": 1}


def test_paths_leaving_the_manifest_folder_and_huge_headers_are_refused(tmp_path, rng):
    import struct
    import zlib

    data = tmp_path / "data"
    write_png(str(data / "good.png"), rng.integers(0, 255, (16, 16), np.uint8))
    write_png(str(data / "mask.png"), square_mask(16, 4, 10))
    write_png(str(tmp_path / "outside.png"), rng.integers(0, 255, (16, 16), np.uint8))
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    ihdr = (struct.pack(">I", len(header)) + b"IHDR" + header
            + struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF))
    (data / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr)  # header only: never decoded
    manifest = write_manifest(str(data / "manifest.csv"), ["id", "image", "mask", "label"], [
        ["ok", "good.png", "mask.png", "1"],
        ["up", "../../etc/passwd", "mask.png", "1"],
        ["abs", str(tmp_path / "outside.png"), "mask.png", "1"],
        ["huge", "huge.png", "mask.png", "0"],
    ])
    result = run_ingest(manifest, str(tmp_path / "out"), beam_args=IN_PROCESS_BEAM,
                        max_pixels=10**6)
    assert result.written == 1
    rejected = _read_rejected(result.output_dir)
    assert "outside the manifest's folder" in rejected[2][1]
    assert "outside the manifest's folder" in rejected[3][1]
    assert "40000x40000" in rejected[4][1] and "refused before decoding" in rejected[4][1]
    allowed = run_ingest(manifest, str(tmp_path / "out2"), beam_args=IN_PROCESS_BEAM,
                         allow_outside_paths=True, max_pixels=10**6)
    assert allowed.written == 2  # the absolute path is read; /etc/passwd is not an image


def test_shards_do_not_keep_the_manifest_order(tmp_path):
    # ImportExampleGen writes records in the order it reads them, so a sorted manifest must not
    # reach the Trainer sorted; the order is seeded, so a re-ingest writes the same shards.
    rows = read_manifest(write_synthetic(str(tmp_path / "data"), num_examples=64, size=16)).rows
    chunks = shard_chunks(rows, 16, seed=3)
    shuffled = [row for _, _, chunk in chunks for row in chunk]
    assert [count for _, count, _ in chunks] == [4] * 4
    assert sorted(r.row for r in shuffled) == [r.row for r in rows]  # every row, once
    assert [r.row for r in shuffled] != [r.row for r in rows]
    assert shuffled == [row for _, _, chunk in shard_chunks(rows, 16, seed=3) for row in chunk]
    assert shuffled != [row for _, _, chunk in shard_chunks(rows, 16, seed=4) for row in chunk]
