"""Shared fixtures: tiny real images, masks and manifests written on the spot."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import os
import shutil
import struct

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from masktfx.config import TRAINER_FIELDS, TRANSFORM_FIELDS  # noqa: E402
from masktfx.images import encode_png  # noqa: E402

IN_PROCESS_BEAM = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def write_png(path: str, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(encode_png(array))
    return path


def blank_labels(manifest: str, site: str) -> int:
    """The rows of `site` made unlabeled (an empty label); returns how many."""
    with open(manifest, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "label": "" if row["site"] == site else row["label"]}
                         for row in rows)
    return sum(row["site"] == site for row in rows)


def square_mask(size: int, lo: int, hi: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[lo:hi, lo:hi] = True
    return mask


def load_bad_corpus():
    """tests/data/make_bad_corpus.py as a module (it is a script, not a package)."""
    import importlib.util
    import sys

    path = os.path.join(os.path.dirname(__file__), "data", "make_bad_corpus.py")
    spec = importlib.util.spec_from_file_location("make_bad_corpus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_bad_corpus"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def patched_jpeg(size: int, claimed: int) -> bytes:
    """A real JPEG of size x size whose frame header is patched to claim claimed x claimed."""
    pixels = np.random.default_rng(3).integers(0, 255, (size, size, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    frame = data.find(b"\xff\xc0")  # baseline SOF0: length, precision, height, width
    struct.pack_into(">HH", data, frame + 5, claimed, claimed)
    return bytes(data)


def write_manifest(path: str, header: list[str], rows: list[list[object]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def ingest_manifest(manifest: str, output: str, *extra: str) -> tuple[dict, dict[int, str]]:
    """`masktfx ingest` in process; (the records' features by id, rejected rows' reasons)."""
    from masktfx import cli, features
    from masktfx.records import read_examples

    assert cli.main(["ingest", manifest, "--output", output, "--no-progress", *extra,
                     "--beam-args", *IN_PROCESS_BEAM]) == 0
    records = {ex.features.feature[features.ID_KEY].bytes_list.value[0].decode():
               ex.features.feature
               for ex in read_examples(os.path.join(output, features.SHARD_GLOB))}
    with open(os.path.join(output, features.REJECTED_CSV), encoding="utf-8") as handle:
        rejected = {int(r["row"]): r["reason"] for r in csv.DictReader(handle)}
    return records, rejected


def b64(data: bytes) -> dict:
    """A bytes value as TF Serving's REST API takes it."""
    return {"b64": base64.b64encode(data).decode("ascii")}


@contextlib.contextmanager
def serving_folder(base: str, name: str):
    """`masktfx serve` (in process, loopback ports) of the numbered versions under `base` as
    model `name`; yields (server, its model manager) once a version is available."""
    from masktfx.serving.models import ModelManager, wait_for_version
    from masktfx.serving.server import ModelServer

    manager = ModelManager(name, base)
    server = ModelServer({name: manager}, rest_port=0, grpc_port=0)
    server.start()
    try:
        wait_for_version(manager)
        yield server, manager
    finally:
        server.stop()


@contextlib.contextmanager
def serving(model_dir: str, base: str, name: str, version: int = 1):
    """`serving_folder` of `model_dir` copied as version `version` of model `name` under
    `base`; yields the server."""
    shutil.copytree(model_dir, os.path.join(base, str(version)))
    with serving_folder(base, name) as (server, _):
        yield server


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _raw_spec(num_views: int, num_masks: int) -> dict:
    import tensorflow as tf

    from masktfx import features

    return {
        features.IMAGES_KEY: tf.io.FixedLenFeature([num_views], tf.string),
        features.MASKS_KEY: tf.io.FixedLenFeature([num_masks], tf.string),
        features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64),
    }


