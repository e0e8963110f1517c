"""The serving check before the push: the candidate served in a fresh `masktfx serve`, called over
REST and gRPC, blesses only a model that answers as it does in process; the Pusher pushes nothing
without that blessing. The components' executors on real artifacts, as TFX's own tests run them."""

from __future__ import annotations

import os
import shutil

import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from masktfx import features
from masktfx.components import serving_check, versioned_pusher, warmup
from masktfx.records import make_example


def _artifacts(tmp_path, model_dir: str, examples: list) -> dict:
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    shutil.copytree(model_dir, os.path.join(model.uri, "Format-Serving"))
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "model_blessing")
    blessing.set_int_custom_property("blessed", 1)
    split = tmp_path / "examples" / f"Split-{features.EVAL_SPLIT}"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data.gz"), options="GZIP") as writer:
        for _, image, mask in examples[:4]:
            writer.write(make_example([image], [mask]).SerializeToString())
    data = standard_artifacts.Examples()
    data.uri = str(tmp_path / "examples")
    data.split_names = '["train", "eval"]'
    return {"model": [model], "model_blessing": [blessing], "examples": [data]}


def _check(tmp_path, inputs: dict, budget_ms: float = 5000.0):
    infra = standard_artifacts.InfraBlessing()
    infra.uri = str(tmp_path / "infra_blessing")
    os.makedirs(infra.uri)
    serving_check.Executor().Do(inputs, {"blessing": [infra]},
                                {"model_name": "tiny", "latency_budget_ms": budget_ms,
                                 "regions": 4})
    return infra


def _push(tmp_path, inputs: dict, infra) -> str:
    from tfx.proto import pusher_pb2
    from tfx.utils import proto_utils

    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    os.makedirs(pushed.uri)
    base = str(tmp_path / "serving" / "tiny")
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))
    versioned_pusher.Executor().Do(
        {**inputs, "infra_blessing": [infra]}, {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(destination), "warmup_regions": 4})
    return base


def test_a_model_that_serves_is_blessed_and_pushed(tiny_model, tmp_path):
    model_dir, examples = tiny_model
    inputs = _artifacts(tmp_path, model_dir, examples)
    infra = _check(tmp_path, inputs)
    reason = infra.get_string_custom_property(serving_check.REASON_PROPERTY)
    assert infra.get_int_custom_property("blessed") == 1, reason
    assert os.path.exists(os.path.join(infra.uri, serving_check.INFRA_BLESSED))
    assert "masktfx serve answered predict_raw, serving_default over REST and gRPC" in reason
    base = _push(tmp_path, inputs, infra)
    assert len([name for name in os.listdir(base) if name.isdigit()]) == 1


def test_a_model_that_cannot_serve_is_stopped_with_a_message_and_nothing_is_pushed(
        tiny_model, tmp_path):
    model_dir, examples = tiny_model
    # the same model without its predict_raw signature
    loaded = tf.saved_model.load(model_dir)
    broken = str(tmp_path / "broken")
    tf.saved_model.save(loaded, broken, signatures={
        features.SERVING_SIGNATURE: loaded.signatures[features.SERVING_SIGNATURE]})
    inputs = _artifacts(tmp_path, broken, examples)
    infra = _check(tmp_path, inputs)
    assert infra.get_int_custom_property("blessed") == 0
    assert os.path.exists(os.path.join(infra.uri, serving_check.INFRA_NOT_BLESSED))
    assert "no signature 'predict_raw'" in infra.get_string_custom_property(
        serving_check.REASON_PROPERTY)
    base = _push(tmp_path, inputs, infra)
    assert not os.path.isdir(base) or not [n for n in os.listdir(base) if n.isdigit()]


def test_the_served_answers_are_held_against_the_latency_budget(tiny_model, tmp_path):
    model_dir, examples = tiny_model
    logs = warmup.warmup_requests(
        [make_example([i], [m]).SerializeToString() for _, i, m in examples[:4]], "tiny")
    with pytest.raises(serving_check.ServingCheckFailed, match="over the budget of 0.001 ms"):
        serving_check.check_serving(model_dir, "tiny", logs, latency_budget_ms=0.001)
