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


def test_hard_nuclei_negatives_overlap_a_nucleus_without_being_one(tmp_path):
    manifest = write_nuclei(str(tmp_path), hard=True)
    rows = _rows(manifest)
    shifted = [r for r in rows if r["negative"] == "shifted"]
    background = [r for r in rows if r["negative"] == "background"]
    assert len(shifted) > 60 and len(background) > 20
    assert all(r["label"] == "0" for r in shifted + background)

    def bright_share(row):  # the share of the region on bright (nucleus) pixels
        tile = tifffile.imread(os.path.join(tmp_path, row["image"])).astype(np.float32)
        mask = np.asarray(Image.open(os.path.join(tmp_path, row["mask"]))) > 0
        return (tile > np.percentile(tile, 60))[mask].mean()

    positives = [r for r in rows if r["label"] == "1"]
    shares = {name: np.median([bright_share(r) for r in chosen[:40]]) for name, chosen in
              (("positive", positives), ("shifted", shifted), ("background", background))}
    # part on a nucleus, part beside it: between a nucleus's own mask and bare background
    assert shares["background"] + 0.2 < shares["shifted"] < shares["positive"] - 0.1, shares
    # a nucleus's positive and its negatives share a group, so they never straddle the split
    groups = {}
    for row in rows:
        groups.setdefault(row["id"].split("-")[0], set()).add(row["group"])
    assert all(len(found) == 1 for found in groups.values())


def test_trees_come_from_the_two_named_scenes_only(tmp_path):
    import io
    import zipfile

    from masktfx.demo_data import TREE_SCENES, find_deepforest_wheel, write_trees

    manifest = write_trees(str(tmp_path))
    rows = _rows(manifest)
    by_site = {site: [r for r in rows if r["site"] == site] for site, _ in TREE_SCENES}
    with zipfile.ZipFile(find_deepforest_wheel()) as wheel:
        for site, scene in TREE_SCENES:
            crowns = wheel.read(scene + ".xml").decode().count("<bndbox>")
            positives = [r for r in by_site[site] if r["label"] == "1"]
            negatives = [r for r in by_site[site] if r["label"] == "0"]
            assert len(positives) == crowns and abs(len(negatives) - crowns) <= crowns // 20
            assert {r["scene"] for r in by_site[site]} == {scene.rsplit("/", 1)[1]}
        scene_pixels = np.asarray(Image.open(io.BytesIO(wheel.read(TREE_SCENES[0][1] + ".png")))
                                  .convert("RGB"))
    for row in by_site["california"][:6]:
        tile = np.asarray(Image.open(os.path.join(tmp_path, row["image"])))
        mask = np.asarray(Image.open(os.path.join(tmp_path, row["mask"]))) > 0
        assert tile.shape[:2] == mask.shape and tile.shape[2] == 3 and mask.any()
        # the tile is a crop of the scene, pixel for pixel
        found = np.argwhere((scene_pixels == tile[0, 0]).all(axis=-1))
        assert any(np.array_equal(scene_pixels[y:y + tile.shape[0], x:x + tile.shape[1]], tile)
                   for y, x in found)
        assert 0.05 < mask.mean() < 0.5  # the region with context around it
    groups = {r["group"] for r in rows}
    assert all(g.split("-")[0] in by_site for g in groups) and len(groups) > 20


def test_trees_can_add_unlabeled_regions_of_the_unannotated_scene(tmp_path):
    from masktfx.demo_data import UNLABELED_TREE_SCENE, write_trees

    labelled = _rows(write_trees(str(tmp_path / "plain")))
    rows = _rows(write_trees(str(tmp_path / "more"), unlabeled_regions=30))
    assert rows[:len(labelled)] == labelled  # the labelled rows are unchanged
    added = rows[len(labelled):]
    assert len(added) == 30 and {r["label"] for r in added} == {""}
    assert {r["scene"] for r in added} == {UNLABELED_TREE_SCENE[1].rsplit("/", 1)[1]}
    assert {r["site"] for r in added} == {"california"}
    assert not {r["group"] for r in added} & {r["group"] for r in labelled}
    for row in added[:5]:
        mask = np.asarray(Image.open(os.path.join(tmp_path, "more", row["mask"]))) > 0
        assert 0.05 < mask.mean() < 0.5
