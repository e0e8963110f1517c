"""Polygon masks: a GeoJSON file of parcels (one region each, in the image's CRS or another one)
and a `geometry` column (WKT, pixel coordinates), rasterized onto the image's grid."""

from __future__ import annotations

import json
import os

import numpy as np
from conftest import ingest_manifest, write_manifest, write_png

from masktfx import features
from masktfx.images import decode_mask_array

ORIGIN_X, ORIGIN_Y, PIXEL = 500000.0, 4000000.0, 10.0  # UTM 11N, 10 m pixels


def _scene(path: str) -> str:
    """A 3-band GeoTIFF of 40 x 40 pixels at ORIGIN, 10 m each."""
    import rasterio
    from rasterio.transform import from_origin

    pixels = np.random.default_rng(0).integers(0, 255, (3, 40, 40)).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=3, dtype="uint8",
                       crs="EPSG:32611", transform=from_origin(ORIGIN_X, ORIGIN_Y, PIXEL, PIXEL),
                       photometric="RGB") as scene:
        scene.write(pixels)
    return path


def _square(col0: int, row0: int, side: int) -> list[list[float]]:
    """The ring of pixels [row0, row0 + side) x [col0, col0 + side) in map coordinates."""
    x0, y0 = ORIGIN_X + col0 * PIXEL, ORIGIN_Y - row0 * PIXEL
    x1, y1 = x0 + side * PIXEL, y0 - side * PIXEL
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _expected(col0: int, row0: int, side: int) -> np.ndarray:
    mask = np.zeros((40, 40), bool)
    mask[row0:row0 + side, col0:col0 + side] = True
    return mask


def _feature(ring, **properties) -> dict:
    return {"type": "Feature", "properties": properties,
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def _ingest(tmp_path, manifest: str, *extra: str) -> tuple[dict, dict]:
    return ingest_manifest(manifest, str(tmp_path / "out"), *extra)


def _mask(feature) -> np.ndarray:
    return decode_mask_array(feature[features.MASKS_KEY].bytes_list.value[0], 10**6)


def test_a_geojson_of_parcels_gives_one_region_each_with_its_mask_and_properties(tmp_path):
    _scene(str(tmp_path / "scene.tif"))
    parcels = {"type": "FeatureCollection", "features": [
        _feature(_square(5, 5, 5), parcel_id="P-1", crop="wheat", label=1),
        _feature(_square(20, 10, 8), parcel_id="P-2", crop="maize", label=0),
        _feature(_square(30, 30, 6), parcel_id="P-3", crop="wheat", label=1),
        {"type": "Feature", "properties": {"parcel_id": "P-9"},  # a road: no region
         "geometry": {"type": "LineString", "coordinates": _square(0, 0, 3)[:2]}}]}
    (tmp_path / "parcels.geojson").write_text(json.dumps(parcels))
    # the same parcel in longitude and latitude, in a file that says so
    import rasterio.warp

    lon, lat = rasterio.warp.transform("EPSG:32611", "EPSG:4326",
                                       *zip(*_square(12, 25, 6)))
    wgs84 = {"type": "FeatureCollection",
             "crs": {"type": "name", "properties": {"name": "EPSG:4326"}},
             "features": [_feature([list(p) for p in zip(lon, lat)], parcel_id="P-4",
                                   crop="rye")]}
    (tmp_path / "wgs84.geojson").write_text(json.dumps(wgs84))
    outside = {"type": "FeatureCollection", "features": [
        _feature(_square(100, 100, 5), parcel_id="P-5")]}
    (tmp_path / "outside.geojson").write_text(json.dumps(outside))
    point = {"type": "Feature", "properties": {"parcel_id": "P-6"},
             "geometry": {"type": "Point", "coordinates": [ORIGIN_X, ORIGIN_Y]}}
    (tmp_path / "point.geojson").write_text(json.dumps(point))
    manifest = write_manifest(str(tmp_path / "m.csv"), ["image", "mask", "label", "site"], [
        ["scene.tif", "parcels.geojson", "", "valley"],  # labels from the parcels
        ["scene.tif", "wgs84.geojson", "1", "valley"],
        ["scene.tif", "outside.geojson", "1", "valley"],
        ["scene.tif", "point.geojson", "1", "valley"]])
    records, rejected = _ingest(tmp_path, manifest, "--id-field", "parcel_id")

    assert sorted(records) == ["P-1", "P-2", "P-3", "P-4"]
    for parcel, (col0, row0, side), label, crop in (
            ("P-1", (5, 5, 5), 1, "wheat"), ("P-2", (20, 10, 8), 0, "maize"),
            ("P-3", (30, 30, 6), 1, "wheat"), ("P-4", (12, 25, 6), 1, "rye")):
        feature = records[parcel]
        np.testing.assert_array_equal(_mask(feature), _expected(col0, row0, side), parcel)
        assert feature[features.LABEL_KEY].int64_list.value[0] == label
        assert feature["crop"].bytes_list.value[0].decode() == crop
        assert feature["site"].bytes_list.value[0].decode() == "valley"
    # the road is refused alone; the file's parcels go on
    assert "mask: polygon 4: geometry is a LineString; a region needs a Polygon" in rejected[1]
    assert "polygon lies outside the image" in rejected[3], rejected
    assert "geometry is a Point; a region needs a Polygon or MultiPolygon" in rejected[4]


def test_a_geometry_column_in_pixel_coordinates_and_its_bad_rows(tmp_path):
    write_png(str(tmp_path / "image.png"), np.zeros((16, 16), np.uint8))
    manifest = write_manifest(str(tmp_path / "m.csv"), ["id", "image", "geometry", "label"], [
        ["wkt", "image.png", "POLYGON ((2 3, 9 3, 9 8, 2 8, 2 3))", "1"],
        ["geojson", "image.png", json.dumps({"type": "MultiPolygon", "coordinates": [
            [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]],
            [[[12, 12], [16, 12], [16, 16], [12, 16], [12, 12]]]]}), "0"],
        ["outside", "image.png", "POLYGON ((30 30, 40 30, 40 40, 30 30))", "1"],
        ["broken", "image.png", "POLYGON ((2 3, 9 3", "1"]])
    records, rejected = _ingest(tmp_path, manifest)
    expected = np.zeros((16, 16), bool)
    expected[3:8, 2:9] = True
    np.testing.assert_array_equal(_mask(records["wkt"]), expected)
    two = np.zeros((16, 16), bool)
    two[0:4, 0:4] = two[12:16, 12:16] = True
    np.testing.assert_array_equal(_mask(records["geojson"]), two)
    assert sorted(records) == ["geojson", "wkt"]
    assert "polygon lies outside the image: its bounds (30, 30, 40, 40), the image's " \
        "(0, 0, 16, 16) (in pixels)" in rejected[3], rejected
    assert "column 'geometry': geometry is not valid WKT" in rejected[4], rejected
    assert os.path.exists(tmp_path / "out" / features.INGEST_REPORT)
