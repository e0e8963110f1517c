"""TF Serving's warmup file: built from real regions for both signatures, parsed back as
PredictionLog, replayed by `masktfx serve` before a version is AVAILABLE; a failing request
fails the load, as in TF Serving."""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow as tf
from conftest import tiny_examples
from tensorflow_serving.apis import prediction_log_pb2

from masktfx import features
from masktfx.components.versioned_pusher import publish_version
from masktfx.records import make_example
from masktfx.serving.models import ModelManager
from masktfx.warmup import (
    WARMUP_FILE,
    encode_warmup,
    read_warmup,
    warmup_requests,
)


def _serialized(count: int) -> list[bytes]:
    return [make_example([image], [mask], label=label).SerializeToString()
            for label, image, mask in tiny_examples(np.random.default_rng(3), count)]


def test_a_pushed_version_carries_warmup_requests_that_the_server_replays(tiny_model, tmp_path):
    model_dir, _ = tiny_model
    logs = warmup_requests(_serialized(3), "tiny")
    base = str(tmp_path / "serving" / "tiny")
    version, path, _ = publish_version(model_dir, base, {WARMUP_FILE: encode_warmup(logs)})
    stored = read_warmup(path)
    assert [type(entry) for entry in stored] == [prediction_log_pb2.PredictionLog] * 2
    requests = [entry.predict_log.request for entry in stored]
    assert [r.model_spec.signature_name for r in requests] == [features.SERVING_SIGNATURE,
                                                              features.RAW_SIGNATURE]
    images = tf.make_ndarray(requests[1].inputs[features.IMAGES_KEY])
    assert images.shape == (3, 1)
    # the in-process model answers them; the server replays them before serving the version
    loaded = tf.saved_model.load(path)
    by_example = loaded.signatures[features.SERVING_SIGNATURE](
        examples=tf.constant(tf.make_ndarray(requests[0].inputs[features.EXAMPLES_INPUT])))
    assert by_example[features.PROBABILITY_OUTPUT].shape == (3,)
    manager = ModelManager("tiny", base)
    manager.poll_once()
    (status,) = manager.status()
    assert (status.version, status.state, status.warmup_requests) == (version, "AVAILABLE", 2)


def test_a_warmup_request_that_fails_fails_the_load(tiny_model, tmp_path):
    model_dir, _ = tiny_model
    (entry,) = [e for e in warmup_requests(_serialized(1), "tiny")
                if e.predict_log.request.model_spec.signature_name == features.RAW_SIGNATURE]
    entry.predict_log.request.model_spec.signature_name = "removed_signature"
    base = tmp_path / "serving" / "tiny"
    shutil.copytree(model_dir, base / "1")
    os.makedirs(base / "1" / "assets.extra", exist_ok=True)  # the operating point is there
    (base / "1" / WARMUP_FILE).write_bytes(encode_warmup([entry]))
    manager = ModelManager("tiny", str(base))
    manager.poll_once()
    (status,) = manager.status()
    assert status.state == "END" and "no signature 'removed_signature'" in status.error
