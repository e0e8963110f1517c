"""Attribution against the mask: the `attribution` signature of real SavedModels trained by
run_fn on the synthetic demo regions (the signal inside the region, look-alikes outside it), and
the Evaluator's check and gate on their test regions."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import train_tiny_model

from masktfx import attribution, features
from masktfx.demo_data import write_synthetic
from masktfx.records import make_example


@pytest.fixture(scope="module")
def synthetic_regions(tmp_path_factory) -> list[tuple[int, bytes, bytes]]:
    manifest = write_synthetic(str(tmp_path_factory.mktemp("synthetic")), num_examples=150,
                               size=32, seed=3)
    folder = os.path.dirname(manifest)
    with open(manifest, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))

    def read(name: str) -> bytes:
        with open(os.path.join(folder, name), "rb") as handle:
            return handle.read()

    return [(int(row["label"]), read(row["image"]), read(row["mask"])) for row in rows]


def _eval_examples(tmp_path, regions: list[tuple[int, bytes, bytes]]) -> str:
    """An Examples artifact folder whose test split holds `regions` as ingest writes them."""
    split = tmp_path / "examples" / f"Split-{features.TEST_SPLIT}"
    split.mkdir(parents=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(str(split / "data.gz"), options=options) as writer:
        for index, (label, image, mask) in enumerate(regions):
            writer.write(make_example([image], [mask], label, f"r{index}", "g").SerializeToString())
    return str(tmp_path / "examples")


def _attribute(tmp_path, regions, **settings) -> dict:
    model_dir, _ = train_tiny_model(tmp_path, regions, model_preset="resnet", image_size=32,
                                    epochs=8, batch_size=16, **settings)
    eval_regions = regions[len(regions) * 2 // 3:]
    return attribution.attribute_eval_regions(
        model_dir, [_eval_examples(tmp_path, eval_regions)], 40, str(tmp_path / "evaluation"))


def test_a_model_that_ignores_the_mask_fails_the_gate_and_keeps_its_heat_maps(
        tmp_path, synthetic_regions):
    """The default model passing the same gate, through whole runs, is in test_pipeline_e2e
    (gate-only and worse-model runs)."""
    ignoring = _attribute(tmp_path / "none", synthetic_regions, mask_mode="none")
    assert ignoring["regions"] == 40 and len(ignoring["shares"]) == 40
    assert all(0.0 <= share <= 1.0 for share in ignoring["shares"])
    assert ignoring["by_class"]["0"]["count"] + ignoring["by_class"]["1"]["count"] == 40
    # blind to the region, it spreads its attribution about as widely as the mask covers
    assert ignoring["overall"]["median"] < 0.3
    failure = attribution.gate_failure(ignoring, 0.3)
    assert failure and "below min_attribution_inside 0.3" in failure
    assert attribution.gate_failure(ignoring, 0.0) is None  # no gate
    assert attribution.gate_failure({**ignoring, "overall": {"median": 0.31}}, 0.3) is None

    # the heat maps kept for the report: view 1 of the first regions of each class, on the
    # model's grid; the mask is the region's (for `none` too, which does not use it)
    maps = attribution.read_maps(str(tmp_path / "none" / "evaluation"))
    assert maps["heat"].shape == maps["mask"].shape == maps["model_input"].shape == (8, 32, 32)
    assert sorted(set(maps["labels"].tolist())) == [0, 1]
    assert (maps["heat"] >= 0).all() and set(np.unique(maps["mask"])) <= {0.0, 1.0}
    inside = (maps["heat"] * maps["mask"]).sum(axis=(1, 2)) / maps["heat"].sum(axis=(1, 2))
    np.testing.assert_allclose(inside, maps["share"], rtol=1e-4)
