"""DICOM (pydicom's CT and MR test files) and NIfTI (nibabel's test volume, a label map written
with nibabel): ingest stores each plane in its modality's units, exactly; a label map gives the
mask of one label; bad volumes are rejected rows; the window is applied in the graph; NIfTI,
CT and MR regions in one manifest go through `masktfx run` and are served by `masktfx serve`."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import requests
import tensorflow as tf
from conftest import (
    b64,
    ingest_manifest,
    run_transform,
    serving_folder,
    square_mask,
    write_manifest,
    write_png,
)

from masktfx import cli, features
from masktfx.config import PipelineConfig
from masktfx.images import decode_mask_array, decode_raster


def _package_file(package: str, *parts: str) -> str:
    import importlib

    return os.path.join(os.path.dirname(importlib.import_module(package).__file__), *parts)


CT = _package_file("pydicom", "data", "test_files", "CT_small.dcm")
MR = _package_file("pydicom", "data", "test_files", "MR_small.dcm")
MR_TRUNCATED = _package_file("pydicom", "data", "test_files", "MR_truncated.dcm")
BRAIN = _package_file("nibabel", "tests", "data", "anatomical.nii")


def _hounsfield(path: str) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    dataset = pydicom.dcmread(path)
    return apply_modality_lut(dataset.pixel_array, dataset).astype(np.float32)


def _ingest(tmp_path, header: list[str], rows: list[list]) -> tuple[dict, dict]:
    return ingest_manifest(write_manifest(str(tmp_path / "m.csv"), header, rows),
                           str(tmp_path / "out"))


def _image(feature) -> np.ndarray:
    return decode_raster(feature[features.IMAGES_KEY].bytes_list.value[0])[:, :, 0]


def test_dicom_ct_and_mr_and_a_nifti_slice_with_its_label_map(tmp_path):
    import nibabel

    for source in (CT, MR, MR_TRUNCATED, BRAIN):
        shutil.copy(source, tmp_path)
    write_png(str(tmp_path / "ct-mask.png"), square_mask(128, 40, 80))
    write_png(str(tmp_path / "mr-mask.png"), square_mask(64, 20, 40))
    brain = nibabel.load(BRAIN)
    labels = np.zeros(brain.shape, np.int16)
    labels[5:15, 10:20, 12] = 2  # the lesion, say
    labels[20:30, 25:35, 12] = 1
    nibabel.save(nibabel.Nifti1Image(labels, brain.affine), str(tmp_path / "labels.nii.gz"))
    records, rejected = _ingest(tmp_path, ["id", "image", "mask", "slice", "mask_label",
                                           "label"], [
        ["ct", "CT_small.dcm", "ct-mask.png", "", "", "1"],
        ["mr", "MR_small.dcm", "mr-mask.png", "", "", "0"],
        ["brain", "anatomical.nii", "labels.nii.gz", "2:12", "2", "1"],
        ["no-slice", "anatomical.nii", "labels.nii.gz", "", "2", "1"],
        ["out-of-range", "anatomical.nii", "labels.nii.gz", "2:40", "2", "1"],
        ["no-such-label", "anatomical.nii", "labels.nii.gz", "2:12", "7", "1"],
        ["truncated", "MR_truncated.dcm", "mr-mask.png", "", "", "0"],
        ["slice-of-2d", "CT_small.dcm", "ct-mask.png", "0:1", "", "1"]])
    assert sorted(records) == ["brain", "ct", "mr"], rejected
    # every plane in its modality's units, exactly: Hounsfield units for CT
    np.testing.assert_array_equal(_image(records["ct"]), _hounsfield(CT))
    assert _image(records["ct"]).min() < -800  # air, below water's 0
    np.testing.assert_array_equal(_image(records["mr"]), _hounsfield(MR))
    voxels = np.asarray(brain.dataobj, dtype=np.float32)[:, :, 12]
    np.testing.assert_array_equal(_image(records["brain"]), voxels)
    mask = decode_mask_array(records["brain"][features.MASKS_KEY].bytes_list.value[0], 10**6)
    np.testing.assert_array_equal(mask, labels[:, :, 12] == 2)

    assert "NIfTI is a volume of shape (33, 41, 25); give the slice column" in rejected[4]
    assert "slice index 40 is out of range: axis 2 of the volume of shape (33, 41, 25) has " \
        "25 slices" in rejected[5]
    assert "mask is empty" in rejected[6]  # no voxel of label 7 on that slice
    assert "cannot decode DICOM pixels (truncated or corrupt)" in rejected[7]
    assert "slice index 1 is out of range: axis 0 of the DICOM frames of shape (1,) has 1 " \
        "slices" in rejected[8], rejected[8]


# the columns of _square_rows' rows, and of the brain demo's manifest
SQUARE_HEADER = ["id", "image", "mask", "slice", "mask_label", "label", "group"]


def _square_rows(folder, source: str, name: str, size: int, step: int, side: int,
                 groups: int) -> list[list]:
    """Rows of square regions tiling a DICOM image: 1 where they lie in the body (above -500 in
    its modality's units), else 0; `groups` groups, so both splits get some."""
    shutil.copy(source, folder / name)
    units = _hounsfield(source)
    rows = []
    for index, (top, left) in enumerate([(y, x) for y in range(step // 2, size - side, step)
                                         for x in range(step // 2, size - side, step)]):
        mask = np.zeros((size, size), np.uint8)
        mask[top:top + side, left:left + side] = 255
        write_png(str(folder / f"{name}-{index}.png"), mask)
        inside = float(units[top:top + side, left:left + side].mean()) > -500
        rows.append([f"{name}-{index}", name, f"{name}-{index}.png", "", "", int(inside),
                     f"{name}-{index % groups}"])
    return rows


def test_the_window_is_applied_in_the_graph_in_hounsfield_units(tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    row = _square_rows(folder, CT, "ct.dcm", 128, 16, 10, 4)[27]  # in the body
    record = _ingest(folder, SQUARE_HEADER, [row])[0][row[0]]
    label = int(record[features.LABEL_KEY].int64_list.value[0])
    image = record[features.IMAGES_KEY].bytes_list.value[0]
    mask = record[features.MASKS_KEY].bytes_list.value[0]
    config = PipelineConfig(num_views=1, num_masks=1, image_format="rasters", channels=1,
                            window=[40.0, 400.0], image_size=128, mask_mode="channel").validate()
    instance = {features.IMAGES_KEY: [image], features.MASKS_KEY: [mask],
                features.LABEL_KEY: [label]}
    transformed, _ = run_transform([instance], config, tmp_path)
    region = np.asarray(transformed[0][features.REGION_KEY]).reshape(128, 128, 2)
    windowed = np.clip((_hounsfield(CT) - (40 - 200)) / 400, 0, 1)
    inside = decode_mask_array(mask, 10**6)
    values = windowed[inside]
    expected = (windowed - values.mean()) / max(values.std(), 1e-3)
    np.testing.assert_allclose(region[..., 0], expected, atol=1e-3)


@pytest.mark.slow
def test_dicom_ct_and_mr_and_nifti_regions_go_through_ingest_run_and_serve(tmp_path, capsys):
    """One manifest of the brain demo's NIfTI slices with their label map, and square regions
    of pydicom's CT and MR files: `masktfx run` ingests, trains, blesses and pushes; the pushed
    model, served by `masktfx serve`, answers `masktfx predict` on rows of each format (their
    files converted as ingest converts them) as the model answers in process."""
    from masktfx.demo_data import write_brain

    folder = tmp_path / "data"
    manifest = write_brain(str(folder))
    with open(manifest, encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == SQUARE_HEADER
    dicom_rows = (_square_rows(folder, CT, "ct.dcm", 128, 16, 10, 4)
                  + _square_rows(folder, MR, "mr.dcm", 64, 12, 8, 2))
    assert {row[5] for row in dicom_rows} == {0, 1}
    write_manifest(manifest, header, rows + dicom_rows)
    workdir = str(tmp_path / "work")
    # the gates' extras (intervals, attributions, the serving check) have their own tests
    # 11 groups (5 slice ranges, 4 CT and 2 MR squares): buckets under which each of the three
    # splits holds both classes (the split check refuses the defaults' plan for so few groups)
    assert cli.main(["run", "--data", manifest, "--workdir", workdir, "--image-size", "32",
                     "--epochs", "10", "--batch-size", "16", "--min-accuracy", "0.5",
                     "--no-confidence-intervals", "--attribution-regions", "0",
                     "--no-serving-check", "--train-buckets", "8", "--validation-buckets", "1",
                     "--test-buckets", "1"]) == 0
    out = capsys.readouterr().out
    total = len(rows) + len(dicom_rows)
    assert f"ingested {total} of {total} rows" in out, out
    assert "blessed: yes" in out and "pushed: version" in out, out

    config = PipelineConfig(workdir=workdir)
    model_dir = os.path.join(config.resolved_serving_dir, config.model_name)
    version = max(name for name in os.listdir(model_dir) if name.isdigit())
    chosen = [*rows[:3], *[row for row in dicom_rows if row[1] == "ct.dcm"][:3],
              *[row for row in dicom_rows if row[1] == "mr.dcm"][:3]]
    subset = write_manifest(str(folder / "chosen.csv"), header, chosen)
    records, rejected = ingest_manifest(subset, str(tmp_path / "chosen"))
    assert not rejected and len(records) == len(chosen)
    images = [records[row[0]][features.IMAGES_KEY].bytes_list.value[0] for row in chosen]
    masks = [records[row[0]][features.MASKS_KEY].bytes_list.value[0] for row in chosen]
    loaded = tf.saved_model.load(os.path.join(model_dir, version))
    expected = loaded.signatures[features.RAW_SIGNATURE](
        images=tf.constant([[i] for i in images]), masks=tf.constant([[m] for m in masks]))[
            features.PROBABILITY_OUTPUT].numpy().reshape(-1)

    with serving_folder(model_dir, config.model_name) as (server, _):
        capsys.readouterr()
        assert cli.main(["predict", "--server", f"http://127.0.0.1:{server.rest_port}",
                         "--model", config.model_name, "--manifest", subset]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["id"] for line in lines] == [row[0] for row in chosen]
        np.testing.assert_allclose([line["probability"] for line in lines], expected,
                                   atol=1e-5)
        # the DICOM file itself is refused, as the graph (and TF Serving) could not decode it
        answer = requests.post(
            f"http://127.0.0.1:{server.rest_port}/v1/models/{config.model_name}:predict",
            timeout=60, json={"signature_name": features.RAW_SIGNATURE, "instances": [
                {"images": [b64(open(CT, "rb").read())], "masks": [b64(masks[3])]}]})
        assert answer.status_code == 400
        assert "instance 0, images[0]: is a DICOM, which the served graph cannot decode" in \
            answer.json()["error"]


def test_a_dicom_seg_gives_the_mask_of_its_segment(tmp_path):
    """pydicom's liver segmentation (DICOM-SEG, 512 x 512) as the mask of an image of its size."""
    import pydicom

    seg = _package_file("pydicom", "data", "test_files", "liver_1frame.dcm")
    shutil.copy(seg, tmp_path / "liver.dcm")
    write_png(str(tmp_path / "image.png"),
              np.random.default_rng(0).integers(0, 255, (512, 512)).astype(np.uint8))
    records, rejected = _ingest(tmp_path, ["id", "image", "mask", "mask_label", "label"], [
        ["liver", "image.png", "liver.dcm", "1", "1"],
        ["no-segment-2", "image.png", "liver.dcm", "2", "1"],
        ["seg-as-image", "liver.dcm", "liver.dcm", "1", "1"]])
    assert sorted(records) == ["liver"], rejected
    expected = pydicom.dcmread(seg).pixel_array != 0
    np.testing.assert_array_equal(
        decode_mask_array(records["liver"][features.MASKS_KEY].bytes_list.value[0], 10**6),
        expected)
    assert "DICOM-SEG has no frame of segment 2 (segments [1])" in rejected[2]
    assert "is a DICOM-SEG segmentation: give it as the mask" in rejected[3]


def test_a_multi_frame_dicom_gives_the_frame_the_slice_column_names(tmp_path):
    """pydicom's RT Dose file: 15 frames of 10 x 10, stored in Gy (its dose grid scaling)."""
    import pydicom
    from pydicom.pixels import pixel_array

    dose = _package_file("pydicom", "data", "test_files", "rtdose.dcm")
    shutil.copy(dose, tmp_path / "dose.dcm")
    write_png(str(tmp_path / "mask.png"), square_mask(10, 2, 8))
    records, rejected = _ingest(tmp_path, ["id", "image", "mask", "slice", "label"], [
        ["frame7", "dose.dcm", "mask.png", "7", "1"],
        ["frame15", "dose.dcm", "mask.png", "15", "1"],
        ["no-frame", "dose.dcm", "mask.png", "", "1"]])
    assert sorted(records) == ["frame7"], rejected
    dataset = pydicom.dcmread(dose)
    expected = (pixel_array(dataset, index=7) * float(dataset.DoseGridScaling)).astype(np.float32)
    np.testing.assert_array_equal(_image(records["frame7"]), expected)
    assert "slice index 15 is out of range: axis 0 of the DICOM frames of shape (15,)" \
        in rejected[2]
    assert "DICOM holds 15 frames; give the slice column" in rejected[3]
