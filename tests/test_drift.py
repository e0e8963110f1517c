"""Region descriptors and the drift comparison, on regions written as ingest stores them. The
pipeline's DriftCheck and the Pusher's stored descriptors are run in test_span_window.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ingest_manifest, tiny_examples

from masktfx import cli, drift, features
from masktfx.demo_data import write_synthetic
from masktfx.images import encode_png, encode_raster
from masktfx.records import make_example, read_examples


def test_descriptors_measure_the_region_and_the_ring_around_it():
    image = np.full((40, 40), 50, np.uint8)
    image[10:20, 10:20] = 200  # the region: bright and flat
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 10:20] = 255
    found = drift.region_descriptors([encode_png(image)], [encode_png(mask)])
    assert found["mask_area"] == pytest.approx(100 / 1600)
    assert found["inside_mean"] == pytest.approx(200 / 255)
    assert found["around_mean"] == pytest.approx(50 / 255)
    assert found["contrast"] == pytest.approx(150 / 255)
    assert found["inside_std"] == pytest.approx(0.0)
    # the Laplacian is nonzero only on the region's 36 edge pixels: the 32 along a side have one
    # neighbour outside (contrast c), the 4 corners two (2c), so the mean square over the 100
    # pixels inside is (32 + 4 * 4) / 100 c^2
    edge = 48 / 100 * (150 / 255) ** 2
    assert found["texture_energy"] == pytest.approx(edge, rel=1e-9)
    assert not any(name.startswith("channel") for name in found)


def test_colour_bands_and_views_get_their_own_descriptors():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)
    colour[..., 0] = 0  # no red
    bands = rng.normal(100.0, 5.0, (16, 16, 4)).astype(np.float32)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    found = drift.region_descriptors([encode_png(colour), encode_raster(bands)],
                                     [encode_png(mask)])
    assert found["channel1_share"] == 0.0 and found["channel2_share"] > 0.5
    # a float raster is described in its own units
    assert found["inside_mean_view2"] == pytest.approx(bands[4:12, 4:12].mean(), rel=1e-5)
    assert {f"channel{band}_share_view2" for band in (1, 2, 3, 4)} <= set(found)


def _version_with_descriptors(tmp_path, manifest: str) -> str:
    """A serving dir whose version 1 holds the descriptors of `manifest`'s regions, as the
    Pusher stores them; returns the workdir."""
    ingest_manifest(manifest, str(tmp_path / "shards"))
    columns = drift.describe_records(example.SerializeToString() for example in read_examples(
        str(tmp_path / "shards" / features.SHARD_GLOB)))
    workdir = tmp_path / "work"
    version = workdir / "serving" / "masktfx" / "1"
    (version / "assets.extra").mkdir(parents=True)
    (version / drift.DESCRIPTORS_FILE).write_bytes(
        drift.descriptor_statistics(columns).SerializeToString())
    return str(workdir)


def test_drift_names_what_moved_and_refuses_unreadable_rows(tmp_path, capsys):
    workdir = _version_with_descriptors(
        tmp_path, write_synthetic(str(tmp_path / "train"), num_examples=60, size=16, seed=1))
    darker = write_synthetic(str(tmp_path / "darker"), num_examples=40, size=16, seed=2,
                             brightness_shift=-0.3)
    capsys.readouterr()
    assert cli.main(["drift", "--workdir", workdir, "--manifest", darker, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["reference_version"] == 1 and report["regions"] == 40
    assert "inside_mean" in report["moved"] and "mask_area" not in report["moved"]
    shifts = {entry["name"]: entry for entry in report["descriptors"]}
    assert shifts["inside_mean"]["current_mean"] < shifts["inside_mean"]["reference_mean"] - 0.2

    # a row whose image is gone is refused by row, the others still compared
    with open(darker, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    first_image = lines[1].split(",")[1]
    (tmp_path / "darker" / first_image).unlink()
    assert cli.main(["drift", "--workdir", workdir, "--manifest", darker]) == 1
    out = capsys.readouterr().out
    assert '"row": 1' in out and first_image in out and "39 regions" in out

    # no pushed version with descriptors: a clear error
    assert cli.main(["drift", "--workdir", str(tmp_path / "train"), "--manifest", darker]) == 2
    assert "holds the region descriptors" in capsys.readouterr().err


def test_records_that_cannot_be_described_are_left_out_with_their_id():
    image = np.full((16, 16), 90, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    good = make_example([encode_png(image)], [encode_png(mask)], 1, "good").SerializeToString()
    maskless = make_example([encode_png(image)], [], 0, "maskless").SerializeToString()
    broken = make_example([b"not an image"], [encode_png(mask)], 0, "broken").SerializeToString()
    undescribed: list[str] = []
    columns = drift.describe_records([good, maskless, broken], undescribed)
    assert columns["inside_mean"] == [pytest.approx(90 / 255)]
    assert undescribed[0] == "maskless: no images or no masks"
    assert undescribed[1].startswith("broken: ")


def _tiny_manifest(folder, examples, labelled: bool) -> str:
    """A manifest of tiny_examples' regions (every fourth region a group), written as files."""
    import csv

    folder.mkdir()
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "mask", "group"] + (["label"] if labelled else []))
        for index, (label, image, mask) in enumerate(examples):
            (folder / f"i{index}.png").write_bytes(image)
            (folder / f"m{index}.png").write_bytes(mask)
            writer.writerow([f"r{index}", f"i{index}.png", f"m{index}.png", f"g{index // 4}"]
                            + ([label] if labelled else []))
    return str(path)


