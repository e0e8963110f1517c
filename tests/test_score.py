"""`masktfx score`: regions of a manifest or of ingested TFRecords scored by a pushed version
through Beam's RunInference, written as CSV, Parquet, GeoJSON or TFRecords, bad rows aside."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import IN_PROCESS_BEAM, ingest_manifest, square_mask, write_manifest, write_png

from masktfx import cli, features
from masktfx.model_config import CONFIG_FILE, ServedModel, write_config
from masktfx.records import make_example


@pytest.fixture
def serving_dir(tmp_path, tiny_model):
    """WORKDIR/serving as the Pusher leaves it: versions 1 and 2 of `masktfx` (the same model),
    version 1 labelled stable."""
    base = tmp_path / "serving" / "masktfx"
    for version in (1, 2):
        shutil.copytree(tiny_model[0], base / str(version))
    write_config(str(tmp_path / "serving" / CONFIG_FILE), {"masktfx": ServedModel(
        "masktfx", str(base), (1, 2), {"stable": 1})})
    return str(tmp_path / "serving")


def _survey(folder, count: int = 6, labelled: bool = False
            ) -> tuple[str, dict[str, tuple[bytes, bytes]]]:
    """A manifest of `count` good regions with a metadata column (labelled, or with an empty
    label column), then three bad rows: a missing image, an image that is not one, a row with a
    field too many."""
    rng = np.random.default_rng(3)
    rows, good = [], {}
    for index in range(count):
        image = rng.integers(0, 60, (20, 20)).astype(np.uint8)
        if index % 2:
            image[8:12, 8:12] = 250
        write_png(str(folder / f"r{index}.png"), image)
        rows.append([f"r{index}", f"r{index}.png", "mask.png", f"parcel-{index}",
                     index % 2 if labelled else "", "north"])
    write_png(str(folder / "mask.png"), square_mask(20, 5, 15).astype(np.uint8) * 255)
    (folder / "not_an_image.png").write_bytes(b"hello")
    rows += [["gone", "missing.png", "mask.png", "p", "", "north"],
             ["liar", "not_an_image.png", "mask.png", "p", "", "north"],
             ["extra", "r0.png", "mask.png", "p", "", "north", "field"]]
    manifest = write_manifest(str(folder / "survey.csv"),
                              ["id", "image", "mask", "group", "label", "site"], rows)
    for index in range(count):
        good[f"r{index}"] = ((folder / f"r{index}.png").read_bytes(),
                             (folder / "mask.png").read_bytes())
    return manifest, good


def _served_probabilities(version_dir: str, regions: dict[str, tuple[bytes, bytes]]
                          ) -> dict[str, float]:
    """The version's serving_default in process, on the same bytes."""
    loaded = tf.saved_model.load(version_dir)
    ids = sorted(regions)
    found = loaded.signatures[features.SERVING_SIGNATURE](examples=tf.constant(
        [make_example([regions[i][0]], [regions[i][1]]).SerializeToString() for i in ids]))
    return dict(zip(ids, found[features.PROBABILITY_OUTPUT].numpy().tolist()))


def _score(*args: str) -> int:
    return cli.main(["score", *args, "--no-progress", "--beam-args", *IN_PROCESS_BEAM])


def test_a_manifest_is_scored_except_its_bad_rows_with_the_served_probabilities(
        tmp_path, serving_dir):
    manifest, good = _survey(tmp_path)
    out = tmp_path / "scores"
    assert _score("--model", serving_dir, "--data", manifest, "--output", str(out)) == 0

    shards = sorted(out.glob("scores-*.csv"))
    assert shards
    rows = [row for shard in shards for row in csv.DictReader(shard.open(encoding="utf-8"))]
    assert list(rows[0]) == ["id", "group", "site", "probability", "label", "in_distribution",
                             "ood_score", "version"]
    assert sorted(row["id"] for row in rows) == sorted(good)
    expected = _served_probabilities(os.path.join(serving_dir, "masktfx", "2"), good)
    threshold = json.loads((out.parent / "serving" / "masktfx" / "2" /
                            features.OPERATING_POINT_FILE).read_text())["threshold"]
    for row in rows:
        assert abs(float(row["probability"]) - expected[row["id"]]) <= 1e-6
        assert int(row["label"]) == int(float(row["probability"]) >= threshold)
        assert row["version"] == "2" and row["site"] == "north"
        assert row["group"] == f"parcel-{row['id'][1:]}"
    with open(out / features.REJECTED_CSV, encoding="utf-8") as handle:
        rejected = {row["row"]: row for row in csv.DictReader(handle)}
    assert sorted(rejected) == ["7", "8", "9"]
    assert rejected["7"]["path"].endswith("missing.png") and "not found" in \
        rejected["7"]["reason"]
    assert rejected["8"]["path"].endswith("not_an_image.png") and rejected["8"]["id"] == "liar"
    assert "7 fields but the header has 6" in rejected["9"]["reason"]
    summary = json.loads((out / "score_summary.json").read_text())
    assert summary["scored"] == 6 and summary["rejected"] == 3 and summary["version"] == 2
    assert sum(summary["label_counts"].values()) == 6

    # the stable label names version 1; a re-run replaces the output whole
    (out / "stray.txt").write_text("from an earlier job")
    assert _score("--model", os.path.join(serving_dir, "masktfx"), "--label", "stable",
                  "--data", manifest, "--output", str(out), "--format", "tfrecord") == 0
    assert not (out / "stray.txt").exists() and not list(out.glob("scores-*.csv"))
    records = [tf.train.Example.FromString(record.numpy()) for record in tf.data.TFRecordDataset(
        [str(path) for path in out.glob("scores-*.tfrecord.gz")], compression_type="GZIP")]
    assert len(records) == 6
    for record in records:
        feature = record.features.feature
        assert feature["version"].int64_list.value == [1]
        region = feature["id"].bytes_list.value[0].decode()
        assert abs(feature["probability"].float_list.value[0] - expected[region]) <= 1e-6
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".score-")]


