"""Built-in demo data: the synthetic task and the real nuclei tiles from the stardist wheel."""

from __future__ import annotations

import csv
import os

import numpy as np
import tifffile
from PIL import Image

from masktfx.demo_data import write_nuclei, write_synthetic


def _rows(manifest: str) -> list[dict[str, str]]:
    with open(manifest, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_synthetic_signal_is_inside_the_mask_only(tmp_path):
    """Blob brightness over the whole image cannot tell the classes apart; inside the mask it can.

    A 5x5 box filter keeps the round spots and dims the thin streaks (the confounder)."""
    from scipy.ndimage import uniform_filter

    manifest = write_synthetic(str(tmp_path), num_examples=120, size=48, views=1)
    base = os.path.dirname(manifest)
    inside, whole, labels = [], [], []
    for row in _rows(manifest):
        image = uniform_filter(
            np.asarray(Image.open(os.path.join(base, row["image"])), np.float32), size=5)
        mask = np.asarray(Image.open(os.path.join(base, row["mask"]))) > 0
        inside.append(image[mask].max() - np.median(image[mask]))
        whole.append(image.max() - np.median(image))
        labels.append(int(row["label"]))
    labels = np.array(labels)
    inside, whole = np.array(inside), np.array(whole)
    assert 30 < labels.sum() < 90
    gap_inside = inside[labels == 1].mean() - inside[labels == 0].mean()
    gap_whole = whole[labels == 1].mean() - whole[labels == 0].mean()
    assert gap_inside > 3 * abs(gap_whole)
    sites = {row["site"] for row in _rows(manifest)}
    assert len(sites) == 4
    groups = {row["group"] for row in _rows(manifest)}
    assert all(group.split("-")[0] in sites for group in groups)


def test_synthetic_multi_view_columns(tmp_path):
    manifest = write_synthetic(str(tmp_path), num_examples=4, size=16, views=3)
    header = list(_rows(manifest)[0])
    assert header[:4] == ["id", "image_t1", "image_t2", "image_t3"]


def test_nuclei_tiles_come_from_the_wheel(tmp_path):
    manifest = write_nuclei(str(tmp_path))
    rows = _rows(manifest)
    positives = [r for r in rows if r["label"] == "1"]
    negatives = [r for r in rows if r["label"] == "0"]
    assert len(positives) > 100 and len(negatives) > 100
    for row in positives[:10] + negatives[:10]:
        tile = tifffile.imread(os.path.join(tmp_path, row["image"]))
        mask = np.asarray(Image.open(os.path.join(tmp_path, row["mask"]))) > 0
        assert tile.dtype == np.uint16 and tile.shape == mask.shape == (48, 48)
        region_mean = tile[mask].mean()
        # nuclei are bright in fluorescence; moved shapes sit on dark background
        if row["label"] == "1":
            assert region_mean > np.median(tile)
        else:
            assert region_mean <= np.percentile(tile, 75)
