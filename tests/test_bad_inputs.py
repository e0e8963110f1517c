"""The bad-input corpus (tests/data/make_bad_corpus.py) through every entry point that can receive
it: ingest, the pipeline, the server over REST and gRPC, and `masktfx predict`."""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil

import numpy as np
import pytest
import requests
from conftest import IN_PROCESS_BEAM, load_bad_corpus

from masktfx import cli, features
from masktfx.images import decode_mask_array
from masktfx.records import read_examples
from masktfx.serving.client import GrpcClient, ServingClientError
from masktfx.serving.models import ModelManager, wait_for_version
from masktfx.serving.server import ModelServer

corpus_module = load_bad_corpus()
CASES = corpus_module.CASES


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad"))
    return root, corpus_module.write_corpus(root)


def _read(root: str, name: str) -> bytes:
    with open(os.path.join(os.fsencode(root), os.fsencode(name)), "rb") as handle:
        return handle.read()


def test_ingest_rejects_each_bad_row_with_its_reason_and_keeps_every_good_one(corpus, tmp_path):
    root, manifest = corpus
    out = str(tmp_path / "out")
    assert cli.main(["ingest", manifest, "--output", out, "--no-progress",
                     "--beam-args", *IN_PROCESS_BEAM]) == 0
    with open(os.path.join(out, features.REJECTED_CSV), encoding="utf-8") as handle:
        rejected = {int(row["row"]): row for row in csv.DictReader(handle)}
    for number, case in enumerate(CASES, start=1):
        if case.expect == "reject":
            assert number in rejected, case
            assert case.reason in rejected[number]["reason"], (case, rejected[number])
        else:
            assert number not in rejected, (case, rejected.get(number))
    assert set(rejected) == {n for n, c in enumerate(CASES, 1) if c.expect == "reject"}

    records = {r.features.feature[features.ID_KEY].bytes_list.value[0].decode(): r
               for r in read_examples(os.path.join(out, features.SHARD_GLOB))}
    accepted = [c for c in CASES if c.expect == "accept"]
    assert set(records) == {c.id for c in accepted}
    good_region = decode_mask_array(_read(root, "mask-good.png"), 10**6)
    for case in accepted:
        feature = records[case.id].features.feature
        assert feature[features.IMAGES_KEY].bytes_list.value[0] == _read(root, case.image)
        stored = decode_mask_array(feature[features.MASKS_KEY].bytes_list.value[0], 10**6)
        if case.mask in ("mask-0-1.png", "mask-16bit.png", "mask-good.png"):
            np.testing.assert_array_equal(stored, good_region)  # any nonzero pixel is inside
        if case.mask == "mask-ones.png":
            assert stored.all()  # the whole image is the region
    with open(os.path.join(out, features.INGEST_REPORT), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["rejected"] == len(rejected) and report["examples_written"] == len(accepted)


def test_a_manifest_missing_a_column_is_refused_and_nothing_written(corpus, tmp_path, capsys):
    root, _ = corpus
    out = tmp_path / "out"
    manifest = os.path.join(root, corpus_module.MISSING_COLUMN_MANIFEST)
    assert cli.main(["ingest", manifest, "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "label" in err and "manifest-missing-label.csv" in err
    assert not out.exists()


def test_the_pipeline_refuses_a_corrupted_shard_before_any_component(corpus, tmp_path, capsys):
    root, _ = corpus
    workdir = tmp_path / "work"
    data = os.path.join(root, corpus_module.CORRUPT_DATA_ROOT)
    assert cli.main(["run", "--data", data, "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "span-1/data-00000-of-00001.tfrecord.gz: damaged shard" in err
    assert not (workdir / "metadata.sqlite").exists()  # no component ran


@pytest.fixture
def served_tiny(tiny_model, tmp_path):
    model_dir, _ = tiny_model
    base = tmp_path / "models" / "tiny"
    shutil.copytree(model_dir, base / "1")
    manager = ModelManager("tiny", str(base), poll_seconds=0.2)
    server = ModelServer({"tiny": manager}, rest_port=0, grpc_port=0)
    server.start()
    wait_for_version(manager)
    yield server
    server.stop()


def _rest_predict(server, image: bytes, mask: bytes) -> tuple[int, dict]:
    body = {"signature_name": features.RAW_SIGNATURE, "instances": [
        {features.IMAGES_KEY: [{"b64": base64.b64encode(image).decode()}],
         features.MASKS_KEY: [{"b64": base64.b64encode(mask).decode()}]}]}
    response = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/tiny:predict",
                             json=body, timeout=30)
    return response.status_code, response.json()


def test_the_server_answers_each_bad_item_with_400_and_keeps_serving(corpus, served_tiny):
    root, _ = corpus
    server = served_tiny
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "tiny", retries=0)
    good_image, good_mask = _read(root, "good-1.png"), _read(root, "mask-good.png")
    for case in CASES:
        if not case.bad_part:
            continue
        image = _read(root, case.image) if case.bad_part == "image" else good_image
        mask = _read(root, case.mask) if case.bad_part == "mask" else good_mask
        where = "images[0]" if case.bad_part == "image" else "masks[0]"
        status, payload = _rest_predict(server, image, mask)
        assert status == 400, (case, payload)
        assert case.reason in payload["error"] and where in payload["error"], (case, payload)
        with pytest.raises(ServingClientError) as error:
            grpc_client.predict_regions([[image]], [[mask]])
        assert error.value.code == "INVALID_ARGUMENT", case
        assert case.reason in error.value.message and where in error.value.message
        assert _rest_predict(server, good_image, good_mask)[0] == 200  # still serving

    # masks that are valid but unusual: 0/1 and 16-bit masks mark the same region as the
    # 0/255 one, so the model gives the same answer; all ones is the whole image
    reference = _rest_predict(server, good_image, good_mask)[1]["predictions"][0]
    for name in ("mask-0-1.png", "mask-16bit.png"):
        status, payload = _rest_predict(server, good_image, _read(root, name))
        assert status == 200, payload
        assert payload["predictions"][0]["probability"] == pytest.approx(
            reference["probability"], abs=1e-6), name
        via_grpc = grpc_client.predict_regions([[good_image]], [[_read(root, name)]])[0]
        assert via_grpc.probability == pytest.approx(reference["probability"], abs=1e-6)
    status, payload = _rest_predict(server, good_image, _read(root, "mask-ones.png"))
    assert status == 200 and 0.0 <= payload["predictions"][0]["probability"] <= 1.0


def test_predict_reports_each_bad_row_and_answers_the_good_ones(corpus, served_tiny, capsys):
    _, manifest = corpus
    server = served_tiny
    for target in (["--server", f"http://127.0.0.1:{server.rest_port}"],
                   ["--grpc", f"127.0.0.1:{server.grpc_port}"]):
        capsys.readouterr()
        assert cli.main(["predict", *target, "--model", "tiny", "--manifest", manifest]) == 1
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        by_id = {line["id"]: line for line in lines if "id" in line}
        by_row = {line["row"]: line for line in lines if "row" in line}
        for number, case in enumerate(CASES, start=1):
            if case.expect == "accept":
                assert 0.0 <= by_id[case.id]["probability"] <= 1.0, case
                assert by_id[case.id]["model_version"] == 1
                continue
            # rows the manifest refuses are named by row, files the region check refuses by id
            line = by_row.get(number) or by_id.get(case.id)
            assert line is not None and case.reason in line["error"], (case, line)
        assert len(lines) == len(CASES)
    # RestClient with a server URL that is not one
    assert cli.main(["predict", "--server", "127.0.0.1:1", "--model", "tiny", "--manifest",
                     manifest]) == 2
