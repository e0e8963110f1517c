"""Rasters of any number of bands (GeoTIFFs written with rasterio): every band kept through
ingest (pixel-exact on the stored record), Transform (`bands` picks and orders them) and both
serving signatures, in process and through `masktfx serve`."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tensorflow as tf
from conftest import (
    b64,
    ingest_manifest,
    run_transform,
    serving,
    square_mask,
    write_manifest,
    write_png,
)

from masktfx import features
from masktfx.config import PipelineConfig
from masktfx.images import decode_raster, encode_png, read_header, sniff_format
from masktfx.records import make_example


def write_geotiff(path: str, bands: np.ndarray) -> str:
    """A GeoTIFF of [bands, H, W] with a CRS and a geotransform, as GDAL writes one."""
    import rasterio
    from rasterio.transform import from_origin

    count, height, width = bands.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=bands.dtype.name, crs="EPSG:32611",
                       transform=from_origin(500000.0, 4000000.0, 10.0, 10.0)) as raster:
        raster.write(bands)
    return path


def _bands(rng: np.random.Generator, count: int, dtype: str, label: int = 0) -> np.ndarray:
    if dtype == "float32":
        array = rng.normal(0.2, 0.1, (count, 20, 20)).astype(np.float32)
    else:
        array = rng.integers(0, 4000, (count, 20, 20)).astype(dtype)
    if label:  # the feature is in the last band only (near-infrared, say)
        array[-1, 8:12, 8:12] = array.max()
    return array


def _ingest(tmp_path, arrays: list[np.ndarray], labels: list[int]) -> list:
    write_png(str(tmp_path / "mask.png"), square_mask(20, 5, 15))
    rows = []
    for index, (array, label) in enumerate(zip(arrays, labels)):
        write_geotiff(str(tmp_path / f"r{index}.tif"), array)
        rows.append([f"r{index}", f"r{index}.tif", "mask.png", label, f"g{index % 3}"])
    manifest = write_manifest(str(tmp_path / "m.csv"), ["id", "image", "mask", "label", "group"],
                              rows)
    by_id, _ = ingest_manifest(manifest, str(tmp_path / "out"))
    return [by_id[f"r{index}"] for index in range(len(arrays))]


def test_4_and_13_band_geotiffs_are_stored_with_every_band_exactly(tmp_path):
    rng = np.random.default_rng(3)
    arrays = [_bands(rng, 4, "uint16"), _bands(rng, 13, "uint16"), _bands(rng, 13, "float32"),
              _bands(rng, 2, "int16")]
    records = _ingest(tmp_path, arrays, [0, 1, 0, 1])
    for array, record in zip(arrays, records):
        (stored,) = record[features.IMAGES_KEY].bytes_list.value
        assert sniff_format(stored) == "raster"
        back = decode_raster(stored)
        assert back.dtype == array.dtype and back.shape == (20, 20, array.shape[0])
        np.testing.assert_array_equal(back, np.moveaxis(array, 0, -1))  # pixel-exact
        header = read_header(stored, 10**6)
        assert (header.width, header.height, header.samples) == (20, 20, array.shape[0])


def test_transform_keeps_every_band_and_bands_picks_and_orders_them(tmp_path):
    array = _bands(np.random.default_rng(4), 13, "uint16", label=1)
    (feature,) = _ingest(tmp_path, [array], [1])
    instance = {features.IMAGES_KEY: list(feature[features.IMAGES_KEY].bytes_list.value),
                features.MASKS_KEY: list(feature[features.MASKS_KEY].bytes_list.value),
                features.LABEL_KEY: [1]}
    inside = square_mask(20, 5, 15) > 0
    scaled = np.moveaxis(array, 0, -1).astype(np.float64) / 65535.0
    for bands in ([], [13, 1, 7]):
        config = PipelineConfig(num_views=1, num_masks=1, channels=len(bands) or 13,
                                bands=bands, image_size=20, mask_mode="channel").validate()
        transformed, _ = run_transform([instance], config, tmp_path / f"t{len(bands)}")
        region = np.asarray(transformed[0][features.REGION_KEY]).reshape(20, 20, -1)
        picked = scaled[..., [band - 1 for band in bands]] if bands else scaled
        assert region.shape[-1] == picked.shape[-1] + 1  # the mask rides along
        # standardized over the region's pixels, as every image is
        values = picked[inside]
        expected = (picked - values.mean()) / values.std()
        np.testing.assert_allclose(region[..., :-1], expected, atol=1e-4)
        np.testing.assert_array_equal(region[..., -1], inside.astype(np.float32))


@pytest.fixture(scope="module")
def raster_model(tmp_path_factory):
    """A tiny model trained on 4-band rasters as ingest stores them."""
    from conftest import train_tiny_model

    tmp_path = tmp_path_factory.mktemp("raster_model")
    rng = np.random.default_rng(5)
    labels = [index % 2 for index in range(18)]
    records = _ingest(tmp_path, [_bands(rng, 4, "uint16", label) for label in labels], labels)
    examples = [(label, record[features.IMAGES_KEY].bytes_list.value[0],
                 record[features.MASKS_KEY].bytes_list.value[0])
                for label, record in zip(labels, records)]
    model_dir, _ = train_tiny_model(tmp_path, examples, channels=4)
    return model_dir, examples


def test_both_signatures_and_the_server_take_rasters(raster_model, tmp_path):
    model_dir, examples = raster_model
    loaded = tf.saved_model.load(model_dir)
    images = [image for _, image, _ in examples[:6]]
    masks = [mask for _, _, mask in examples[:6]]
    raw = loaded.signatures[features.RAW_SIGNATURE](
        images=tf.constant([[i] for i in images]), masks=tf.constant([[m] for m in masks]))
    by_example = loaded.signatures[features.SERVING_SIGNATURE](examples=tf.constant(
        [make_example([i], [m]).SerializeToString() for i, m in zip(images, masks)]))
    expected = raw[features.PROBABILITY_OUTPUT].numpy()
    np.testing.assert_allclose(by_example[features.PROBABILITY_OUTPUT].numpy(), expected,
                               atol=1e-6)
    # a picture sent to a model of 4 bands is refused by the graph, saying why
    picture = encode_png(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="is not a raster record; the model takes rasters of 4 band"):
        loaded.signatures[features.RAW_SIGNATURE](images=tf.constant([[picture]]),
                                                  masks=tf.constant([[masks[0]]]))

    with serving(model_dir, str(tmp_path / "models" / "rasters"), "rasters") as server:
        answer = requests.post(
            f"http://127.0.0.1:{server.rest_port}/v1/models/rasters:predict", timeout=60,
            json={"signature_name": features.RAW_SIGNATURE,
                  "instances": [{"images": [b64(i)], "masks": [b64(m)]}
                                for i, m in zip(images, masks)]})
    assert answer.status_code == 200, answer.text
    served = [row[features.PROBABILITY_OUTPUT] for row in answer.json()["predictions"]]
    np.testing.assert_allclose(np.asarray(served).reshape(-1), expected.reshape(-1), atol=1e-5)


def test_a_truncated_raster_and_a_raster_too_big_for_its_header_are_refused(tmp_path):
    from masktfx.images import RegionInputError, check_image_bytes

    array = np.random.default_rng(6).integers(0, 4000, (4, 200, 300)).astype(np.uint16)
    data = open(write_geotiff(str(tmp_path / "big.tif"), array), "rb").read()
    with pytest.raises(RegionInputError, match="cannot decode raster .truncated or corrupt.: "
                                               "band 1: IReadBlock failed"):
        check_image_bytes(data[:len(data) // 2], 10**6)
    # 13 float32 bands take 52 bytes a pixel: what 6.5 pixels of 16-bit RGBA take
    floats = _bands(np.random.default_rng(6), 13, "float32")
    data = open(write_geotiff(str(tmp_path / "floats.tif"), floats), "rb").read()
    assert check_image_bytes(data, 400 * 52 // 8).channels == 13
    with pytest.raises(RegionInputError, match="20x20 with 13 bands of 4 bytes = 20800 bytes "
                                               "decoded, above the limit of 20792"):
        check_image_bytes(data, 400 * 52 // 8 - 1)


def test_channels_must_match_what_the_rasters_give_before_any_component_runs():
    from masktfx.pipeline.data import DataDescription, DataLayoutError, resolve_config

    rasters = DataDescription(use_spans=False, spans=(), num_views=1, num_masks=1,
                              metadata_columns=(), channels=13, raster_bands=13)
    resolved = resolve_config(PipelineConfig(channels=0), rasters)
    assert resolved.channels == 13 and resolved.image_format == "rasters"
    assert resolve_config(PipelineConfig(channels=0, bands=[4, 3, 2]), rasters).channels == 3
    with pytest.raises(DataLayoutError, match="rasters of 13 band.s. and every band is 13, but "
                                              "config channels is 1; set channels to 0"):
        resolve_config(PipelineConfig(), rasters)  # the default, channels: 1
    with pytest.raises(DataLayoutError, match="asks for band 14, but the data's rasters have 13"):
        resolve_config(PipelineConfig(channels=0, bands=[14]), rasters)
    pictures = DataDescription(use_spans=False, spans=(), num_views=1, num_masks=1,
                               metadata_columns=(), channels=3)
    with pytest.raises(DataLayoutError, match="selects bands of rasters, but the data's images "
                                              "are pictures"):
        resolve_config(PipelineConfig(channels=0, bands=[1]), pictures)
    assert resolve_config(PipelineConfig(channels=0), pictures).image_format == "pictures"
    assert PipelineConfig.from_dict({"bands": "4,3,2", "channels": 0}).bands == [4, 3, 2]


def test_dataset_normalization_z_scores_each_band_with_its_own_statistics(tmp_path):
    """Two bands of different ranges (red beside near-infrared, say): each comes out with mean
    0 and deviation 1 over the training pixels, which one z-score over both would not give."""
    from masktfx.images import encode_raster

    rng = np.random.default_rng(8)
    mask = encode_png(square_mask(20, 5, 15))
    instances = []
    for _ in range(4):
        bands = np.stack([rng.integers(0, 1000, (20, 20)), rng.integers(30000, 60000, (20, 20))],
                         axis=-1).astype(np.uint16)
        instances.append({features.IMAGES_KEY: [encode_raster(bands)],
                          features.MASKS_KEY: [mask], features.LABEL_KEY: [0]})
    config = PipelineConfig(num_views=1, num_masks=1, channels=2, image_size=20,
                            mask_mode="none", normalization="dataset").validate()
    transformed, _ = run_transform(instances, config, tmp_path)
    pixels = np.stack([np.asarray(row[features.REGION_KEY]).reshape(20, 20, 2)
                       for row in transformed])
    for band in range(2):
        assert abs(pixels[..., band].mean()) < 1e-3, band
        assert abs(pixels[..., band].std() - 1) < 1e-2, band