def test_ingested_records_are_scored_as_they_are_into_parquet(tmp_path, serving_dir):
    import pyarrow.parquet as pq

    manifest, good = _survey(tmp_path, labelled=True)
    ingest_manifest(manifest, str(tmp_path / "ingested"))
    out = tmp_path / "scores"
    assert _score("--model", serving_dir, "--version", "1", "--data",
                  str(tmp_path / "ingested"), "--output", str(out), "--format",
                  "parquet") == 0
    table = pq.read_table(sorted(out.glob("scores-*.parquet"))).to_pandas()
    assert sorted(table["id"]) == sorted(good) and set(table["site"]) == {"north"}
    assert set(table["version"]) == {1}
    expected = _served_probabilities(os.path.join(serving_dir, "masktfx", "1"), good)
    np.testing.assert_allclose(table["probability"], [expected[i] for i in table["id"]],
                               atol=1e-6)


def test_polygon_regions_come_back_as_geojson_features_in_their_crs(tmp_path, serving_dir):
    import rasterio
    from rasterio.transform import from_origin

    origin_x, origin_y, pixel = 500000.0, 4000000.0, 10.0
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", width=40, height=40,
                       count=1, dtype="uint8", crs="EPSG:32611",
                       transform=from_origin(origin_x, origin_y, pixel, pixel)) as scene:
        scene.write(np.random.default_rng(0).integers(0, 255, (1, 40, 40)).astype(np.uint8))

    def square(col0: int, row0: int, side: int) -> list[list[float]]:
        x0, y0 = origin_x + col0 * pixel, origin_y - row0 * pixel
        x1, y1 = x0 + side * pixel, y0 - side * pixel
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]

    def parcel(ring, **properties) -> dict:
        return {"type": "Feature", "properties": properties,
                "geometry": {"type": "Polygon", "coordinates": [ring]}}

    utm = {"type": "FeatureCollection",
           "crs": {"type": "name", "properties": {"name": "EPSG:32611"}},
           "features": [parcel(square(5, 5, 8), parcel_id="P-1", crop="wheat"),
                        parcel(square(20, 10, 8), parcel_id="P-2", crop="maize")]}
    (tmp_path / "utm.geojson").write_text(json.dumps(utm))
    import rasterio.warp

    lon, lat = rasterio.warp.transform("EPSG:32611", "EPSG:4326", *zip(*square(12, 25, 8)))
    wgs84_ring = [list(point) for point in zip(lon, lat)]
    wgs84 = {"type": "FeatureCollection",
             "crs": {"type": "name", "properties": {"name": "EPSG:4326"}},
             "features": [parcel(wgs84_ring, parcel_id="P-3", crop="rye")]}
    (tmp_path / "wgs84.geojson").write_text(json.dumps(wgs84))
    manifest = write_manifest(str(tmp_path / "parcels.csv"), ["image", "mask"], [
        ["scene.tif", "utm.geojson"], ["scene.tif", "wgs84.geojson"]])
    out = tmp_path / "parcels"
    assert _score("--model", serving_dir, "--data", manifest, "--output", str(out),
                  "--format", "geojson", "--id-field", "parcel_id") == 0

    summary = json.loads((out / "score_summary.json").read_text())
    by_crs = {crs: json.loads((out / name).read_text())
              for name, crs in summary["geojson_files"].items()}
    assert sorted(by_crs) == ["EPSG:32611", "EPSG:4326"]
    for crs, collection in by_crs.items():
        assert collection["type"] == "FeatureCollection"
        assert collection["crs"]["properties"]["name"] == crs
    utm_features = {f["id"]: f for f in by_crs["EPSG:32611"]["features"]}
    assert sorted(utm_features) == ["P-1", "P-2"]
    assert utm_features["P-1"]["geometry"]["coordinates"] == [square(5, 5, 8)]
    properties = utm_features["P-2"]["properties"]
    assert properties["crop"] == "maize" and properties["version"] == 2
    assert 0.0 <= properties["probability"] <= 1.0 and properties["label"] in (0, 1)
    (rye,) = by_crs["EPSG:4326"]["features"]
    np.testing.assert_allclose(rye["geometry"]["coordinates"][0], wgs84_ring, atol=1e-12)
    assert rye["properties"]["crop"] == "rye"