def run_transform(instances: list[dict], config, tmp_path, output_dir=None):
    """preprocessing_fn through tft_beam, as TFX's Transform runs it; optionally saved."""
    import functools

    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from masktfx.modules.transform import preprocessing_fn

    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(_raw_spec(config.num_views, config.num_masks)))
    fn = functools.partial(preprocessing_fn,
                           custom_config=config.component_config(TRANSFORM_FIELDS))
    with tft_beam.Context(temp_dir=str(tmp_path / "tft_tmp"), force_tf_compat_v1=False):
        (transformed, transformed_metadata), transform_fn = (
            (instances, metadata) | tft_beam.AnalyzeAndTransformDataset(fn))
        if output_dir:
            _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
            metadata_io.write_metadata(
                metadata, os.path.join(output_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return transformed, transformed_metadata


def tiny_examples(rng: np.random.Generator, count: int) -> list[tuple[int, bytes, bytes]]:
    """(label, image PNG, mask PNG): positives have a bright square inside the region."""
    examples = []
    for index in range(count):
        label = index % 2
        image = rng.integers(0, 60, (20, 20)).astype(np.uint8)
        if label:
            image[8:12, 8:12] = 250
        examples.append((label, encode_png(image), encode_png(square_mask(20, 5, 15))))
    return examples


def train_tiny_model(tmp_path, examples: list[tuple[int, bytes, bytes]] | None = None,
                     **settings) -> tuple[str, list[tuple[int, bytes, bytes]]]:
    """A real SavedModel made by run_fn on 24 tiny transformed examples (16 train, the last 8
    validation), or on `examples` (label, image, mask; two thirds train); `settings` override the
    config. Returns its folder and the examples."""
    import tensorflow as tf
    import tensorflow_transform as tft
    from tfx.components.trainer.fn_args_utils import FnArgs

    from masktfx import features
    from masktfx.config import PipelineConfig
    from masktfx.modules.trainer import run_fn

    config = PipelineConfig(num_views=1, num_masks=1, image_size=16, epochs=2, batch_size=8,
                            model_preset="seed").replace(**settings)
    examples = examples or tiny_examples(np.random.default_rng(7), 24)
    train_count = len(examples) * 2 // 3
    instances = [{features.IMAGES_KEY: [img], features.MASKS_KEY: [mask],
                  features.LABEL_KEY: [label]} for label, img, mask in examples]
    transform_dir = str(tmp_path / "transform")
    transformed, transformed_metadata = run_transform(instances, config, tmp_path, transform_dir)
    coder = tft.coders.ExampleProtoCoder(transformed_metadata.schema)
    data_dir = tmp_path / "transformed"
    data_dir.mkdir()
    for split, rows in (("train", transformed[:train_count]),
                        ("validation", transformed[train_count:])):
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(data_dir / f"{split}.gz"), options=options) as writer:
            for row in rows:
                writer.write(coder.encode(row))
    serving_dir = str(tmp_path / "serving_model")
    run_fn(FnArgs(train_files=[str(data_dir / "train.gz")],
                  eval_files=[str(data_dir / "validation.gz")],
                  transform_output=transform_dir, serving_model_dir=serving_dir,
                  model_run_dir=str(tmp_path / "run"),
                  custom_config=config.component_config(TRAINER_FIELDS),
                  train_steps=None))
    return serving_dir, examples


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny model of train_tiny_model with the default config (about 30 s, once)."""
    return train_tiny_model(tmp_path_factory.mktemp("tiny_model"))


# The files of whole pipeline runs, in the order that balances `make test`'s two workers: xdist
# starts each on two files (the 1st and 3rd, the 2nd and 4th), then hands out the rest as they
# free up. The longest file (e2e) and a middling one on one worker, the next two on the other.
LONGEST_FILES = ("test_pipeline_e2e.py", "test_span_window.py", "test_reports.py",
                 "test_faults.py", "test_serving_load.py", "test_split_plan.py",
                 "test_metadata_mysql.py", "test_portable_runner.py", "test_medical.py")


def pytest_collection_modifyitems(config, items):
    """The pipeline runs' files first, in LONGEST_FILES' order: `make test` hands whole files to
    its two workers in this order (--dist loadfile), so the long runs start at once and the
    quick files fill in at the end, rather than one worker finishing a long run alone."""
    def rank(item) -> int:
        name = os.path.basename(str(item.path))
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)