def test_drift_estimates_the_served_versions_performance_without_labels(tmp_path, tiny_model,
                                                                         capsys):
    """`masktfx drift` on a manifest without a label column gives the estimate (CBPE on the
    version's calibration) with its interval beside the test split's AUC; with labels, the
    measured AUC too, equal to the one computed from the model's own answers."""
    import shutil

    import tensorflow as tf

    from masktfx import performance

    model_dir, _ = tiny_model
    examples = tiny_examples(np.random.default_rng(21), 40)
    workdir = tmp_path / "work"
    version = workdir / "serving" / "masktfx" / "1"
    shutil.copytree(model_dir, version)
    records = [make_example([image], [mask], label, f"r{index}", f"g{index // 4}")
               .SerializeToString() for index, (label, image, mask) in enumerate(examples)]
    (version / drift.DESCRIPTORS_FILE).write_bytes(
        drift.descriptor_statistics(drift.describe_records(records)).SerializeToString())
    (version / drift.TEST_METRICS_FILE).write_text(json.dumps({"auc": 0.99}))

    unlabelled = _tiny_manifest(tmp_path / "new", examples, labelled=False)
    code = cli.main(["drift", "--workdir", str(workdir), "--manifest", unlabelled, "--json"])
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    # what the estimate must be: CBPE on the model's probabilities, calibrated as it stored
    serve = tf.saved_model.load(model_dir).signatures[features.SERVING_SIGNATURE]
    answers = serve(examples=tf.constant(records))
    scores = answers[features.PROBABILITY_OUTPUT].numpy()
    with open(version / features.RELIABILITY_FILE, encoding="utf-8") as handle:
        calibration = json.load(handle)["calibration"]
    chance = performance.calibrate(scores, calibration)
    assert estimate["auc"] == pytest.approx(performance.expected_auc(scores, chance), abs=1e-6)
    low, high = estimate["interval"]["auc"]
    assert low <= estimate["auc"] <= high and estimate["groups"] == 10
    assert estimate["test"] == {"auc": 0.99} and "measured" not in estimate
    assert estimate["in_distribution"] == pytest.approx(
        np.mean(answers[features.IN_DISTRIBUTION_OUTPUT].numpy()))
    assert code == (1 if estimate["worse"] else 0)

    labelled = _tiny_manifest(tmp_path / "labelled", examples, labelled=True)
    cli.main(["drift", "--workdir", str(workdir), "--manifest", labelled])
    out = capsys.readouterr().out
    measured = performance.auc(np.array([label for label, _, _ in examples]), scores)
    assert f"estimated AUC on this span {estimate['auc']:.3f}" in out
    assert "(test split: 0.990)" in out and f"measured AUC {measured:.3f}" in out

    # the command's own output, and none of TensorFlow's log lines (its import, its C++ runtime,
    # its Python deprecations), on the real terminal streams of a fresh process
    for argv in (["drift", "--help"], ["drift", "--workdir", str(workdir), "--manifest", labelled]):
        done = subprocess.run([sys.executable, "-m", "masktfx.cli", *argv], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode in (0, 1), done.stderr
        assert not TENSORFLOW_LOG_LINE.search(done.stdout + done.stderr), done.stderr
    assert f"measured AUC {measured:.3f}" in done.stdout


# TensorFlow's log lines: C++ (absl and TF's own format) and Python's `WARNING:tensorflow:`
TENSORFLOW_LOG_LINE = re.compile(r"^([EWIF]\d{4} |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [EWIF] |"
                                 r"WARNING:(tensorflow|absl):|WARNING: All log messages)", re.M)


def test_the_estimate_gate_stops_a_span_that_passes_every_other_check(tmp_path, tiny_model):
    """Descriptors equal to the reference's (nothing moved), and the estimate under
    min_estimated_auc: the DriftCheck stops with drift_action stop, warns with warn."""
    import shutil

    import tensorflow as tf

    model_dir, _ = tiny_model
    examples = tiny_examples(np.random.default_rng(22), 24)
    records = [make_example([image], [mask], label, f"r{index}", f"g{index // 4}")
               .SerializeToString() for index, (label, image, mask) in enumerate(examples)]
    split = tmp_path / "examples" / "Split-train"
    split.mkdir(parents=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(str(split / "data.gz"), options=options) as writer:
        for record in records:
            writer.write(record)
    base = tmp_path / "serving" / "masktfx"
    shutil.copytree(model_dir, base / "1")
    (base / "1" / drift.DESCRIPTORS_FILE).write_bytes(
        drift.descriptor_statistics(drift.describe_records(records)).SerializeToString())
    # the raw probabilities as the version's calibration (one a version may store): the tiny
    # model's are not extreme, so the estimate is under 1, which leaves room for a gate above it
    stored = base / "1" / features.RELIABILITY_FILE
    reliability = json.loads(stored.read_text())
    reliability["calibration"] = {"method": "identity", "slope": 1.0, "intercept": 0.0}
    stored.write_text(json.dumps(reliability))
    passed = drift.check_drift(str(tmp_path / "examples"), str(tmp_path / "out1"), str(base),
                               0.4, "stop", min_estimated_auc=0.0)
    assert passed["moved"] == [] and not passed["estimate"]["worse"]
    estimated = passed["estimate"]["auc"]
    assert estimated < 1.0
    gate = (estimated + 1.0) / 2.0
    with pytest.raises(drift.DataDriftError, match="min_estimated_auc"):
        drift.check_drift(str(tmp_path / "examples"), str(tmp_path / "out2"), str(base), 0.4,
                          "stop", min_estimated_auc=gate)
    warned = drift.check_drift(str(tmp_path / "examples"), str(tmp_path / "out3"), str(base),
                               0.4, "warn", min_estimated_auc=gate)
    assert warned["estimate"]["worse"] and "min_estimated_auc" in \
        warned["estimate"]["worse_reasons"][0]