def test_a_killed_job_leaves_no_output_and_the_next_job_cleans_up(tmp_path, serving_dir):
    manifest, _ = _survey(tmp_path, count=40)
    out = tmp_path / "scores"
    command = [sys.executable, "-m", "masktfx.cli", "score", "--model", serving_dir, "--data",
               manifest, "--output", str(out), "--no-progress", "--beam-args",
               *IN_PROCESS_BEAM]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not [n for n in os.listdir(tmp_path) if n.startswith(".score-")]:
        assert job.poll() is None and time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    time.sleep(1.0)  # the job is under way (Beam imported, the model loading)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not out.exists()
    assert _score("--model", serving_dir, "--data", manifest, "--output", str(out)) == 0
    assert json.loads((out / "score_summary.json").read_text())["scored"] == 40
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".score-")]


def test_the_model_is_named_clearly_when_it_cannot_be_found(tmp_path, serving_dir, capsys):
    manifest, _ = _survey(tmp_path)
    for model, flags, message in (
            (str(tmp_path / "nowhere"), [], "no such model folder"),
            (serving_dir, ["--version", "7"], "no version 7 (versions: 1, 2)"),
            (serving_dir, ["--label", "canary"], "has no version labelled 'canary'"),
            (str(tmp_path), [], "holds no numbered SavedModel version")):
        assert _score("--model", model, *flags, "--data", manifest, "--output",
                      str(tmp_path / "out")) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_regions_the_model_refuses_are_rejected_with_its_reason(tmp_path, serving_dir):
    from masktfx.records import write_tfrecord

    _, good = _survey(tmp_path)
    # records as they are: one whose image is no image, one of two views for a model of one
    records = [make_example([image], [mask], example_id=region)
               for region, (image, mask) in good.items()]
    image, mask = good["r0"]
    records += [make_example([b"not an image"], [mask], example_id="garbage"),
                make_example([image, image], [mask], example_id="two_views")]
    with open(tmp_path / "regions.tfrecord", "wb") as handle:
        for record in records:
            write_tfrecord(handle, record.SerializeToString())
    out = tmp_path / "scores"
    assert _score("--model", serving_dir, "--data", str(tmp_path / "regions.tfrecord"),
                  "--output", str(out)) == 0
    with open(out / features.REJECTED_CSV, encoding="utf-8") as handle:
        rejected = {row["id"]: row["reason"] for row in csv.DictReader(handle)}
    # TensorFlow's own words for the garbage (2.21 lists more formats than 2.16)
    garbage = re.fullmatch(r"the model refused it: Unknown image file format\. One of JPEG, "
                           r"([A-Za-z ]+, )*PNG, GIF, BMP(, WebP)? required\.",
                           rejected.pop("garbage", ""))
    assert garbage, rejected
    assert rejected == {
        "two_views": "2 image(s) and 1 mask(s) per region; the model takes 1 image(s) and a "
                     "shared mask"}
    summary = json.loads((out / "score_summary.json").read_text())
    assert summary["scored"] == 6 and summary["rejected"] == 2


def test_a_manifest_of_other_views_is_refused_before_anything_is_written(
        tmp_path, serving_dir, capsys):
    write_png(str(tmp_path / "a.png"), np.zeros((20, 20), np.uint8))
    write_png(str(tmp_path / "mask.png"), square_mask(20, 5, 15).astype(np.uint8) * 255)
    manifest = write_manifest(str(tmp_path / "two_views.csv"),
                              ["id", "image_early", "image_late", "mask"],
                              [[f"v{i}", "a.png", "a.png", "mask.png"] for i in range(3)])
    assert _score("--model", serving_dir, "--data", manifest, "--output",
                  str(tmp_path / "out")) == 2
    assert "two_views.csv: 2 image(s) and 1 mask(s) per region; the model takes 1 image(s) " \
        "and a shared mask (masktfx version 2)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ingest_and_score_show_their_progress(tmp_path, serving_dir):
    import io

    from masktfx.ingest import run_ingest
    from masktfx.scoring.job import score

    manifest, good = _survey(tmp_path, labelled=True)
    shown = io.StringIO()
    run_ingest(manifest, str(tmp_path / "ingested"), beam_args=IN_PROCESS_BEAM, progress=True,
               progress_stream=shown, fork_server=False)
    # the rows the manifest's own check let through: the good ones and the two bad files
    # (unlabeled, refused when read); the row with a field too many is refused there
    assert "ingest: 100%" in shown.getvalue() and f"{len(good) + 2}/{len(good) + 2}" in \
        shown.getvalue(), shown.getvalue()
    shown = io.StringIO()
    score(manifest, serving_dir, str(tmp_path / "scores"), beam_args=IN_PROCESS_BEAM,
          progress=True, progress_stream=shown)
    # every region the manifest's check let through, scored or refused, counted; the rate
    assert "score: 100%" in shown.getvalue() and "8/8" in shown.getvalue(), shown.getvalue()
    assert "region/s" in shown.getvalue(), shown.getvalue()
